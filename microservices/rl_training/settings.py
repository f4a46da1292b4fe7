"""rl-training settings: the registry name of its policies and how many jobs run at once."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RlTrainingSettings(BaseSettings):
    """Built once at start-up from `RL_*` variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    policy_name: str = Field(default="sizing", min_length=1, validation_alias="RL_POLICY_NAME")
    """The name trained policies are registered under."""
    workers: int = Field(default=1, ge=1, le=8, validation_alias="RL_WORKERS")
    """Training threads: jobs beyond this many wait, queued, for one to finish."""
    max_total_steps: int = Field(default=2_000_000, ge=16, validation_alias="RL_MAX_TOTAL_STEPS")
    """The largest `total_steps` a job may ask for."""
