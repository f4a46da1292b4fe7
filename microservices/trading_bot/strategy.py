"""The strategy loop: a tick to signal, sizing, risk check and order; every outcome recorded."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

import httpx
from pydantic import ValidationError

from backend.infra.db import IntegrityViolationError
from backend.infra.eventbus import Event
from backend.infra.observability import (
    BoundLogger,
    current_traceparent,
    lean_span,
)
from backend.infra.service import Resources
from backend.trading.approval import Approval
from backend.trading.events import MarketTick, OrderFilled
from backend.trading.features import WINDOW
from backend.trading.orders import client_order_id_for
from backend.trading.types import ClientOrderId, OrderRequest, Side, Symbol
from microservices.contracts import Refused, UpstreamError
from microservices.contracts.ai_engine import AiEngineClient
from microservices.contracts.execution import ExecutionClient, OrderCreate, OrderPublic
from microservices.contracts.portfolio_intelligence import PortfolioClient, PortfolioPublic
from microservices.contracts.risk_safety import ApprovalPublic, CheckRequest, RiskSafetyClient

from .book import BookFill, FillBook, Holdings
from .metrics import (
    BOOK_CORRECTIONS,
    BOOK_MISSING,
    BOOK_SEQUENCE,
    BOOK_SOURCE,
    CONFIDENCE,
    DECISIONS,
    ENTRIES_PAUSED,
    RUNNING,
    TICK_TO_ORDER,
)
from .policy import ChampionPolicy
from .settings import TradingBotSettings
from .store import DecisionStore

MODEL_NAME = "ai-engine"
REASON_MAX_LEN = 64  # bot_decisions.reason; a risk-safety reason could be longer
DETAIL_MAX_LEN = 500
ZERO = Decimal(0)
RECENT_TICKS = 32
"""Tick ids remembered per symbol: a copy of one of them (a feed's retried publication) is
neither added to the window again nor decided on (the bus does not deduplicate ticks)."""


class Outcome(StrEnum):
    """What a decision ended in (`bot_decisions.action`); why is `bot_decisions.reason`."""

    ORDERED = "ORDERED"
    SKIPPED = "SKIPPED"
    DENIED = "DENIED"
    REJECTED = "REJECTED"
    ERROR = "ERROR"


@dataclass
class Decision:
    """One run of the strategy for one tick; becomes a `bot_decisions` row."""

    symbol: str
    tick_event_id: str
    tick_ts_ms: int
    outcome: Outcome = Outcome.SKIPPED
    reason: str = ""
    detail: str = ""
    direction: str | None = None
    confidence: float = 0.0
    model_version: str = ""
    signal_id: str | None = None
    side: str | None = None
    quantity: Decimal | None = None
    price: Decimal | None = None
    client_order_id: str | None = None
    order_status: str | None = None
    features: dict[str, float] = field(default_factory=dict)
    repeat_of: str | None = None
    """The client order id a previous delivery of the same tick ordered and recorded: this
    run is a repeat, neither recorded nor counted as a decision."""

    def finish(self, outcome: Outcome, reason: str, detail: str = "") -> Decision:
        self.outcome, self.reason, self.detail = outcome, reason, detail
        return self


@dataclass(frozen=True, slots=True)
class Upstreams:
    """The typed clients of the services a decision calls, built once over the service's
    HTTP client, not once per request. The three calls on the path from a tick to an order
    go direct (`ServiceClient(direct=True)`: connections of their own, not httpx's pool),
    which costs the bot about a fifth of the CPU per call."""

    http: httpx.AsyncClient
    ai_engine: AiEngineClient
    risk_safety: RiskSafetyClient
    execution: ExecutionClient
    portfolio: PortfolioClient

    @classmethod
    def over(cls, http: httpx.AsyncClient) -> Upstreams:
        return cls(
            http,
            AiEngineClient(http, direct=True),
            RiskSafetyClient(http, direct=True),
            ExecutionClient(http, direct=True),
            PortfolioClient(http),
        )

    def close(self) -> None:
        """Close the direct clients' idle connections."""
        for client in (self.ai_engine, self.risk_safety, self.execution):
            client.close()


@dataclass
class SymbolState:
    prices: deque[Decimal]
    last_decision_at: float = float("-inf")
    last_tick_ms: int = 0
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_TICKS))
    held_since: float | None = None
    """When a due decision was first held back for a tick that queued (monotonic)."""


class TradingBot:
    """Holds the per-symbol windows and the run state; `on_tick` is the bus handler."""

    def __init__(
        self,
        settings: TradingBotSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        self.settings = settings
        self.resources = resources
        self.store = DecisionStore(resources)
        self.sizing = settings.to_domain()
        self.policy = ChampionPolicy(
            settings.sizing_policy == "rl-champion", settings.policy_refresh_s, logger
        )
        self.running = settings.autostart
        self.entries_paused = False
        self.symbols: dict[str, SymbolState] = {}
        # Sized from, instead of a `GET /portfolio` per decision: three check intervals
        # without an agreement with the portfolio and the book is not trusted.
        self.book = FillBook(max_age_s=3 * settings.book_check_s)
        self._upstreams: Upstreams | None = None
        self._last_decision_ended = float("-inf")
        """Unix time the latest decision ended: a tick published before it waited for it."""
        self.log = logger
        self.tracer = tracer
        self._publish_state()

    # Controls ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Trade: decide on ticks, entries and exits."""
        self.running, self.entries_paused = True, False
        self._publish_state()
        self.log.info("bot started")

    def stop(self) -> None:
        """Stop deciding (windows keep filling, so a restart trades at once)."""
        self.running = False
        self._publish_state()
        self.log.info("bot stopped")

    def pause_entries(self) -> None:
        """No new entries (BUY); exits (SELL of a held position) still go through."""
        self.entries_paused = True
        self._publish_state()
        self.log.info("bot entries paused")

    def _publish_state(self) -> None:
        RUNNING.set(1 if self.running else 0)
        ENTRIES_PAUSED.set(1 if self.entries_paused else 0)

    # The loop ----------------------------------------------------------------------------------

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Keep the window; when due (running, warm, not throttled, fresh), decide."""
        tick = event.data
        self.book.mark(tick.symbol, (tick.bid + tick.ask) / 2)
        wanted = self.settings.symbols
        if wanted and tick.symbol not in wanted:
            return
        state = self.symbols.get(tick.symbol)
        if state is None:
            state = SymbolState(deque(maxlen=self.settings.window))
            self.symbols[tick.symbol] = state
        # The model was trained on last-trade prices, so it is served the same series. A
        # redelivered tick (its decision failed) is not added twice, and a copy published
        # under a new entry (first delivered, like the original) is left to the original.
        if event.id in state.recent_ids:
            if event.deliveries <= 1:
                return
        else:
            state.prices.append(tick.last)
            state.recent_ids.append(event.id)
            state.last_tick_ms = tick.ts_ms
        if not self.running or len(state.prices) < WINDOW:
            return
        now = time.monotonic()
        if (now - state.last_decision_at) * 1000.0 < self.settings.decision_interval_ms:
            return
        age_ms = time.time() * 1000.0 - event.time.timestamp() * 1000.0
        if age_ms > self.settings.max_tick_age_ms:
            # Recorded like any skip, and throttled like any decision: a backlog replayed after
            # downtime writes one row per symbol and interval, not one per tick.
            state.last_decision_at = now
            limit_ms = self.settings.max_tick_age_ms
            stale = Decision(tick.symbol, event.id, tick.ts_ms).finish(
                Outcome.SKIPPED,
                "STALE_TICK",
                f"tick is {age_ms:.0f} ms old (BOT_MAX_TICK_AGE_MS={limit_ms})",
            )
            # Every decision is a `decide` span, so a trace viewer finds the skips too.
            with self._span("decide") as span:
                _decision_attributes(span, stale)
                await self._record(stale)
            return
        # A redelivered tick is never held back: its first delivery may have asked for the
        # signal already, and that signal must end in a decision.
        if event.deliveries <= 1 and self._hold_back(state, event, now):
            return
        state.held_since = None
        previous, state.last_decision_at = state.last_decision_at, now
        decision = Decision(tick.symbol, event.id, tick.ts_ms)
        with self._span("decide") as span:
            span.set_attribute("symbol", tick.symbol)
            try:
                await self._decide(decision, tick, list(state.prices), event)
            except BaseException:
                # The bus delivers the tick again; the throttle must let that retry through.
                state.last_decision_at = previous
                raise
            finally:
                _decision_attributes(span, decision)
                self._last_decision_ended = time.time()
            if decision.repeat_of is not None:
                # Kept in the trace under its own name, so the viewer's decisions and funnel
                # count the signal once.
                span.update_name("decide.repeat")
                self.log.info(
                    "tick redelivered after it ordered", client_order_id=decision.repeat_of
                )
                return
            await self._record(decision)

    def _hold_back(self, state: SymbolState, event: Event[MarketTick], now: float) -> bool:
        """Whether this due decision waits for the symbol's next tick: its tick was published
        before the previous decision ended, so it queued behind it, and the next one will not
        (`decision_hold_ms`). Held back for at most that long, so no symbol starves."""
        if event.time.timestamp() >= self._last_decision_ended:
            return False
        if state.held_since is None:
            state.held_since = now
        return (now - state.held_since) * 1000.0 < self.settings.decision_hold_ms

    async def on_fill(self, event: Event[OrderFilled]) -> None:
        """Keep the book current: every fill of the venue, the bot's own or not."""
        fill = event.data
        if fill.sequence is None:
            # A fill that cannot be placed among the venue's: the book is not trusted until
            # the next check against the portfolio, which holds it.
            self.book.distrust()
            return
        self.book.apply(
            BookFill(fill.sequence, fill.symbol, fill.side, fill.quantity, fill.price, fill.fee)
        )
        self._book_moved()

    async def check_book_loop(self, _resources: Resources) -> None:
        """Background task: check the book against the portfolio every `book_check_s`."""
        while True:
            await self.check_book()
            await asyncio.sleep(self.settings.book_check_s)

    async def check_book(self) -> None:
        """Start the book again from the portfolio's books (when complete), saying so if the
        fills seen had taken it somewhere else."""
        answer = await self._fetch_portfolio()
        if isinstance(answer, str):
            self.log.warning("book not checked: portfolio unavailable", error=answer[:300])
            return
        self._seed(answer)

    def _seed(self, book: PortfolioPublic) -> None:
        corrections = self.book.corrections
        self.book.seed(book, time.monotonic())
        self._book_moved()
        if self.book.corrections != corrections:
            BOOK_CORRECTIONS.inc()
            self.log.warning(
                "fill-fed book differed from the portfolio's; corrected",
                sequence=book.fills.booked_sequence,
            )

    def _book_moved(self) -> None:
        if self.book.seeded:
            BOOK_SEQUENCE.set(self.book.sequence)
            BOOK_MISSING.set(self.book.missing)

    @property
    def upstreams(self) -> Upstreams:
        """The clients of the services called, over the service's current HTTP client."""
        http = self.resources.http
        assert http is not None
        if self._upstreams is None or self._upstreams.http is not http:
            if self._upstreams is not None:
                self._upstreams.close()
            self._upstreams = Upstreams.over(http)
        return self._upstreams

    async def close(self, _resources: Resources | None = None) -> None:
        """Shutdown hook: close the connections of the clients built over the HTTP client."""
        if self._upstreams is not None:
            self._upstreams.close()
            self._upstreams = None

    async def _fetch_portfolio(self) -> PortfolioPublic | str:
        """The portfolio's books, or why they could not be read."""
        try:
            return await self.upstreams.portfolio.portfolio()
        except (UpstreamError, Refused) as exc:
            return str(exc)

    async def _decide(
        self, d: Decision, tick: MarketTick, prices: list[Decimal], event: Event[MarketTick]
    ) -> None:
        # The book is in memory; without it, the portfolio is read while the model predicts.
        known = self.book.holdings(tick.symbol, time.monotonic())
        fetch = None
        if not isinstance(known, Holdings):
            fetch = asyncio.create_task(self._fetch_portfolio(), name="bot-portfolio-read")
        try:
            await self._decide_with(d, tick, prices, event, fetch)
        finally:
            if fetch is not None and not fetch.done():
                fetch.cancel()

    async def _decide_with(
        self,
        d: Decision,
        tick: MarketTick,
        prices: list[Decimal],
        event: Event[MarketTick],
        fetch: asyncio.Task[PortfolioPublic | str] | None,
    ) -> None:
        try:
            # The model reads the last WINDOW prices only: the rest of the window (kept for
            # the sizing policy) would only be serialised, sent and parsed.
            signal = await self.upstreams.ai_engine.predict(
                tick.symbol, prices[-WINDOW:], source_id=event.id
            )
        except (UpstreamError, Refused) as exc:
            d.finish(Outcome.ERROR, "AI_UNAVAILABLE", str(exc))
            return
        d.direction, d.confidence = signal.direction, signal.confidence
        d.model_version, d.signal_id = signal.model_version, signal.signal_id
        d.features = dict(signal.features)
        CONFIDENCE.observe(d.confidence)
        if d.direction == "HOLD":
            d.finish(Outcome.SKIPPED, "HOLD")
            return
        if d.confidence < self.settings.min_confidence:
            d.finish(Outcome.SKIPPED, "LOW_CONFIDENCE", f"{d.confidence:.4f}")
            return
        d.side = d.direction
        if d.side == "BUY" and self.entries_paused:
            d.finish(Outcome.SKIPPED, "ENTRIES_PAUSED")
            return
        # Derived from the signal, which is derived from the tick: a redelivered tick asks for
        # the same order, which execution recognises instead of trading twice.
        coid = client_order_id_for(d.signal_id, tick.symbol)
        # Only a tick delivered before can have ordered already (its signal id, and so the
        # order id, comes from the tick's event id); 0 is an event not read from the bus.
        if event.deliveries != 1 and await self._already_ordered(coid):
            # The first delivery ordered and recorded its decision; the bus delivers the
            # tick again because it was not acknowledged (a crash in between). The signal
            # has its one decision already: this run is not another.
            d.repeat_of = coid
            d.finish(Outcome.SKIPPED, "DUPLICATE", coid)
            return
        if not await self._size(d, tick, fetch):
            return
        d.client_order_id = coid
        assert d.quantity is not None
        order = OrderRequest(
            client_order_id=ClientOrderId(coid),
            symbol=Symbol(tick.symbol),
            side=Side(d.side),
            quantity=d.quantity,
            reduce_only=d.side == Side.SELL,
        )
        approval = await self._risk_check(d, order)
        if approval is None:
            return
        refused = await self._submit(d, order, approval, event)
        if refused is None or refused.status != 403:
            return
        # A trading-state change between the check and the order (a halt, a resume) revokes
        # the approval, and an approval can lapse on the way: ask risk-safety once more for
        # the same order. Its answer in the state now in force is the decision (DENIED
        # HALTED, or a fresh approval); a second refusal is final, so this never loops.
        self.log.info(
            "approval refused by execution, checking again",
            client_order_id=coid,
            detail=refused.detail[:300],
        )
        first = f"execution refused the first approval: {refused.detail}"
        approval = await self._risk_check(d, order)
        if approval is None:
            d.detail = f"{d.detail} ({first})" if d.detail else first
            return
        if await self._submit(d, order, approval, event) is None:
            d.detail = first

    async def _already_ordered(self, coid: str) -> bool:
        return await self.store.outcome_of(coid) == Outcome.ORDERED

    async def _holdings(
        self, symbol: str, fetch: asyncio.Task[PortfolioPublic | str] | None, span: Any
    ) -> Holdings | str:
        """Equity and the position in `symbol`: from the book when it is known complete, else
        from the portfolio (read now, or by `fetch`); a string says why neither could."""
        known = self.book.holdings(symbol, time.monotonic())
        if isinstance(known, Holdings):
            span.set_attribute("sizing.book", "fills")
            BOOK_SOURCE.labels("fills").inc()
            return known
        span.set_attribute("sizing.book", "portfolio")
        span.set_attribute("sizing.book_unknown", known)
        BOOK_SOURCE.labels("portfolio").inc()
        answer = await (fetch if fetch is not None else self._fetch_portfolio())
        if isinstance(answer, str):
            return answer
        self._seed(answer)
        # The portfolio's books plus the fills seen since, when they are complete.
        seeded = self.book.holdings(symbol, time.monotonic())
        if isinstance(seeded, Holdings):
            return seeded
        return Holdings(answer.equity, answer.quantity_of(symbol))

    async def _size(
        self, d: Decision, tick: MarketTick, fetch: asyncio.Task[PortfolioPublic | str] | None
    ) -> bool:
        assert d.side is not None
        with self._span("sizing") as span:
            span.set_attribute("symbol", tick.symbol)
            span.set_attribute("side", d.side)
            span.set_attribute("confidence", d.confidence)
            span.set_attribute("model_version", d.model_version)
            holdings = await self._holdings(tick.symbol, fetch, span)
            if isinstance(holdings, str):
                d.finish(Outcome.ERROR, "PORTFOLIO_UNAVAILABLE", holdings)
                span.set_attribute("reason", d.reason)
                return False
            equity, held = holdings.equity, holdings.held
            d.price = tick.ask if d.side == "BUY" else tick.bid
            sized = self.policy.size(
                equity=equity,
                held=held,
                price=d.price,
                confidence=d.confidence,
                side=d.side,
                prices=self.symbols[tick.symbol].prices,
                params=self.sizing,
            )
            sized.annotate(span)
            size = sized.decision
            quantity = size.quantity
            if d.side == "SELL" and held <= ZERO:
                # Spot: a SELL signal exits (part of) a long; it never opens a short.
                quantity = ZERO
                d.finish(Outcome.SKIPPED, "NO_POSITION")
            elif d.side == "SELL":
                quantity = min(quantity, held)
            if quantity <= ZERO and d.reason == "":
                d.finish(Outcome.SKIPPED, f"SIZE_{size.constraint.value}")
            d.quantity = quantity
            span.set_attribute("quantity", str(quantity))
            span.set_attribute("equity", str(equity))
            span.set_attribute("constraint", size.constraint.value)
            if quantity <= ZERO:
                span.set_attribute("reason", d.reason)
                return False
            return True

    async def _risk_check(self, d: Decision, order: OrderRequest) -> Approval | None:
        with self._span("risk_check") as span:
            self._order_attributes(span, d)
            try:
                verdict = await self.upstreams.risk_safety.check(
                    CheckRequest.of(order, price=d.price)
                )
            # An order outside the contract (say, a lot size finer than it allows) is refused
            # before it is sent, as risk-safety would refuse it.
            except (UpstreamError, Refused, ValidationError) as exc:
                d.finish(Outcome.ERROR, "RISK_UNAVAILABLE", str(exc))
                span.set_attribute("reason", d.reason)
                return None
            span.set_attribute("approved", verdict.approved)
            span.set_attribute("reason", verdict.reason)
            if not verdict.approved or verdict.approval is None:
                d.finish(Outcome.DENIED, verdict.reason or "DENIED", verdict.detail)
                return None
            return verdict.approval.to_approval()

    async def _submit(
        self, d: Decision, order: OrderRequest, approval: Approval, event: Event[MarketTick]
    ) -> Refused | None:
        """Send the approved order; execution's refusal, if it refused (the decision is then
        REJECTED), else None."""
        with self._span("submit_order") as span:
            self._order_attributes(span, d)
            try:
                placed = await self.upstreams.execution.place_order(
                    OrderCreate.of(order, approval=ApprovalPublic.of(approval))
                )
            except Refused as exc:
                d.finish(Outcome.REJECTED, "EXECUTION_REJECTED", exc.detail)
                span.set_attribute("reason", d.reason)
                return exc
            # Unknown outcome (timeout, 5xx): raise, so the bus delivers the tick again and the
            # retry sends the same client order id, which execution answers with the order.
            latency_s = time.time() - event.time.timestamp()
            self._book_fills_of(placed)
            TICK_TO_ORDER.observe(max(0.0, latency_s))
            d.order_status = placed.status
            d.finish(Outcome.ORDERED, "APPROVED")
            span.set_attribute("order_status", d.order_status)
            span.set_attribute("tick_to_order_ms", round(latency_s * 1000.0, 3))
            return None

    def _book_fills_of(self, placed: OrderPublic) -> None:
        """The order's fills, booked now rather than when their events arrive (the same
        sequences then count once): the next decision sizes with them."""
        for fill in placed.fills:
            self.book.apply(
                BookFill(
                    fill.sequence, placed.symbol, placed.side, fill.quantity, fill.price, fill.fee
                )
            )
        self._book_moved()

    def _span(self, name: str) -> AbstractContextManager[Any]:
        """A business span of the decision (`lean_span`): four of them lie on the path from a
        tick to its order."""
        return lean_span(self.tracer, name)

    @staticmethod
    def _order_attributes(span: Any, d: Decision) -> None:
        span.set_attribute("symbol", d.symbol)
        span.set_attribute("side", d.side or "")
        span.set_attribute("quantity", str(d.quantity))
        span.set_attribute("client_order_id", d.client_order_id or "")
        span.set_attribute("model_version", d.model_version)
        if d.signal_id:
            span.set_attribute("signal_id", d.signal_id)

    async def _record(self, d: Decision) -> None:
        DECISIONS.labels(d.outcome.value, d.reason).inc()
        traceparent = current_traceparent()
        trace_id = traceparent.split("-")[1] if traceparent else None
        self.log.info(
            "decision",
            symbol=d.symbol,
            outcome=d.outcome.value,
            reason=d.reason,
            detail=d.detail[:300],
            direction=d.direction,
            confidence=round(d.confidence, 4),
            side=d.side,
            quantity=str(d.quantity) if d.quantity is not None else None,
            client_order_id=d.client_order_id,
            model_version=d.model_version,
        )
        row = {
            "symbol": d.symbol,
            "action": d.outcome.value,
            "reason": d.reason[:REASON_MAX_LEN],
            "detail": d.detail[:DETAIL_MAX_LEN],
            "confidence": Decimal(str(round(d.confidence, 12))),
            "model_name": MODEL_NAME,
            "model_version": d.model_version,
            "client_order_id": d.client_order_id,
            "features": detail_of(d),
            "trace_id": trace_id,
        }
        try:
            await self.store.add(row)
        except IntegrityViolationError:
            # A redelivered tick that ordered already: the first row stands.
            self.log.info("decision already recorded", client_order_id=d.client_order_id)


def _decision_attributes(span: Any, d: Decision) -> None:
    """The decision on its `decide` span: outcome, reason code and the inputs it was made on."""
    span.set_attribute("symbol", d.symbol)
    span.set_attribute("outcome", d.outcome.value)
    span.set_attribute("reason", d.reason)
    if d.detail:
        span.set_attribute("detail", d.detail[:300])
    if d.client_order_id:
        span.set_attribute("client_order_id", d.client_order_id)
    if d.direction is not None:
        span.set_attribute("direction", d.direction)
        span.set_attribute("confidence", d.confidence)
    if d.model_version:
        span.set_attribute("model_version", d.model_version)


def detail_of(d: Decision) -> dict[str, Any]:
    """What `bot_decisions.features` holds: the signal, the order and the model's inputs (the
    reason and detail have columns of their own)."""
    return {
        "direction": d.direction,
        "side": d.side,
        "quantity": None if d.quantity is None else str(d.quantity),
        "price": None if d.price is None else str(d.price),
        "signal_id": d.signal_id,
        "order_status": d.order_status,
        "tick_event_id": d.tick_event_id,
        "tick_ts_ms": d.tick_ts_ms,
        "features": d.features,
    }
