"""The learning manager, clm's core object: scores the champion and the challenger on every
tick, watches for drift, retrains, promotes and rolls back.

- Every tick of a symbol gives one feature row (the shared `backend.trading.features`) and one
  prediction from each of the champion and the challenger (their artifacts, loaded from
  ai-engine's registry with the sha256 checked). The next tick with a different mid price
  realizes them: both are scored on exactly the same ticks, so the comparison is paired. The
  challenger is never traded: only ai-engine's champion serves signals.
- ai-engine's own `signal.generated` events are scored the same way, by model version (role
  `served`): what was really served, as the bus saw it.
- Input drift: each feature's live window against the champion's reference (its training
  rows, kept in the artifact; for a model not trained by clm, the first full live window is
  pinned), PSI and KS. Concept drift: river's ADWIN on the champion's 0/1 correctness stream.
- A drift alarm, the schedule, a champion older than `CLM_MAX_MODEL_AGE_S` or a request asks
  for a retrain. After a drift alarm the retrain waits for `CLM_TRAIN_TICKS` ticks of the new
  regime. The retrain span links to the span of what asked for it.
- The new model is registered as `challenger` and shadows the champion until the promotion
  rule (`drift.promotion_verdict`) says it beats it; the `champion` alias then moves to it in
  ai-engine's registry (which swaps at once) and `model.promoted` goes on the bus.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.infra.eventbus import Event
from backend.infra.observability import BoundLogger, current_traceparent, links_from_traceparent
from backend.infra.service import Resources
from backend.trading.events import MarketTick, ModelPromoted, ModelTrained, SignalGenerated
from backend.trading.features import FEATURE_NAMES, WINDOW, feature_matrix, make_training_set
from backend.trading.model import probability_up, train_model
from microservices.contracts.ai_engine import AiEngineClient, ModelPublic

from . import metrics
from .drift import ConceptDetector, DriftReport, FloatArray, Score, input_drift, promotion_verdict
from .settings import ClmSettings

REFERENCE_KEY = "reference"
"""Artifact key of the training rows kept as the drift reference (a list of feature rows)."""


class NothingToPromote(LookupError):
    """No challenger is in shadow."""


@dataclass(slots=True)
class Tracked:
    """A model version clm scores: its artifact and its drift reference."""

    version: str
    artifact: dict[str, Any]
    reference: FloatArray | None
    created_at: float

    @classmethod
    def of(cls, artifact: dict[str, Any], created_at: float) -> Tracked:
        rows = artifact.get(REFERENCE_KEY)
        reference = None
        if isinstance(rows, list) and rows:
            reference = np.asarray(rows, dtype=np.float64)
            if reference.ndim != 2 or reference.shape[1] != len(FEATURE_NAMES):
                reference = None
        return cls(str(artifact["version"]), artifact, reference, created_at)


@dataclass(slots=True)
class RetrainRequest:
    trigger: str
    traceparent: str | None
    after_ticks: int
    """Ticks still to see before training (the new regime's data)."""
    detail: str = ""


@dataclass(slots=True)
class Decision:
    """One decision of the manager, kept for `GET /status` (the newest last)."""

    at: float
    kind: str
    detail: str
    version: str | None = None


@dataclass(slots=True)
class SymbolState:
    prices: deque[float]
    pending: list[tuple[str, str, float]] = field(default_factory=list)
    """(role, version, P(up)) made at the last price, awaiting the next different one."""
    last: float | None = None
    tick_ms: int | None = None
    """The market time of the newest tick observed."""
    tick_ids: set[str] = field(default_factory=set)
    """The ids of the ticks observed at `tick_ms`: a copy of one of them is not observed again."""


class LearningManager:
    def __init__(
        self, settings: ClmSettings, resources: Resources, logger: BoundLogger, tracer: Any
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.log = logger
        self.tracer = tracer
        self.champion: Tracked | None = None
        self.challenger: Tracked | None = None
        self.symbols: dict[str, SymbolState] = {}
        self.served: dict[str, list[tuple[str, float, float]]] = {}
        """symbol -> (version, P(up), reference price) of ai-engine's signals not yet realized."""
        self.scores: dict[tuple[str, str], Score] = {}
        """(role, version) -> lifetime live score."""
        self.duel: tuple[Score, Score] = (Score(), Score())
        """Champion and challenger scored on the same ticks since the challenger started."""
        self.live = np.zeros((settings.drift_window, len(FEATURE_NAMES)), dtype=np.float64)
        self.live_rows = 0
        self.adwin = ConceptDetector(settings.adwin_delta)
        self.request: RetrainRequest | None = None
        self.last_trained = time.time()
        self.last_report: DriftReport | None = None
        self.decisions: deque[Decision] = deque(maxlen=50)
        self.sync_error: str | None = "ai-engine's registry not read yet"
        self._train_lock = asyncio.Lock()

    @property
    def ai(self) -> AiEngineClient:
        http = self.resources.http
        if http is None:
            raise RuntimeError("clm is not started yet")
        return AiEngineClient(http)

    # The registry -----------------------------------------------------------------------------

    async def check_synced(self) -> None:
        """Readiness: ai-engine's registry was read and clm knows the champion."""
        if self.sync_error is not None:
            raise RuntimeError(self.sync_error)

    async def sync(self) -> None:
        """Follow ai-engine's aliases (another caller may have moved them)."""
        try:
            models = await self.ai.models()
            by_alias = {m.alias: m for m in models.data if m.alias}
            self.champion = await self._follow(self.champion, by_alias.get("champion"))
            self.challenger = await self._follow(self.challenger, by_alias.get("challenger"))
        except Exception as exc:
            self.sync_error = f"ai-engine's registry unreadable: {exc}"
            raise
        self.sync_error = None if self.champion else "ai-engine has no champion yet"

    async def _follow(self, held: Tracked | None, row: ModelPublic | None) -> Tracked | None:
        if row is None:
            return None
        if held is not None and held.version == row.version:
            return held
        loaded = await self.ai.artifact(row.version)
        tracked = Tracked.of(loaded.artifact, row.created_at.timestamp())
        self.log.info("model followed", model_version=row.version, alias=row.alias)
        if row.alias == "champion":
            self.adwin = ConceptDetector(self.settings.adwin_delta)
        else:
            self.duel = (Score(), Score())
        return tracked

    # Ticks and signals ------------------------------------------------------------------------

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Observe a tick once: one older than the symbol's newest, or a copy of one observed
        (a redelivery, a feed's retried publication), is ignored, so the service reads ticks
        without processed marks."""
        tick = event.data
        state = self.symbols.get(tick.symbol)
        if (
            state is not None
            and state.tick_ms is not None
            and (
                tick.ts_ms < state.tick_ms
                or (tick.ts_ms == state.tick_ms and event.id in state.tick_ids)
            )
        ):
            return
        self.observe(tick.symbol, float((tick.bid + tick.ask) / 2))
        state = self.symbols[tick.symbol]
        if state.tick_ms != tick.ts_ms:
            state.tick_ms = tick.ts_ms
            state.tick_ids.clear()
        state.tick_ids.add(event.id)

    def observe(self, symbol: str, mid: float) -> None:
        """One tick's mid price: realize what was pending, then predict from the new window."""
        metrics.TICKS.inc()
        state = self.symbols.get(symbol)
        if state is None:
            keep = max(self.settings.train_ticks, WINDOW) + 1
            state = self.symbols[symbol] = SymbolState(deque(maxlen=keep))
        if state.last is not None and mid != state.last:
            up = mid > state.last
            for role, version, p_up in state.pending:
                self._score(role, version, p_up, up)
            state.pending.clear()
            self._realize_served(symbol, mid)
        state.last = mid
        state.prices.append(mid)
        if self.request is not None and self.request.after_ticks > 0:
            self.request.after_ticks -= 1
        if len(state.prices) < WINDOW:
            return
        window = np.fromiter(
            (state.prices[i] for i in range(len(state.prices) - WINDOW, len(state.prices))),
            np.float64,
            WINDOW,
        )
        row = feature_matrix(window.reshape(1, WINDOW))[0]
        self.live[self.live_rows % self.live.shape[0]] = row
        self.live_rows += 1
        if not state.pending:
            for role, model in (("champion", self.champion), ("challenger", self.challenger)):
                if model is not None:
                    state.pending.append((role, model.version, probability_up(model.artifact, row)))

    def _score(self, role: str, version: str, p_up: float, up: bool) -> None:
        score = self.scores.setdefault((role, version), Score())
        hit = score.add(p_up, up)
        metrics.SCORED.labels(role).inc()
        metrics.BRIER.labels(role, version).set(score.brier or 0.0)
        metrics.HIT_RATE.labels(role, version).set(score.hit_rate or 0.0)
        champion, challenger = self.champion, self.challenger
        if role == "champion" and champion is not None and version == champion.version:
            if challenger is not None:
                self.duel[0].add(p_up, up)
            if self.adwin.update(0.0 if hit else 1.0):
                self._concept_alarm(score)
        elif role == "challenger" and challenger is not None and version == challenger.version:
            self.duel[1].add(p_up, up)

    async def on_signal(self, event: Event[SignalGenerated]) -> None:
        signal = event.data
        if signal.reference_price is None:
            return
        self.served.setdefault(signal.symbol, []).append(
            (signal.model_version, signal.probability_up, float(signal.reference_price))
        )

    def _realize_served(self, symbol: str, mid: float) -> None:
        waiting = self.served.get(symbol)
        if not waiting:
            return
        left = []
        for version, p_up, reference in waiting:
            if mid == reference:
                left.append((version, p_up, reference))
                continue
            score = self.scores.setdefault(("served", version), Score())
            score.add(p_up, mid > reference)
            metrics.SCORED.labels("served").inc()
            metrics.BRIER.labels("served", version).set(score.brier or 0.0)
            metrics.HIT_RATE.labels("served", version).set(score.hit_rate or 0.0)
        self.served[symbol] = left[-1000:]

    # Drift ------------------------------------------------------------------------------------

    def live_window(self) -> FloatArray:
        n = min(self.live_rows, self.live.shape[0])
        return self.live[:n] if self.live_rows <= self.live.shape[0] else self.live

    def check_drift(self) -> DriftReport | None:
        """PSI and KS of the live window against the champion's reference; raises an alarm."""
        champion = self.champion
        if champion is None:
            return None
        if champion.reference is None:
            if self.live_rows >= self.live.shape[0]:
                champion.reference = self.live.copy()
                self._decide("reference pinned", "first full live window", champion.version)
            return None
        current = self.live_window()
        if current.shape[0] < self.settings.min_drift_rows:
            return None
        started = time.perf_counter()
        report = input_drift(
            champion.reference,
            current,
            FEATURE_NAMES,
            psi_threshold=self.settings.psi_threshold,
            ks_alpha=self.settings.ks_alpha,
        )
        metrics.DRIFT_CHECK.observe(time.perf_counter() - started)
        for f in report.features:
            metrics.PSI.labels(f.feature).set(f.psi)
            metrics.KS_PVALUE.labels(f.feature).set(f.ks_pvalue)
        self.last_report = report
        if len(report.drifted) >= self.settings.min_drifted_features and self._may_alarm():
            with self.tracer.start_as_current_span("clm.drift_alarm") as span:
                detail = (
                    f"{len(report.drifted)} feature(s) drifted ({', '.join(report.drifted)}); "
                    f"max PSI {report.max_psi:.3f} > {self.settings.psi_threshold}, "
                    f"KS p < {self.settings.ks_alpha}"
                )
                span.set_attribute("drift.kind", "input")
                span.set_attribute("drift.features", list(report.drifted))
                span.set_attribute("drift.max_psi", report.max_psi)
                span.set_attribute("model_version", champion.version)
                metrics.ALARMS.labels("input").inc()
                self.log.warning(
                    "input drift",
                    model_version=champion.version,
                    detail=detail,
                    psi={f.feature: round(f.psi, 4) for f in report.features},
                )
                self._ask("drift", detail, after_ticks=self.settings.train_ticks)
        return report

    def _may_alarm(self) -> bool:
        """No new alarm while a retrain is asked for or a challenger is already in shadow."""
        return self.request is None and self.challenger is None

    def _concept_alarm(self, score: Score) -> None:
        if not self._may_alarm():
            return
        champion = self.champion
        with self.tracer.start_as_current_span("clm.drift_alarm") as span:
            detail = (
                f"ADWIN (delta {self.settings.adwin_delta}) saw the champion's error rate change; "
                f"estimate now {self.adwin.estimation:.3f}, hit rate {score.hit_rate}"
            )
            span.set_attribute("drift.kind", "concept")
            span.set_attribute("model_version", champion.version if champion else "")
            metrics.ALARMS.labels("concept").inc()
            self.log.warning("concept drift", detail=detail)
            self._ask("concept", detail, after_ticks=self.settings.train_ticks)

    def _ask(self, trigger: str, detail: str, *, after_ticks: int) -> RetrainRequest:
        """Ask for a retrain from inside the asking span (the retrain links to it)."""
        self.request = RetrainRequest(trigger, current_traceparent(), after_ticks, detail)
        self._decide(f"retrain asked ({trigger})", detail)
        return self.request

    def ask_retrain(self, reason: str) -> RetrainRequest:
        """On demand (`POST /retrain`): train on the ticks held now."""
        with self.tracer.start_as_current_span("clm.retrain_request") as span:
            span.set_attribute("retrain.reason", reason)
            return self._ask("request", reason or "on demand", after_ticks=0)

    def _decide(self, kind: str, detail: str, version: str | None = None) -> None:
        self.decisions.append(Decision(time.time(), kind, detail, version))
        self.log.info("decision", decision=kind, detail=detail, model_version=version)

    # The loop ---------------------------------------------------------------------------------

    async def run(self, _resources: Resources | None = None) -> None:
        """Background: follow the registry, check drift, schedule and expiry, retrain, promote."""
        while True:
            try:
                await self.step()
            except Exception as exc:  # the next round tries again; the error is logged
                self.log.error("clm round failed", error=repr(exc))
            # Until ai-engine's registry is read, try again every second, not every round.
            interval = self.settings.check_interval_s
            await asyncio.sleep(min(interval, 1.0) if self.sync_error else interval)

    async def step(self) -> None:
        await self.sync()
        self.check_drift()
        settings, now = self.settings, time.time()
        champion = self.champion
        if champion is not None:
            age = now - champion.created_at
            metrics.CHAMPION_AGE.set(age)
            if self.request is None and self.challenger is None:
                if settings.max_model_age_s and age > settings.max_model_age_s:
                    with self.tracer.start_as_current_span("clm.expiry"):
                        self._ask("expiry", f"champion is {age:.0f} s old", after_ticks=0)
                elif (
                    settings.retrain_every_s and now - self.last_trained > settings.retrain_every_s
                ):
                    with self.tracer.start_as_current_span("clm.schedule"):
                        self._ask(
                            "schedule", f"every {settings.retrain_every_s:g} s", after_ticks=0
                        )
        if self.request is not None and self.request.after_ticks <= 0:
            await self.retrain()
        if settings.auto_promote and self.challenger is not None:
            verdict = promotion_verdict(
                *self.duel,
                min_predictions=settings.min_shadow_predictions,
                margin=settings.promotion_margin,
            )
            if verdict.promote:
                await self.promote(verdict.reason, forced=False)

    # Retraining -------------------------------------------------------------------------------

    def training_set(self) -> tuple[FloatArray, Any, dict[str, Any]]:
        xs, ys, ticks = [], [], 0
        for state in self.symbols.values():
            prices = np.fromiter(state.prices, np.float64, len(state.prices))
            if prices.size < WINDOW + 1:
                continue
            x, y = make_training_set(prices, 1)
            xs.append(x)
            ys.append(y)
            ticks += prices.size
        if not xs:
            raise ValueError("no symbol has enough ticks to train on yet")
        window = {"source": "live", "symbols": sorted(self.symbols), "ticks": ticks}
        return np.vstack(xs), np.concatenate(ys), window

    async def retrain(self) -> str | None:
        """Train a challenger on the held ticks and register it; returns its version."""
        request = self.request or RetrainRequest("request", None, 0)
        self.request = None
        async with self._train_lock:
            links = links_from_traceparent(request.traceparent, {"link.reason": request.trigger})
            with self.tracer.start_as_current_span("clm.retrain", links=links) as span:
                span.set_attribute("retrain.trigger", request.trigger)
                try:
                    x, y, window = self.training_set()
                    window.update(trigger=request.trigger, trained_at=time.time())
                    artifact = await asyncio.to_thread(train_model, x, y, name="logreg-live")
                except ValueError as exc:
                    metrics.RETRAINS.labels(request.trigger, "failed").inc()
                    self._decide("retrain failed", str(exc))
                    span.set_attribute("retrain.outcome", "failed")
                    return None
                artifact["training"] = window
                step = max(1, x.shape[0] // self.settings.reference_rows)
                artifact[REFERENCE_KEY] = np.round(x[::step], 10).tolist()
                version = str(artifact["version"])
                span.set_attribute("model_version", version)
                row = await self.ai.register(artifact, "challenger")
                self.challenger = Tracked.of(artifact, row.created_at.timestamp())
                self.duel = (Score(), Score())
                self.last_trained = time.time()
                metrics.RETRAINS.labels(request.trigger, "registered").inc()
                self._decide(
                    "challenger in shadow",
                    f"trained on {x.shape[0]} rows ({request.trigger})",
                    version,
                )
                await self.resources.publisher.publish(
                    ModelTrained(
                        model_version=version,
                        metrics={k: float(v) for k, v in artifact["metrics"].items()},
                        samples=int(x.shape[0]),
                        trained_at=row.created_at,
                    )
                )
                return version

    # Promotion and rollback -------------------------------------------------------------------

    async def promote(self, reason: str, *, forced: bool) -> str:
        challenger = self.challenger
        if challenger is None:
            raise NothingToPromote("no challenger is in shadow")
        with self.tracer.start_as_current_span("clm.promote") as span:
            span.set_attribute("model_version", challenger.version)
            span.set_attribute("promotion.reason", reason)
            span.set_attribute("promotion.forced", forced)
            champion, challenger_score = self.duel
            span.set_attribute("duel.champion_brier", champion.brier or 0.0)
            span.set_attribute("duel.challenger_brier", challenger_score.brier or 0.0)
            span.set_attribute("duel.predictions", challenger_score.n)
            moved = await self.ai.move_alias("champion", challenger.version, reason)
            self.champion, self.challenger = challenger, None
            self.adwin = ConceptDetector(self.settings.adwin_delta)
            metrics.PROMOTIONS.labels("forced" if forced else "beat").inc()
            self._decide("promoted", reason, challenger.version)
            await self.resources.publisher.publish(
                ModelPromoted(
                    model_version=challenger.version, previous_version=moved.previous, reason=reason
                )
            )
        return challenger.version

    async def rollback(self) -> tuple[str, str | None]:
        """The previous champion serves again; returns (version serving, version replaced)."""
        with self.tracer.start_as_current_span("clm.rollback") as span:
            replaced = self.champion.version if self.champion else None
            moved = await self.ai.rollback()
            span.set_attribute("model_version", moved.version)
            span.set_attribute("previous_version", replaced or "")
            self.challenger = None
            await self.sync()
            metrics.PROMOTIONS.labels("rollback").inc()
            self._decide("rolled back", f"from {replaced}", moved.version)
            await self.resources.publisher.publish(
                ModelPromoted(
                    model_version=moved.version, previous_version=replaced, reason="rollback"
                )
            )
        return moved.version, replaced

    def status(self) -> dict[str, Any]:
        report = self.last_report
        return {
            "champion": self.champion.version if self.champion else None,
            "challenger": self.challenger.version if self.challenger else None,
            "reference_rows": (
                0
                if self.champion is None or self.champion.reference is None
                else int(self.champion.reference.shape[0])
            ),
            "live_rows": int(min(self.live_rows, self.live.shape[0])),
            "retrain_pending": None
            if self.request is None
            else {"trigger": self.request.trigger, "ticks_to_wait": self.request.after_ticks},
            "duel": {"champion": self.duel[0].as_dict(), "challenger": self.duel[1].as_dict()},
            "scores": [
                {"role": role, "version": version, **score.as_dict()}
                for (role, version), score in self.scores.items()
            ],
            "drift": None
            if report is None
            else {
                "drifted": list(report.drifted),
                "features": {
                    f.feature: {"psi": f.psi, "ks_pvalue": f.ks_pvalue, "drifted": f.drifted}
                    for f in report.features
                },
            },
            "decisions": [
                {"at": d.at, "decision": d.kind, "detail": d.detail, "model_version": d.version}
                for d in self.decisions
            ],
        }
