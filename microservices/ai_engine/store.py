"""ai-engine persistence: the model registry (`model_registry`), each version with its stage,
metrics and the artifact itself.

The artifact is stored in its row as JSON text with its sha256, so every replica loads the same
model from the database alone; loading it is parsing and validating data, never running code.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.infra.db.models import ModelVersion
from backend.infra.service import Resources
from backend.trading.model import InvalidModelArtifact, artifact_from_json, artifact_to_json

ACTIVE = "active"
"""The stage of the version holding the `champion` alias: the one that serves."""
CHALLENGER = "challenger"
"""The stage of the version holding the `challenger` alias: scored in shadow by clm."""
CANDIDATE = "candidate"
RETIRED = "retired"
ALIASES = {"champion": ACTIVE, "challenger": CHALLENGER}
"""Alias -> the stage that carries it (at most one version of a model name holds each)."""
STAGE_ALIAS = {stage: alias for alias, stage in ALIASES.items()}


class UnknownVersion(LookupError):
    """No registered version of that name."""


class NothingToRollBack(LookupError):
    """No earlier champion to go back to."""


class ModelStore:
    """The registry rows of one model name, through the service's unit of work."""

    def __init__(self, resources: Resources, name: str) -> None:
        self._resources = resources
        self.name = name

    async def active(self) -> ModelVersion | None:
        """The model currently serving (stage `active`), newest first if several claim it."""
        query = (
            select(ModelVersion)
            .where(ModelVersion.name == self.name, ModelVersion.status == ACTIVE)
            .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
            .limit(1)
        )
        async with self._resources.session() as session:
            return (await session.execute(query)).scalar_one_or_none()

    async def register(
        self, artifact: dict[str, Any], *, promote: bool, stage: str | None = None
    ) -> ModelVersion:
        """`register` in a unit of work of its own."""
        async with self._resources.session() as session:
            return await register(session, self.name, artifact, promote=promote, stage=stage)

    async def versions(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        query = select(ModelVersion).where(ModelVersion.name == self.name).order_by(ModelVersion.id)
        async with self._resources.session() as session:
            return list((await session.execute(query)).scalars())

    async def move_alias(self, alias: str, version: str) -> tuple[ModelVersion, str | None]:
        """Point `alias` at `version` in one unit of work; returns the row and the version that
        held the alias before. Moving `champion` retires the old champion (and clears the
        challenger alias if the new champion held it)."""
        stage = ALIASES[alias]
        async with self._resources.session() as session:
            row = (
                await session.execute(
                    select(ModelVersion).where(
                        ModelVersion.name == self.name, ModelVersion.version == version
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                raise UnknownVersion(f"no version {version!r} of model {self.name!r}")
            holders = (
                await session.execute(
                    select(ModelVersion).where(
                        ModelVersion.name == self.name, ModelVersion.status == stage
                    )
                )
            ).scalars()
            previous = None
            for holder in holders:
                if holder.version == version:
                    continue
                previous = holder.version
                holder.status = RETIRED if stage == ACTIVE else CANDIDATE
            row.status = stage
            if stage == ACTIVE:
                row.promoted_at = datetime.now(UTC)
            await session.flush()
            return row, previous

    async def previous_champion(self) -> ModelVersion | None:
        """The most recently promoted version that no longer serves (what rollback restores)."""
        query = (
            select(ModelVersion)
            .where(
                ModelVersion.name == self.name,
                ModelVersion.status != ACTIVE,
                ModelVersion.promoted_at.is_not(None),
            )
            .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
            .limit(1)
        )
        async with self._resources.session() as session:
            return (await session.execute(query)).scalar_one_or_none()

    async def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond the newest `keep`, never one holding an alias nor
        the previous champion (rollback's target); returns the versions deleted."""
        rows = await self.versions()
        protected = {r.version for r in rows if r.status in STAGE_ALIAS}
        previous = await self.previous_champion()
        if previous is not None:
            protected.add(previous.version)
        excess = [r for r in rows if r.version not in protected][: max(0, len(rows) - keep)]
        if not excess:
            return []
        async with self._resources.session() as session:
            await session.execute(
                delete(ModelVersion).where(ModelVersion.id.in_([r.id for r in excess]))
            )
        return [r.version for r in excess]

    async def version(self, version: str) -> ModelVersion | None:
        query = select(ModelVersion).where(
            ModelVersion.name == self.name, ModelVersion.version == version
        )
        async with self._resources.session() as session:
            return (await session.execute(query)).scalar_one_or_none()


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_artifact(row: ModelVersion) -> dict[str, Any]:
    """The row's artifact, checked against its digest and validated.

    Raises `InvalidModelArtifact` when the stored text does not match its sha256, is not a
    valid artifact, or is the artifact of another version.
    """
    where = f"model {row.name!r} version {row.version!r}"
    if row.artifact is None:
        if row.artifact_uri is None:
            raise InvalidModelArtifact(f"{where}: no artifact stored")
        # Registered before artifacts were stored in the registry: its file is the only copy.
        artifact = read_artifact_file(row.artifact_uri)
    else:
        actual = sha256_of(row.artifact)
        if actual != row.artifact_sha256:
            raise InvalidModelArtifact(
                f"{where}: stored artifact does not match its sha256 "
                f"(recorded {row.artifact_sha256}, computed {actual}); refusing to load it"
            )
        artifact = artifact_from_json(row.artifact)
    if str(artifact["version"]) != row.version:
        raise InvalidModelArtifact(f"{where}: artifact is version {artifact['version']!r}")
    return artifact


def read_artifact_file(uri: str) -> dict[str, Any]:
    """Load an artifact file from its `file://<path>#sha256=<digest>` URI, digest checked."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise InvalidModelArtifact(f"unsupported artifact URI {uri!r}")
    raw = Path(unquote(parts.path)).read_bytes()
    expected = parts.fragment.removeprefix("sha256=")
    if expected and hashlib.sha256(raw).hexdigest() != expected:
        raise InvalidModelArtifact(f"{uri}: content does not match its sha256")
    return artifact_from_json(raw.decode("utf-8"))


async def register(
    session: AsyncSession,
    name: str,
    artifact: dict[str, Any],
    *,
    promote: bool,
    stage: str | None = None,
) -> ModelVersion:
    """Add a version with its artifact; with `promote`, it becomes the active one and the
    previous is retired. `stage` (e.g. `challenger`) is the stage of a version not promoted."""
    text = artifact_to_json(artifact)
    now = datetime.now(UTC)
    if stage == CHALLENGER:
        await session.execute(
            update(ModelVersion)
            .where(ModelVersion.name == name, ModelVersion.status == CHALLENGER)
            .values(status=CANDIDATE)
        )
    if promote:
        await session.execute(
            update(ModelVersion)
            .where(ModelVersion.name == name, ModelVersion.status == ACTIVE)
            .values(status=RETIRED)
        )
    row = ModelVersion(
        name=name,
        version=str(artifact["version"]),
        status=ACTIVE if promote else (stage or CANDIDATE),
        artifact=text,
        artifact_sha256=sha256_of(text),
        metrics={**artifact["metrics"], **_training_info(artifact)},
        promoted_at=now if promote else None,
    )
    session.add(row)
    await session.flush()
    return row


def _training_info(artifact: dict[str, Any]) -> dict[str, Any]:
    training = artifact.get("training")
    return {f"training_{k}": v for k, v in training.items()} if isinstance(training, dict) else {}
