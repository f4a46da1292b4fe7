"""ai-engine's HTTP API: predictions from recent prices, and the model registry's versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response

from backend.infra.db import IntegrityViolationError
from backend.infra.db.models import ModelVersion
from backend.infra.service import JsonBodyRoute, provided
from backend.trading.model import InvalidModelArtifact, validate_artifact
from microservices.contracts.ai_engine import (
    Alias,
    AliasMove,
    AliasMoved,
    ArtifactPublic,
    ModelPublic,
    ModelRegister,
    ModelsPublic,
    PredictionPublic,
    PredictRequest,
)

from .server import ModelServer, NoModelLoaded, UnusablePrices
from .store import STAGE_ALIAS, NothingToRollBack, UnknownVersion, load_artifact

router = APIRouter()


Server = Annotated[ModelServer, Depends(provided(ModelServer))]


def _public(row: ModelVersion, serving: str | None) -> ModelPublic:
    return ModelPublic(
        name=row.name,
        version=row.version,
        stage=row.status,
        serving=row.version == serving,
        metrics=row.metrics,
        artifact_uri=row.artifact_uri,
        artifact_sha256=row.artifact_sha256,
        created_at=row.created_at,
        promoted_at=row.promoted_at,
        alias=STAGE_ALIAS.get(row.status),  # type: ignore[arg-type]
    )


async def predict_direction(body: PredictRequest, server: Server) -> Response:
    try:
        prediction = await server.predict(body.symbol, body.prices, body.source_id)
    except NoModelLoaded as exc:
        raise HTTPException(503, str(exc)) from exc
    except UnusablePrices as exc:
        raise HTTPException(422, str(exc)) from exc
    signal = prediction.signal
    answer = PredictionPublic(
        symbol=prediction.symbol,
        direction=signal.direction,
        confidence=signal.confidence,
        probability_up=signal.probability_up,
        model_version=signal.model_version,
        signal_id=prediction.signal_id,
        features=prediction.features,
    )
    # Encoded once, by the model itself: the answer is not validated and encoded again.
    return Response(answer.__pydantic_serializer__.to_json(answer), media_type="application/json")


# On the path from a tick to its order: the body validated once, the model server looked up
# without dependency solving.
router.add_api_route(
    "/predict",
    predict_direction,
    methods=["POST"],
    response_model=PredictionPublic,
    route_class_override=JsonBodyRoute,
)


@router.get("/models", response_model=ModelsPublic)
async def list_models(server: Server) -> ModelsPublic:
    rows = await server.store.versions()
    return ModelsPublic(
        data=[_public(r, server.version) for r in rows], count=len(rows), serving=server.version
    )


@router.get("/models/{version}", response_model=ModelPublic)
async def get_model(version: str, server: Server) -> ModelPublic:
    row = await server.store.version(version)
    if row is None:
        raise HTTPException(404, f"no model version {version!r}")
    return _public(row, server.version)


@router.get("/models/{version}/artifact", response_model=ArtifactPublic)
async def get_artifact(version: str, server: Server) -> ArtifactPublic:
    """The version's artifact, checked against its recorded sha256 before it is sent."""
    row = await server.store.version(version)
    if row is None:
        raise HTTPException(404, f"no model version {version!r}")
    try:
        artifact = load_artifact(row)
    except InvalidModelArtifact as exc:
        raise HTTPException(409, str(exc)) from exc
    return ArtifactPublic(version=row.version, sha256=row.artifact_sha256 or "", artifact=artifact)


@router.post("/models", response_model=ModelPublic, status_code=201)
async def register_model(body: ModelRegister, server: Server) -> ModelPublic:
    """Add a trained version (needs the bearer token); `alias` = `challenger` puts it in shadow,
    `champion` makes it serve at once."""
    try:
        artifact = validate_artifact(body.artifact)
    except InvalidModelArtifact as exc:
        raise HTTPException(422, f"artifact: {exc}") from exc
    promote = body.alias == "champion"
    try:
        row = await server.store.register(
            artifact, promote=promote, stage=None if promote else body.alias
        )
    except IntegrityViolationError:
        raise HTTPException(409, f"version {artifact['version']!r} is already registered") from None
    server.log.info("model registered", model_version=row.version, stage=row.status)
    if promote:
        await server.load_active()
    await server.store.prune(server.settings.registry_keep)
    return _public(row, server.version)


@router.post("/models/aliases/champion/rollback", response_model=AliasMoved)
async def rollback(server: Server) -> AliasMoved:
    """Give the `champion` alias back to the previous champion; it serves at once."""
    try:
        return await server.rollback()
    except NothingToRollBack as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/models/aliases/{alias}", response_model=AliasMoved)
async def move_alias(alias: Alias, body: AliasMove, server: Server) -> AliasMoved:
    """Point `alias` at a version (needs the bearer token). Moving `champion` swaps the
    serving model in this process at once; other replicas follow within AI_MODEL_REFRESH_S."""
    try:
        return await server.move_alias(alias, body.version, body.reason)
    except UnknownVersion as exc:
        raise HTTPException(404, str(exc)) from exc
    except InvalidModelArtifact as exc:
        raise HTTPException(409, str(exc)) from exc
