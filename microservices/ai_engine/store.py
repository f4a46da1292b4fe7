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

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.infra.db.models import ModelVersion
from backend.infra.service import Resources
from backend.trading.model import InvalidModelArtifact, artifact_from_json, artifact_to_json

ACTIVE = "active"
CANDIDATE = "candidate"
RETIRED = "retired"


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

    async def register(self, artifact: dict[str, Any], *, promote: bool) -> ModelVersion:
        """`register` in a unit of work of its own."""
        async with self._resources.session() as session:
            return await register(session, self.name, artifact, promote=promote)

    async def versions(self) -> list[ModelVersion]:
        """Every registered version, oldest first."""
        query = select(ModelVersion).where(ModelVersion.name == self.name).order_by(ModelVersion.id)
        async with self._resources.session() as session:
            return list((await session.execute(query)).scalars())

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
    session: AsyncSession, name: str, artifact: dict[str, Any], *, promote: bool
) -> ModelVersion:
    """Add a version with its artifact; with `promote`, it becomes the active one and the
    previous is retired."""
    text = artifact_to_json(artifact)
    now = datetime.now(UTC)
    if promote:
        await session.execute(
            update(ModelVersion)
            .where(ModelVersion.name == name, ModelVersion.status == ACTIVE)
            .values(status=RETIRED)
        )
    row = ModelVersion(
        name=name,
        version=str(artifact["version"]),
        status=ACTIVE if promote else CANDIDATE,
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
