"""The model registry: artifacts as JSON files, versions, metrics and stage in `model_registry`."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.infra.db.models import ModelVersion
from backend.trading.model import InvalidModelArtifact, artifact_from_json, artifact_to_json

ACTIVE = "active"
CANDIDATE = "candidate"
RETIRED = "retired"


def write_artifact(directory: Path, name: str, artifact: dict[str, Any]) -> str:
    """Write the artifact as JSON and return its URI: `file://<path>#sha256=<digest>`."""
    text = artifact_to_json(artifact)
    path = (directory / name / f"{artifact['version']}.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{path.as_uri()}#sha256={digest}"


def read_artifact(uri: str) -> dict[str, Any]:
    """Load an artifact from its URI: plain JSON, checked against its digest; never code."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise InvalidModelArtifact(f"unsupported artifact URI {uri!r}")
    raw = Path(unquote(parts.path)).read_bytes()
    expected = parts.fragment.removeprefix("sha256=")
    if expected and hashlib.sha256(raw).hexdigest() != expected:
        raise InvalidModelArtifact(f"{uri}: content does not match its sha256")
    return artifact_from_json(raw.decode("utf-8"))


async def active_model(session: AsyncSession, name: str) -> ModelVersion | None:
    """The model currently serving (stage `active`), newest first if several claim it."""
    rows = await session.execute(
        select(ModelVersion)
        .where(ModelVersion.name == name, ModelVersion.status == ACTIVE)
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    )
    return rows.scalar_one_or_none()


async def register(
    session: AsyncSession, name: str, artifact: dict[str, Any], uri: str, *, promote: bool
) -> ModelVersion:
    """Add a version; with `promote`, it becomes the active one and the previous is retired."""
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
        artifact_uri=uri,
        metrics={**artifact["metrics"], **_training_info(artifact)},
        promoted_at=now if promote else None,
    )
    session.add(row)
    await session.flush()
    return row


def _training_info(artifact: dict[str, Any]) -> dict[str, Any]:
    training = artifact.get("training")
    return {f"training_{k}": v for k, v in training.items()} if isinstance(training, dict) else {}


async def list_models(session: AsyncSession, name: str) -> list[ModelVersion]:
    rows = await session.execute(
        select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.id)
    )
    return list(rows.scalars())


async def get_model(session: AsyncSession, name: str, version: str) -> ModelVersion | None:
    rows = await session.execute(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    return rows.scalar_one_or_none()
