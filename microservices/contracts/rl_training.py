"""rl-training's public contract: training jobs (submit, follow, cancel) and trained policies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from ._client import ServiceClient

SERVICE = "rl-training"

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class JobCreate(BaseModel):
    """One training run: the data it learns from, the agent's budget and the seed of both."""

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

    @model_validator(mode="after")
    def _elite_below_population(self) -> JobCreate:
        if self.elite >= self.population:
            raise ValueError("elite must be smaller than population")
        return self


class JobPublic(BaseModel):
    id: int
    status: JobStatus
    algorithm: str
    config: dict[str, Any]
    progress: dict[str, Any] | None = Field(
        description="The latest generation: generation, generations, env_steps, total_steps, "
        "best_return, mean_return, fraction (0 to 1)."
    )
    result: dict[str, Any] | None = Field(
        description="On success: the held-out evaluation of the policy and of each baseline "
        "(return, sharpe, max_drawdown, turnover) and the registered policy's version and sha256."
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
