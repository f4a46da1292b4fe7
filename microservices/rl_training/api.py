"""rl-training's HTTP API: training jobs (submit, follow, cancel) and the policies they made."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from backend.infra.db.models import Policy, TrainingJob
from backend.infra.service import provided
from backend.trading.rlartifact import InvalidPolicyArtifact, policy_from_json
from microservices.contracts.rl_training import (
    JobCreate,
    JobPublic,
    JobsPublic,
    PoliciesPublic,
    PolicyArtifactPublic,
    PolicyPublic,
)

from .trainer import JobNotCancelable, JobRefused, Trainer, UnknownJob

router = APIRouter()

Training = Annotated[Trainer, Depends(provided(Trainer))]
JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A job's id (64-bit).")]


def _job(row: TrainingJob) -> JobPublic:
    return JobPublic.model_validate(row, from_attributes=True)


def _policy(row: Policy) -> PolicyPublic:
    return PolicyPublic.model_validate(row, from_attributes=True)


async def _job_or_404(trainer: Trainer, job_id: int) -> TrainingJob:
    row = await trainer.store.job(job_id)
    if row is None:
        raise HTTPException(404, f"no job {job_id}")
    return row


@router.post("/jobs", response_model=JobPublic, status_code=202)
async def submit_job(body: JobCreate, trainer: Training) -> JobPublic:
    try:
        job_id = await trainer.submit(body)
    except JobRefused as exc:
        raise HTTPException(422, str(exc)) from exc
    return _job(await _job_or_404(trainer, job_id))


@router.get("/jobs", response_model=JobsPublic)
async def list_jobs(
    trainer: Training, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> JobsPublic:
    rows = await trainer.store.jobs(limit)
    return JobsPublic(data=[_job(r) for r in rows], count=len(rows))


@router.get("/jobs/{job_id}", response_model=JobPublic)
async def get_job(job_id: JobId, trainer: Training) -> JobPublic:
    return _job(await _job_or_404(trainer, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, status_code=202)
async def cancel_job(job_id: JobId, trainer: Training) -> JobPublic:
    try:
        await trainer.cancel(job_id)
    except UnknownJob as exc:
        raise HTTPException(404, f"no job {job_id}") from exc
    except JobNotCancelable as exc:
        raise HTTPException(409, str(exc)) from exc
    return _job(await _job_or_404(trainer, job_id))


@router.get("/policies", response_model=PoliciesPublic)
async def list_policies(trainer: Training) -> PoliciesPublic:
    rows = await trainer.store.policies()
    return PoliciesPublic(data=[_policy(r) for r in rows], count=len(rows))


@router.get("/policies/champion", response_model=PolicyArtifactPublic)
async def get_champion(trainer: Training) -> PolicyArtifactPublic:
    """The champion's artifact (what trading-bot sizes with), checked against its sha256; 404
    while no policy has been promoted."""
    row = await trainer.store.champion()
    if row is None:
        raise HTTPException(404, f"no champion {trainer.store.policy_name!r} policy yet")
    return _artifact(row)


@router.post("/policies/{version}/promote", response_model=PolicyPublic)
async def promote_policy(version: str, trainer: Training) -> PolicyPublic:
    """Make a registered policy the champion (the previous one becomes a candidate again)."""
    row = await trainer.store.policy(version)
    if row is None:
        raise HTTPException(404, f"no policy version {version!r}")
    _artifact(row)  # a policy whose artifact does not check out is never promoted
    promoted = await trainer.store.promote(version)
    if promoted is None:
        raise HTTPException(404, f"no policy version {version!r}")
    trainer.log.info("policy promoted to champion", policy_version=version)
    return _policy(promoted)


@router.get("/policies/{version}", response_model=PolicyPublic)
async def get_policy(version: str, trainer: Training) -> PolicyPublic:
    row = await trainer.store.policy(version)
    if row is None:
        raise HTTPException(404, f"no policy version {version!r}")
    return _policy(row)


@router.get("/policies/{version}/artifact", response_model=PolicyArtifactPublic)
async def get_policy_artifact(version: str, trainer: Training) -> PolicyArtifactPublic:
    """The artifact, loaded as a consumer would: refused (409) if it does not match its sha256."""
    row = await trainer.store.policy(version)
    if row is None:
        raise HTTPException(404, f"no policy version {version!r}")
    return _artifact(row)


def _artifact(row: Policy) -> PolicyArtifactPublic:
    if row.artifact is None or row.artifact_sha256 is None:
        raise HTTPException(409, f"policy {row.version!r} has no stored artifact")
    try:
        _, artifact = policy_from_json(row.artifact, row.artifact_sha256)
    except InvalidPolicyArtifact as exc:
        raise HTTPException(409, f"policy {row.version!r}: {exc}") from exc
    return PolicyArtifactPublic(
        version=row.version, artifact_sha256=row.artifact_sha256, artifact=artifact
    )
