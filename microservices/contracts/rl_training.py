"""rl-training's public contract: training jobs (submit, follow, cancel) and trained policies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ._client import ServiceClient

SERVICE = "rl-training"

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


SWEEPABLE = ("population", "elite", "episode_steps", "window", "total_steps")
"""The hyperparameters a sweep may vary."""


class SweepSpec(BaseModel):
    """Many trainings in one job: every combination of `grid` values, each with every seed of
    `seeds`. Each trial trains on the training window less its latest `validation_fraction`,
    is scored on that slice, and only the best trial is evaluated on the held-out window."""

    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        max_length=64,
        description="Agent seeds, each a trial per grid point (a multi-seed run).",
    )
    grid: dict[str, list[int]] = Field(
        default_factory=dict,
        description=f"Values per hyperparameter ({', '.join(SWEEPABLE)}); the job's own value "
        "where one is not listed.",
    )
    validation_fraction: float = Field(default=0.2, ge=0.05, le=0.5)

    @model_validator(mode="after")
    def _known_values(self) -> SweepSpec:
        unknown = sorted(set(self.grid) - set(SWEEPABLE))
        if unknown:
            raise ValueError(
                f"sweep.grid cannot vary {', '.join(unknown)}; it can vary {', '.join(SWEEPABLE)}"
            )
        empty = sorted(name for name, values in self.grid.items() if not values)
        if empty:
            raise ValueError(f"sweep.grid lists no values for {', '.join(empty)}")
        if any(not 0 <= seed <= 2**32 - 1 for seed in self.seeds):
            raise ValueError("sweep.seeds must be in [0, 2**32 - 1]")
        return self

    @property
    def trials(self) -> int:
        count = len(self.seeds)
        for values in self.grid.values():
            count *= len(values)
        return count


class JobCreate(BaseModel):
    """One training run (or, with `sweep`, a sweep of them): the data it learns from, the
    agent's budget and the seed of both."""

    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seeds the agent's search.")
    symbol: str = Field(default="BTCUSDT", min_length=1, max_length=32)
    data_seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seeds the price path.")
    bars: int = Field(default=4_000, ge=200, le=200_000, description="Simulated one-minute bars.")
    holdout_fraction: float = Field(
        default=0.25, ge=0.05, le=0.5, description="The latest part, kept for evaluation."
    )
    total_steps: int = Field(default=10_000, ge=16, le=2_000_000)
    population: int = Field(default=8, ge=2, le=64)
    elite: int = Field(default=2, ge=1, le=32)
    episode_steps: int = Field(default=256, ge=8, le=4_096)
    window: int = Field(default=8, ge=1, le=64)
    sweep: SweepSpec | None = Field(
        default=None,
        description="Train many configurations and register the best: on the Ray cluster "
        "RAY_ADDRESS names, else one after another in the service.",
    )

    @model_validator(mode="after")
    def _elite_below_population(self) -> JobCreate:
        if self.elite >= self.population:
            raise ValueError("elite must be smaller than population")
        return self

    def trial_configs(self) -> list[JobCreate]:
        """One plain job per trial of the sweep (just this job without one), in a fixed order."""
        if self.sweep is None:
            return [self]
        configs = [self.model_copy(update={"sweep": None})]
        for name, values in sorted(self.sweep.grid.items()):
            configs = [c.model_copy(update={name: v}) for c in configs for v in values]
        trials = [c.model_copy(update={"seed": seed}) for c in configs for seed in self.sweep.seeds]
        # model_copy skips validation: validate each trial as the request it stands for.
        return [JobCreate.model_validate(t.model_dump()) for t in trials]


class JobPublic(BaseModel):
    id: int
    status: JobStatus
    algorithm: str
    config: dict[str, Any]
    progress: dict[str, Any] | None = Field(
        description="The latest generation: generation, generations, env_steps, total_steps, "
        "best_return, mean_return, fraction (0 to 1). A sweep: trials, trials_done, "
        "trials_failed, env_steps, best_validation_return, best_trial, fraction."
    )
    result: dict[str, Any] | None = Field(
        description="On success: the held-out evaluation of the policy and of each baseline "
        "(return, sharpe, max_drawdown, turnover) and the registered policy's version and sha256; "
        "a sweep adds `sweep` (backend, every trial's validation figures, the best trial)."
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class PolicyPublic(BaseModel):
    name: str
    version: str
    status: str
    job_id: int | None
    metrics: dict[str, Any] | None
    artifact_sha256: str | None
    artifact_uri: str
    created_at: datetime


class PoliciesPublic(BaseModel):
    data: list[PolicyPublic]
    count: int


class PolicyArtifactPublic(BaseModel):
    """A policy's artifact, read from the registry and checked against its sha256."""

    version: str
    artifact_sha256: str
    artifact: dict[str, Any]


class RlTrainingClient(ServiceClient):
    """rl-training's API as its callers use it."""

    service = SERVICE

    async def submit(self, job: JobCreate) -> JobPublic:
        """`POST /jobs`: queue a training job."""
        return await self._call("POST", "/jobs", JobPublic, body=job)

    async def job(self, job_id: int) -> JobPublic:
        """`GET /jobs/{id}`: its status and progress."""
        return await self._call("GET", f"/jobs/{job_id}", JobPublic)

    async def cancel(self, job_id: int) -> JobPublic:
        """`POST /jobs/{id}/cancel`: stop it after the current generation."""
        return await self._call("POST", f"/jobs/{job_id}/cancel", JobPublic)

    async def policy(self, version: str) -> PolicyArtifactPublic:
        """`GET /policies/{version}/artifact`: the policy's checked artifact."""
        return await self._call("GET", f"/policies/{version}/artifact", PolicyArtifactPublic)

    async def champion(self) -> PolicyArtifactPublic:
        """`GET /policies/champion`: the champion's checked artifact (`Refused` 404: none yet)."""
        return await self._call("GET", "/policies/champion", PolicyArtifactPublic)

    async def promote(self, version: str) -> PolicyPublic:
        """`POST /policies/{version}/promote`: make it the champion."""
        return await self._call("POST", f"/policies/{version}/promote", PolicyPublic)
