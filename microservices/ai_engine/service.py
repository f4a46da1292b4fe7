"""ai-engine assembly: model loading (training the first one), predictions, registry routes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from prometheus_client import Counter, Gauge, Histogram

from backend.infra.db import IntegrityViolationError
from backend.infra.db.models import ModelVersion
from backend.infra.eventbus import SignalGenerated
from backend.infra.observability import ReadinessCheck, get_logger
from backend.infra.service import Resources, Service, resources_of
from backend.trading.features import (
    FEATURE_NAMES,
    WINDOW,
    InsufficientHistory,
    compute_features,
)
from backend.trading.model import predict, train_initial_model

from . import registry
from .api import ModelPublic, ModelsPublic, PredictionPublic, PredictRequest
from .settings import AiEngineSettings

NAME = "ai-engine"

PREDICTIONS = Counter("ai_predictions_total", "Predictions served, by direction.", ["direction"])
CONFIDENCE = Histogram(
    "ai_signal_confidence",
    "Confidence of served predictions.",
    buckets=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
)
LATENCY = Histogram(
    "ai_prediction_latency_seconds",
    "Time to compute one prediction (features and model).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
MODEL_INFO = Gauge("ai_model_serving", "1 for the model version being served.", ["version"])
SIGNALS_UNPUBLISHED = Counter(
    "ai_signals_unpublished_total", "Signals served but not announced on the bus (bus down)."
)

SIGNAL_PUBLISH_TIMEOUT_S = 1.0
Res = Annotated[Resources, Depends(resources_of)]
_log = get_logger("microservices.ai-engine")


class ServingModel:
    """The artifact being served; swapped atomically when another version becomes active."""

    def __init__(self) -> None:
        self.artifact: dict[str, Any] | None = None
        self.version: str | None = None

    def swap(self, artifact: dict[str, Any]) -> None:
        if self.version is not None:
            MODEL_INFO.labels(self.version).set(0)
        self.artifact, self.version = artifact, str(artifact["version"])
        MODEL_INFO.labels(self.version).set(1)

    async def check_loaded(self) -> None:
        if self.artifact is None:
            raise RuntimeError("no model loaded yet")


async def publish_signal(resources: Resources, signal: SignalGenerated) -> None:
    """Announce the signal on the bus, but never hold a prediction up for it."""
    try:
        await asyncio.wait_for(resources.publisher.publish(signal), SIGNAL_PUBLISH_TIMEOUT_S)
    except Exception as exc:  # the caller gets its prediction whatever the bus does
        SIGNALS_UNPUBLISHED.inc()
        _log.warning("signal not published", signal_id=signal.signal_id, error=repr(exc))


def signal_id_for(model_version: str, symbol: str, source: str) -> str:
    """Same model, symbol and source: same id."""
    encoded = json.dumps([model_version, symbol, source], separators=(",", ":")).encode()
    return "sig-" + hashlib.sha256(encoded).hexdigest()[:24]


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


def create_service(settings: AiEngineSettings | None = None) -> Service:
    """The ai-engine HTTP service (port 8001)."""
    settings = settings or AiEngineSettings()
    service = Service(NAME, database=True, eventbus=True)
    log, tracer = service.logger, service.tracer
    model = ServingModel()
    service.add_readiness_check(ReadinessCheck("model", model.check_loaded))

    async def load_active(resources: Resources) -> bool:
        """Serve the registry's active model; False when there is none."""
        async with resources.session() as session:
            row = await registry.active_model(session, settings.model_name)
        if row is None:
            return False
        if row.version != model.version:
            model.swap(registry.load_artifact(row))
            log.info("model loaded", model_version=row.version, artifact_sha256=row.artifact_sha256)
        return True

    @service.on_startup
    async def ensure_model(resources: Resources) -> None:
        if await load_active(resources):
            return
        log.info("no model registered; training the initial model", steps=settings.train_steps)
        started = time.perf_counter()
        with tracer.start_as_current_span("train_initial_model") as span:
            artifact = await asyncio.to_thread(
                train_initial_model, settings.train_seed, steps=settings.train_steps
            )
            span.set_attribute("model_version", artifact["version"])
            try:
                async with resources.session() as session:
                    await registry.register(session, settings.model_name, artifact, promote=True)
            except IntegrityViolationError:
                # Another replica trained and registered the same version first: serve that.
                if await load_active(resources):
                    return
                raise
        model.swap(artifact)
        log.info(
            "initial model trained and registered",
            model_version=artifact["version"],
            metrics=artifact["metrics"],
            seconds=round(time.perf_counter() - started, 3),
        )

    async def refresh(resources: Resources) -> None:
        while True:
            await asyncio.sleep(settings.refresh_s)
            await load_active(resources)

    service.background("model-refresh", refresh)

    app = service.app

    @app.post("/predict", response_model=PredictionPublic)
    async def predict_direction(body: PredictRequest, resources: Res) -> PredictionPublic:
        artifact = model.artifact
        if artifact is None:
            raise HTTPException(503, "no model loaded yet")
        started = time.perf_counter()
        with tracer.start_as_current_span("signal") as span:
            span.set_attribute("symbol", body.symbol)
            try:
                features = compute_features(body.prices)
            except (InsufficientHistory, ValueError) as exc:
                raise HTTPException(422, str(exc)) from exc
            signal = predict(artifact, features, hold_band=settings.hold_band)
            source = body.source_id or ",".join(str(p) for p in body.prices[-WINDOW:])
            signal_id = signal_id_for(signal.model_version, body.symbol, source)
            span.set_attribute("direction", signal.direction)
            span.set_attribute("confidence", signal.confidence)
            span.set_attribute("model_version", signal.model_version)
            span.set_attribute("signal_id", signal_id)
        LATENCY.observe(time.perf_counter() - started)
        PREDICTIONS.labels(signal.direction).inc()
        CONFIDENCE.observe(signal.confidence)
        log.info(
            "signal",
            symbol=body.symbol,
            direction=signal.direction,
            confidence=round(signal.confidence, 4),
            model_version=signal.model_version,
            signal_id=signal_id,
        )
        await publish_signal(
            resources,
            SignalGenerated(
                signal_id=signal_id,
                symbol=body.symbol,
                direction=signal.direction,
                confidence=signal.confidence,
                probability_up=signal.probability_up,
                model_version=signal.model_version,
                reference_price=body.prices[-1],
            ),
        )
        return PredictionPublic(
            symbol=body.symbol,
            direction=signal.direction,
            confidence=signal.confidence,
            probability_up=signal.probability_up,
            model_version=signal.model_version,
            signal_id=signal_id,
            features=dict(zip(FEATURE_NAMES, (float(v) for v in features), strict=True)),
        )

    @app.get("/models", response_model=ModelsPublic)
    async def list_models(resources: Res) -> ModelsPublic:
        async with resources.session() as session:
            rows = await registry.list_models(session, settings.model_name)
        return ModelsPublic(
            data=[_public(r, model.version) for r in rows], count=len(rows), serving=model.version
        )

    @app.get("/models/{version}", response_model=ModelPublic)
    async def get_model(version: str, resources: Res) -> ModelPublic:
        async with resources.session() as session:
            row = await registry.get_model(session, settings.model_name, version)
        if row is None:
            raise HTTPException(404, f"no model version {version!r}")
        return _public(row, model.version)

    return service
