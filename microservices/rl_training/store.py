"""rl-training persistence: training jobs with their progress and result (`training_jobs`), and
the policies they produced (`policies`), each with its artifact text and sha256.

The artifact is stored in its row, so every replica loads the same policy from the database
alone; loading it is checking its digest and parsing data, never running code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from backend.infra.db.models import Policy, TrainingJob
from backend.infra.service import Resources
from backend.trading.rlpolicy import artifact_sha256, artifact_to_json

ALGORITHM = "cem-linear"
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled",
)
OPEN = (QUEUED, RUNNING)
CANDIDATE = "candidate"
CHAMPION = "champion"


class TrainingStore:
    """Jobs and policies, through the service's unit of work."""

    def __init__(self, resources: Resources, policy_name: str) -> None:
        self._resources = resources
        self.policy_name = policy_name

    # Jobs ------------------------------------------------------------------------------------

    async def create_job(self, config: dict[str, Any]) -> TrainingJob:
        async with self._resources.session() as session:
            row = TrainingJob(algorithm=ALGORITHM, status=QUEUED, config=config)
            session.add(row)
            await session.flush()
            return row

    async def job(self, job_id: int) -> TrainingJob | None:
        async with self._resources.session() as session:
            return await session.get(TrainingJob, job_id)

    async def jobs(self, limit: int) -> list[TrainingJob]:
        """The latest jobs, newest first."""
        query = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)
        async with self._resources.session() as session:
            return list((await session.execute(query)).scalars())

    async def update_job(self, job_id: int, **values: Any) -> None:
        async with self._resources.session() as session:
            await session.execute(
                update(TrainingJob).where(TrainingJob.id == job_id).values(**values)
            )

    async def start_job(self, job_id: int) -> None:
        await self.update_job(job_id, status=RUNNING, started_at=datetime.now(UTC))

    async def finish_job(
        self,
        job_id: int,
        status: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        await self.update_job(
            job_id, status=status, error=error, result=result, finished_at=datetime.now(UTC)
        )

    async def fail_interrupted(self) -> list[int]:
        """Start-up: jobs a previous process left open can never finish; mark them failed."""
        async with self._resources.session() as session:
            rows = await session.execute(
                update(TrainingJob)
                .where(TrainingJob.status.in_(OPEN))
                .values(
                    status=FAILED,
                    error="interrupted: the service stopped before the job finished",
                    finished_at=datetime.now(UTC),
                )
                .returning(TrainingJob.id)
            )
            return [job_id for (job_id,) in rows]

    # Policies --------------------------------------------------------------------------------

    async def register_policy(
        self, artifact: dict[str, Any], *, job_id: int, metrics: dict[str, Any]
    ) -> tuple[Policy, bool]:
        """Register the artifact as a candidate; (its row, whether it is new). The version is
        derived from the artifact, so the same policy trained again is the same row."""
        text = artifact_to_json(artifact)
        digest = artifact_sha256(text)
        version = str(artifact["version"])
        async with self._resources.session() as session:
            existing = (
                await session.execute(
                    select(Policy).where(Policy.name == self.policy_name, Policy.version == version)
                )
            ).scalar_one_or_none()
            if existing is not None:
                return existing, False
            row = Policy(
                job_id=job_id,
                name=self.policy_name,
                version=version,
                status=CANDIDATE,
                artifact=text,
                artifact_sha256=digest,
                artifact_uri=f"policies:{self.policy_name}/{version}#sha256={digest}",
                metrics=metrics,
            )
            session.add(row)
            await session.flush()
            return row, True

    async def policies(self) -> list[Policy]:
        """Every registered policy of this name, oldest first."""
        query = select(Policy).where(Policy.name == self.policy_name).order_by(Policy.id)
        async with self._resources.session() as session:
            return list((await session.execute(query)).scalars())

    async def policy(self, version: str) -> Policy | None:
        query = select(Policy).where(Policy.name == self.policy_name, Policy.version == version)
        async with self._resources.session() as session:
            return (await session.execute(query)).scalar_one_or_none()

    async def champion(self) -> Policy | None:
        """The policy trading-bot sizes with, if one was promoted."""
        query = select(Policy).where(Policy.name == self.policy_name, Policy.status == CHAMPION)
        async with self._resources.session() as session:
            return (await session.execute(query.order_by(Policy.id.desc()))).scalars().first()

    async def promote(self, version: str) -> Policy | None:
        """Make `version` the champion and the previous champion a candidate again, in one
        transaction; None if there is no such policy. Promoting the champion changes nothing."""
        async with self._resources.session() as session:
            # Every row of the name locked first (PostgreSQL), so two promotions at once end
            # with one champion, not two.
            rows = (
                await session.execute(
                    select(Policy)
                    .where(Policy.name == self.policy_name)
                    .order_by(Policy.id)
                    .with_for_update()
                )
            ).scalars()
            target = None
            for row in rows:
                if row.version == version:
                    target = row
                elif row.status == CHAMPION:
                    row.status = CANDIDATE
            if target is None:
                return None
            target.status = CHAMPION
            await session.flush()
            return target
