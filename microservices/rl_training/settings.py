"""rl-training settings: the registry name of its policies, how many jobs run at once, and the
Ray cluster sweeps go to."""

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
    max_sweep_trials: int = Field(
        default=64, ge=1, le=4_096, validation_alias="RL_MAX_SWEEP_TRIALS"
    )
    """The most trials one sweep job may have (grid points times seeds)."""
    ray_address: str = Field(default="", validation_alias="RAY_ADDRESS")
    """Where sweeps run: `ray://head:10001` (Ray Client, e.g. a KubeRay cluster), `local` (a
    private Ray instance in this process), or empty: one trial after another in the service."""
    ray_num_cpus: int = Field(default=2, ge=1, le=256, validation_alias="RL_RAY_NUM_CPUS")
    """CPUs of the private instance `RAY_ADDRESS=local` starts."""
