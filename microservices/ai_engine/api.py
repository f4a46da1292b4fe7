"""ai-engine's HTTP API: predictions from recent prices, and the model registry's versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from backend.infra.db.models import ModelVersion
from backend.infra.service import provided
from microservices.contracts.ai_engine import (
    ModelPublic,
    ModelsPublic,
    PredictionPublic,
    PredictRequest,
)

from .server import ModelServer, NoModelLoaded, UnusablePrices

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
    )


@router.post("/predict", response_model=PredictionPublic)
async def predict_direction(body: PredictRequest, server: Server) -> PredictionPublic:
    try:
        prediction = await server.predict(body.symbol, body.prices, body.source_id)
    except NoModelLoaded as exc:
        raise HTTPException(503, str(exc)) from exc
    except UnusablePrices as exc:
        raise HTTPException(422, str(exc)) from exc
    signal = prediction.signal
    return PredictionPublic(
        symbol=prediction.symbol,
        direction=signal.direction,
        confidence=signal.confidence,
        probability_up=signal.probability_up,
        model_version=signal.model_version,
        signal_id=prediction.signal_id,
        features=prediction.features,
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
