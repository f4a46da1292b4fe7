"""clm settings: drift thresholds, retraining triggers and the promotion rule (`CLM_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClmSettings(BaseSettings):
    """Built once at start-up from `CLM_*` variables (docs/CLM.md explains each threshold)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    check_interval_s: float = Field(default=10.0, gt=0, validation_alias="CLM_CHECK_INTERVAL_S")
    """How often drift, the schedule, expiry and the promotion rule are checked."""
    drift_window: int = Field(default=1_000, ge=50, validation_alias="CLM_DRIFT_WINDOW")
    """Live feature rows compared with the reference (the most recent ones)."""
    min_drift_rows: int = Field(default=200, ge=20, validation_alias="CLM_MIN_DRIFT_ROWS")
    """No input-drift verdict on fewer live rows than this."""
    reference_rows: int = Field(default=2_000, ge=50, validation_alias="CLM_REFERENCE_ROWS")
    """Training rows a new model keeps in its artifact as the reference distribution."""
    psi_threshold: float = Field(default=0.25, gt=0, validation_alias="CLM_PSI_THRESHOLD")
    ks_alpha: float = Field(default=0.001, gt=0, lt=1, validation_alias="CLM_KS_ALPHA")
    min_drifted_features: int = Field(default=2, ge=1, validation_alias="CLM_MIN_DRIFTED_FEATURES")
    """Input drift is declared when at least this many features drift (PSI and KS both)."""
    adwin_delta: float = Field(default=0.002, gt=0, lt=1, validation_alias="CLM_ADWIN_DELTA")
    """ADWIN's confidence on the champion's correctness stream (river's default)."""
    train_ticks: int = Field(default=2_000, ge=100, validation_alias="CLM_TRAIN_TICKS")
    """Ticks per symbol a model trains on (after a drift alarm: ticks seen since the alarm)."""
    retrain_every_s: float = Field(default=0.0, ge=0, validation_alias="CLM_RETRAIN_EVERY_S")
    """Scheduled retraining period (0: off)."""
    max_model_age_s: float = Field(default=0.0, ge=0, validation_alias="CLM_MAX_MODEL_AGE_S")
    """A champion older than this is retrained (0: never); set below ai-engine's
    AI_MODEL_MAX_AGE_S so a replacement is in shadow before ai-engine refuses the old one."""
    min_shadow_predictions: int = Field(
        default=500, ge=10, validation_alias="CLM_MIN_SHADOW_PREDICTIONS"
    )
    promotion_margin: float = Field(default=0.005, ge=0, validation_alias="CLM_PROMOTION_MARGIN")
    """How much lower the challenger's Brier score must be than the champion's."""
    auto_promote: bool = Field(default=True, validation_alias="CLM_AUTO_PROMOTE")
