"""The model server, ai-engine's core object: which model version serves, how it is loaded or
first trained, and one prediction from prices to an announced signal."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

from backend.infra.db import IntegrityViolationError
from backend.infra.observability import BoundLogger, SpanKind, record_error, start_lean_span
from backend.infra.service import Resources
from backend.trading.events import SignalGenerated
from backend.trading.features import (
    FEATURE_NAMES,
    WINDOW,
    InsufficientHistory,
    compute_features,
)
from backend.trading.model import Signal, predict, train_initial_model
from microservices.contracts.ai_engine import AliasMoved

from . import metrics
from .settings import AiEngineSettings
from .store import ModelStore, NothingToRollBack, load_artifact

SIGNAL_PUBLISH_TIMEOUT_S = 1.0
MAX_SIGNALS_IN_FLIGHT = 1_000
"""Announcements still being published; beyond it a signal is counted unpublished instead."""


class NoModelLoaded(RuntimeError):
    """No model version serves yet (the first one is still loading or training)."""


class ModelExpired(NoModelLoaded):
    """The serving model is older than `AI_MODEL_MAX_AGE_S`: refused rather than served stale."""


class UnusablePrices(ValueError):
    """The prices give no features (too few of them, or not finite positive numbers)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """One served prediction: the model's signal, its id and the features it saw."""

    symbol: str
    signal: Signal
    signal_id: str
    features: dict[str, float]


def signal_id_for(model_version: str, symbol: str, source: str) -> str:
    """Same model, symbol and source: same id."""
    encoded = json.dumps([model_version, symbol, source], separators=(",", ":")).encode()
    return "sig-" + hashlib.sha256(encoded).hexdigest()[:24]


class ModelServer:
    """Serves the registry's active model; swapped atomically when another version becomes
    active (checked every `AI_MODEL_REFRESH_S`)."""

    def __init__(
        self, settings: AiEngineSettings, resources: Resources, logger: BoundLogger, tracer: Any
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.store = ModelStore(resources, settings.model_name)
        self.log = logger
        self.tracer = tracer
        self.artifact: dict[str, Any] | None = None
        self.version: str | None = None
        self.trained_at: float | None = None
        """Unix time the serving model was registered (its age counts from there)."""
        self._announcing: set[asyncio.Task[None]] = set()

    # Which model serves ----------------------------------------------------------------------

    def _swap(self, artifact: dict[str, Any], trained_at: float | None = None) -> None:
        if self.version is not None:
            metrics.MODEL_INFO.labels(self.version).set(0)
            metrics.SWAPS.inc()
        self.artifact, self.version = artifact, str(artifact["version"])
        self.trained_at = trained_at if trained_at is not None else time.time()
        metrics.MODEL_INFO.labels(self.version).set(1)

    async def check_loaded(self) -> None:
        """Readiness: a model serves."""
        if self.artifact is None:
            raise RuntimeError("no model loaded yet")

    async def load_active(self) -> bool:
        """Serve the registry's active model; False when there is none."""
        row = await self.store.active()
        if row is None:
            return False
        if row.version != self.version:
            created = row.created_at
            self._swap(
                load_artifact(row),
                None
                if created is None
                else created.replace(tzinfo=created.tzinfo or UTC).timestamp(),
            )
            self.log.info(
                "model loaded", model_version=row.version, artifact_sha256=row.artifact_sha256
            )
        return True

    async def ensure_model(self, _resources: Resources | None = None) -> None:
        """Start-up: serve the active model, or train, register and serve the first one."""
        if await self.load_active():
            return
        settings = self.settings
        self.log.info("no model registered; training the initial model", steps=settings.train_steps)
        started = time.perf_counter()
        with self.tracer.start_as_current_span("train_initial_model") as span:
            artifact = await asyncio.to_thread(
                train_initial_model, settings.train_seed, steps=settings.train_steps
            )
            span.set_attribute("model_version", artifact["version"])
            try:
                await self.store.register(artifact, promote=True)
            except IntegrityViolationError:
                # Another replica trained and registered the same version first: serve that.
                if await self.load_active():
                    return
                raise
        self._swap(artifact)
        self.log.info(
            "initial model trained and registered",
            model_version=artifact["version"],
            metrics=artifact["metrics"],
            seconds=round(time.perf_counter() - started, 3),
        )

    async def move_alias(self, alias: str, version: str, reason: str = "") -> AliasMoved:
        """Move a registry alias; for `champion`, load (sha256 checked) and serve it now."""
        with self.tracer.start_as_current_span("model.alias_move") as span:
            span.set_attribute("alias", alias)
            span.set_attribute("model_version", version)
            row = await self.store.version(version)
            if row is not None and alias == "champion":
                load_artifact(row)  # refuse a corrupt artifact before the alias moves
            _row, previous = await self.store.move_alias(alias, version)
            span.set_attribute("previous_version", previous or "")
            if alias == "champion":
                await self.load_active()
            self.log.info(
                "alias moved",
                alias=alias,
                model_version=version,
                previous_version=previous,
                reason=reason,
            )
        await self.store.prune(self.settings.registry_keep)
        return AliasMoved(alias=alias, version=version, previous=previous, serving=self.version)  # type: ignore[arg-type]

    async def rollback(self) -> AliasMoved:
        """The previous champion serves again (one alias move)."""
        target = await self.store.previous_champion()
        if target is None:
            raise NothingToRollBack(f"model {self.store.name!r} has no earlier champion")
        return await self.move_alias("champion", target.version, "rollback")

    async def refresh(self, _resources: Resources | None = None) -> None:
        """Background: pick up a newly promoted model without a restart."""
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            await self.load_active()

    # Predictions -----------------------------------------------------------------------------

    async def predict(
        self, symbol: str, prices: list[Decimal], source_id: str | None
    ) -> Prediction:
        """The signal for `symbol` from its recent prices, announced on the bus after it.

        Raises `NoModelLoaded`, or `UnusablePrices`."""
        artifact = self.artifact
        if artifact is None:
            raise NoModelLoaded("no model loaded yet")
        max_age = self.settings.max_age_s
        if max_age and self.trained_at is not None:
            age = time.time() - self.trained_at
            if age > max_age:
                metrics.EXPIRED.inc()
                raise ModelExpired(
                    f"model {self.version} is {age:.0f} s old, older than "
                    f"AI_MODEL_MAX_AGE_S={max_age:g}; refusing to serve it until a newer one "
                    "is promoted"
                )
        started = time.perf_counter()
        # A lean span (an SDK span costs several times as much): it lies on the path from a
        # tick to its order. Nothing runs inside it, so it is not made current.
        span = start_lean_span(self.tracer, "signal", SpanKind.INTERNAL, {"symbol": symbol})
        try:
            try:
                features = compute_features(prices)
            except (InsufficientHistory, ValueError) as exc:
                raise UnusablePrices(str(exc)) from exc
            signal = predict(artifact, features, hold_band=self.settings.hold_band)
            source = source_id or ",".join(str(p) for p in prices[-WINDOW:])
            signal_id = signal_id_for(signal.model_version, symbol, source)
            span.set_attribute("direction", signal.direction)
            span.set_attribute("confidence", signal.confidence)
            span.set_attribute("model_version", signal.model_version)
            span.set_attribute("signal_id", signal_id)
        except Exception as exc:
            record_error(span, exc)
            raise
        finally:
            span.end()
        metrics.LATENCY.observe(time.perf_counter() - started)
        metrics.PREDICTIONS.labels(signal.direction).inc()
        metrics.CONFIDENCE.observe(signal.confidence)
        self.log.info(
            "signal",
            symbol=symbol,
            direction=signal.direction,
            confidence=round(signal.confidence, 4),
            model_version=signal.model_version,
            signal_id=signal_id,
        )
        self._announce(
            SignalGenerated(
                signal_id=signal_id,
                symbol=symbol,
                direction=signal.direction,
                confidence=signal.confidence,
                probability_up=signal.probability_up,
                model_version=signal.model_version,
                reference_price=prices[-1],
            )
        )
        return Prediction(
            symbol=symbol,
            signal=signal,
            signal_id=signal_id,
            features=dict(zip(FEATURE_NAMES, (float(v) for v in features), strict=True)),
        )

    def _announce(self, signal: SignalGenerated) -> None:
        """Publish the signal after the answer: the caller (the bot, on its way to an order)
        never waits for the bus. In the prediction's trace all the same."""
        if len(self._announcing) >= MAX_SIGNALS_IN_FLIGHT:
            metrics.SIGNALS_UNPUBLISHED.inc()
            self.log.warning("signal not published: too many in flight", signal_id=signal.signal_id)
            return
        task = asyncio.create_task(self._publish(signal), name="announce-signal")
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def drain(self, _resources: Resources | None = None) -> None:
        """Shutdown: let the announcements in flight finish (each is bounded by its timeout)."""
        if self._announcing:
            await asyncio.wait(set(self._announcing), timeout=2 * SIGNAL_PUBLISH_TIMEOUT_S)

    async def _publish(self, signal: SignalGenerated) -> None:
        """Announce the signal on the bus, but never hold a prediction up for it."""
        try:
            await asyncio.wait_for(
                self.resources.publisher.publish(signal), SIGNAL_PUBLISH_TIMEOUT_S
            )
        except Exception as exc:  # the caller gets its prediction whatever the bus does
            metrics.SIGNALS_UNPUBLISHED.inc()
            self.log.warning("signal not published", signal_id=signal.signal_id, error=repr(exc))
