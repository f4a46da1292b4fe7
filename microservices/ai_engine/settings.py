"""ai-engine settings: model name, initial training, hold band, registry refresh period."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AiEngineSettings(BaseSettings):
    """Built once at start-up from `MODEL_*` and `AI_*` variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    model_name: str = Field(default="direction", min_length=1, validation_alias="MODEL_NAME")
    train_seed: int = Field(default=7, validation_alias="AI_TRAIN_SEED")
    train_steps: int = Field(default=20_000, ge=500, validation_alias="AI_TRAIN_STEPS")
    hold_band: float = Field(default=0.05, ge=0.0, lt=0.5, validation_alias="AI_HOLD_BAND")
    """P(up) within 0.5 ± this is HOLD."""
    refresh_s: float = Field(default=15.0, gt=0, validation_alias="AI_MODEL_REFRESH_S")
    """How often the registry is checked for a newly promoted model."""
    max_age_s: float = Field(default=0.0, ge=0, validation_alias="AI_MODEL_MAX_AGE_S")
    """A champion trained longer ago than this is refused (503) rather than served stale, as
    FreqAI's `expiration_hours` does; clm retrains before then. 0: never expires."""
    registry_keep: int = Field(default=5, ge=2, validation_alias="AI_REGISTRY_KEEP")
    """Versions kept in the registry (aliased versions and rollback's target always stay)."""
