"""The risk guard: decides on orders with the domain rules, and owns the trading state."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from bisect import bisect_right, insort
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

import httpx

from backend.infra.db import DatabaseError, DatabaseUnavailableError
from backend.infra.eventbus import Event
from backend.infra.observability import (
    BoundLogger,
    SpanKind,
    current_traceparent,
    lean_span,
    use_trace_context,
)
from backend.infra.service import Resources, service_url
from backend.trading.approval import Approval, sign_approval, sign_state
from backend.trading.events import MarketTick, RiskStateChanged
from backend.trading.events import RiskDecision as RiskDecisionEvent
from backend.trading.risk import (
    Exposure,
    FillLagTracker,
    InFlightOrder,
    PortfolioSnapshot,
    ReasonCode,
    ReferenceQuote,
    TradingState,
    check_order,
    transition_state,
)
from backend.trading.types import OrderRequest, Side, Symbol
from microservices.contracts import Refused, UpstreamError
from microservices.contracts.execution import ExecutionClient, RiskStateIn
from microservices.contracts.portfolio_intelligence import PortfolioClient

from . import metrics
from .journal import (
    Journal,
    JournalUnreadable,
    StateChange,
    StateJournal,
    closes_trading,
    default_journal_path,
)
from .settings import RiskSafetySettings
from .store import RiskStore

EVENT_WAIT_S = 0.5
"""How long a kill switch or resume waits for its event to reach the bus before answering."""

RECORD_RETRY_S = 1.0
"""How often a closing state change the database did not take is tried again."""

ACTOR_FROM_EXECUTION = "execution (a change not recorded before risk-safety restarted)"
"""The audit trail's actor of a change taken back from execution after a restart."""

CLOCK_MARGIN_MS = 5_000
"""Asked-for client order ids start this much before the oldest approval: clocks differ."""

REFRESH_IDLE_MS = 10_000
"""The dependencies are read in the background until this long after the last check."""

WINDOW_TRIM = 256
"""Approval times leave the order-rate window in batches of this many (one list move)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Readers:
    """The clients of risk's reads (the portfolio, execution's exposure), built once over the
    service's HTTP client. They go direct (`ServiceClient(direct=True)`: connections of their
    own, not httpx's pool): the same requests, spans and errors at a fraction of the CPU."""

    http: httpx.AsyncClient
    portfolio: PortfolioClient
    execution: ExecutionClient

    @classmethod
    def over(cls, http: httpx.AsyncClient, portfolio_url: str, execution_url: str) -> Readers:
        return cls(
            http,
            PortfolioClient(http, portfolio_url, direct=True),
            ExecutionClient(http, execution_url, direct=True),
        )

    def close(self) -> None:
        """Close the direct clients' idle connections."""
        self.portfolio.close()
        self.execution.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return f"HTTP {exc.status}: {exc.detail[:200]}"
    if isinstance(exc, UpstreamError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision as POST /check returns it."""

    approved: bool
    reason: ReasonCode
    detail: str
    decision_id: str
    approval: Approval | None
    state: TradingState


@dataclass(frozen=True, slots=True)
class StatePush:
    """What execution answered to a pushed trading state."""

    acknowledged: bool
    canceled: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StateView:
    state: TradingState
    reason: str
    changed_at: datetime | None
    epoch: int
    changed: bool = False
    execution: StatePush | None = None
    event: str | None = None
    """`published`, or `queued` in the outbox (Redis slow or down): changed either way."""
    recorded: bool = True
    """False while the state is in force but the database has not taken its record yet."""


class StateNotRecorded(DatabaseUnavailableError):
    """A halt (or a move to REDUCING) took effect, but the database did not take its record.

    Closing trading is always safe, so it is not undone for want of a record: the state is in
    force here and was pushed to execution, and the record is written once the database
    answers. Still a `DatabaseUnavailableError` (503) wherever it is not answered on its own.
    """

    def __init__(self, view: StateView, cause: DatabaseError) -> None:
        super().__init__(
            getattr(cause, "target", "of risk-safety"),
            f"{getattr(cause, 'detail', cause)}; trading state {view.state.value} (epoch "
            f"{view.epoch}) is in force but not recorded, and is recorded as soon as the "
            "database answers",
        )
        self.view = view


@dataclass(frozen=True, slots=True)
class PortfolioFetch:
    """The last attempt to read the portfolio, for GET /state."""

    ok: bool
    at_ms: int
    age_ms: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """Execution's `GET /exposure` answer, as risk uses it."""

    read_at_ms: int
    fill_sequence: int
    holdings: dict[Symbol, Decimal]
    working: list[InFlightOrder]
    received: frozenset[str]
    done_ms: int
    """When the answer arrived: any read begun later reflects every order it reports."""


@dataclass(frozen=True, slots=True)
class ExposureFetch:
    """The last attempt to read execution's exposure, for GET /state."""

    ok: bool
    at_ms: int
    fill_sequence: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An approval risk gave that execution has not reported receiving yet."""

    order: InFlightOrder
    issued_ms: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class MarketQuote:
    bid: Decimal
    ask: Decimal
    ts_ms: int
    received_ms: int

    def reference(self) -> ReferenceQuote:
        # A quote is as old as the older of its own time and its arrival: a lagging bus
        # cannot make an old quote look fresh, and a simulator's clock running ahead
        # cannot make it look younger than when it arrived.
        return ReferenceQuote(self.bid, self.ask, min(self.ts_ms, self.received_ms))


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """One read under way: when it began and its outcome (`number`: the order reads began in)."""

    started_ms: int
    result: asyncio.Future[T]
    number: int = 0


class SharedRead(Generic[T]):
    """At most one read of a dependency at a time, shared by every caller that joins it.

    A caller joining while a read is under way gets that read: it began before the caller
    came, which the approval ledger accounts for (every approval given since is counted
    unless the read reports it received). Without one under way, or if the one under way
    began `share_ms` ago or more (a slow answer must not hold every check), a new one begins.

    `recent` offers the newest read that has answered, under the same bound: begun less
    than `share_ms` ago. It tells no more than joining a read begun at that moment would,
    and nobody waits for it. Newest by when it began: an answer that arrives after the
    answer of a read begun later is never offered. `oldest_offered_ms` is when the oldest
    read that may still be handed out (joined or offered) began.
    """

    def __init__(self, fetch: Callable[[], Awaitable[T | None]], *, share_ms: int) -> None:
        self._fetch = fetch
        self._share_ms = share_ms
        self._current: Read[T | None] | None = None
        self._answered: Read[T | None] | None = None
        self._under_way: dict[int, int] = {}
        """number -> start of every read not answered yet."""
        self._numbers = itertools.count(1)

    def join(self) -> Read[T | None]:
        current = self._current
        if (
            current is not None
            and not current.result.done()
            and now_ms() - current.started_ms < self._share_ms
        ):
            return current
        return self.begin()

    def renew(self, every_ms: int) -> Read[T | None]:
        """The read begun less than `every_ms` ago if there is one (answered or not), else
        a new one: a background refresh adds no read to those the callers start."""
        current = self._current
        if current is not None and now_ms() - current.started_ms < every_ms:
            return current
        return self.begin()

    def begin(self) -> Read[T | None]:
        """Start a read now, which later callers join."""
        read: Read[T | None] = Read(
            now_ms(), asyncio.ensure_future(self._fetch()), next(self._numbers)
        )
        self._under_way[read.number] = read.started_ms
        read.result.add_done_callback(lambda _: self._answer(read))
        self._current = read
        return read

    def oldest_offered_ms(self) -> int | None:
        """When the oldest read that a caller may still get began: under way or answered,
        begun less than `share_ms` ago (an older one is neither joined nor offered)."""
        since = now_ms() - self._share_ms
        starts = [start for start in self._under_way.values() if start > since]
        if self._answered is not None and self._answered.started_ms > since:
            starts.append(self._answered.started_ms)
        return min(starts, default=None)

    def recent(self) -> Read[T | None] | None:
        """The newest read that answered (not None) and began less than `share_ms` ago."""
        answered = self._answered
        if answered is not None and now_ms() - answered.started_ms < self._share_ms:
            return answered
        return None

    def _answer(self, read: Read[T | None]) -> None:
        self._under_way.pop(read.number, None)
        answered = self._answered
        if answered is not None and read.number < answered.number:
            return
        failed = read.result.cancelled() or read.result.exception() is not None
        # A read that failed after the last answer fails closed: nothing is offered until
        # the dependency answers again.
        self._answered = None if failed or read.result.result() is None else read


class RiskGuard:
    """Pre-trade checks at risk's own prices against everything in flight; the trading state.

    Decisions are serialised (the order-rate window, the approval ledger and state changes
    must see each other); the portfolio and execution's exposure are fetched, concurrently,
    before taking the lock. A decision that cannot be persisted is never returned as an
    approval: the request fails instead.
    """

    def __init__(
        self,
        settings: RiskSafetySettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        self.settings = settings
        self.limits = settings.to_domain()
        self.store = RiskStore(resources)
        self.log = logger
        self.portfolio_url = service_url("portfolio-intelligence")
        self.execution_url = service_url("execution")
        self.last_fetch: PortfolioFetch | None = None
        self.last_exposure: ExposureFetch | None = None
        self._resources = resources
        self._tracer = tracer
        self._lock = asyncio.Lock()
        self._state = TradingState.ACTIVE
        self._state_reason = ""
        self._state_changed_at: datetime | None = None
        self._epoch = 0
        # Changes in force whose records the database has not taken yet, in epoch order (the
        # last one is the state in force); also in the journal, which outlives a restart.
        self._unrecorded: list[StateChange] = []
        # Read at scrape time: it follows the list, with nothing to keep in step.
        metrics.STATE_UNRECORDED.set_function(lambda: 1.0 if self._unrecorded else 0.0)
        self._journal = StateJournal(settings.state_journal or default_journal_path())
        # Approval times of the order-rate window, ascending; the first `_window_start` have
        # left it (trimmed in batches).
        self._approvals: list[int] = []
        self._window_start = 0
        self._ledger: dict[str, LedgerEntry] = {}
        # When each check still to be decided started reading execution (see _prune_ledger).
        self._reads_in_flight: dict[int, int] = {}
        self._read_ids = itertools.count()
        # Client order id -> when a read of execution that reported it received completed.
        self._confirmed: dict[str, int] = {}
        self._noted: ExecutionView | None = None
        self._portfolio_reads: SharedRead[PortfolioSnapshot] = SharedRead(
            self._fetch_portfolio, share_ms=settings.read_share_ms
        )
        self._exposure_reads: SharedRead[ExecutionView] = SharedRead(
            lambda: self._fetch_exposure(self._received_since() - CLOCK_MARGIN_MS),
            share_ms=settings.read_share_ms,
        )
        self._quotes: dict[Symbol, MarketQuote] = {}
        self._fill_lag = FillLagTracker()
        self._last_check_ms = 0
        self._checking = asyncio.Event()
        self._refreshes = settings.refresh_ms > 0 and settings.read_share_ms > 0
        self._readers: Readers | None = None

    @property
    def secret(self) -> str:
        return self.settings.approval_secret.get_secret_value()

    async def run_outbox_relay(self, _resources: Resources | None = None) -> None:
        """Publish the decisions and state changes the request path left in the outbox."""
        await self.store.outbox.run_relay()

    async def refresh_reads(self, _resources: Resources | None = None) -> None:
        """Background task: while checks keep coming, read the portfolio and execution's
        exposure every `refresh_ms`, so a check finds answers begun less than `read_share_ms`
        ago (the bound a joined read has) instead of reading on its own path."""
        if not self._refreshes:
            return
        every_ms = self.settings.refresh_ms
        interval_s = every_ms / 1000
        while True:
            await self._checking.wait()
            if now_ms() - self._last_check_ms > REFRESH_IDLE_MS:
                self._checking.clear()
                continue
            started = time.monotonic()
            # Never raise (a failed read is None); shielded, as checks may be waiting on them.
            await asyncio.gather(
                asyncio.shield(self._portfolio_reads.renew(every_ms).result),
                asyncio.shield(self._exposure_reads.renew(every_ms).result),
            )
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    @property
    def readers(self) -> Readers:
        """The clients of the reads, over the service's current HTTP client."""
        http = self._resources.http
        assert http is not None
        if self._readers is None or self._readers.http is not http:
            if self._readers is not None:
                self._readers.close()
            self._readers = Readers.over(http, self.portfolio_url, self.execution_url)
        return self._readers

    async def close(self, _resources: Resources | None = None) -> None:
        """Shutdown hook: close the connections of the read clients."""
        if self._readers is not None:
            self._readers.close()
            self._readers = None

    async def restore(self, _resources: Resources | None = None) -> None:
        """Load the trading state and epoch, the order-rate window and the unexpired approvals."""
        row = await self.store.state()
        if row is not None:
            self._state = TradingState(row.mode)
            self._state_reason = row.reason
            self._state_changed_at = row.updated_at
        self._epoch = await self.store.epoch()
        await self._take_unrecorded_from_journal()
        since = datetime.now(UTC) - timedelta(milliseconds=self.limits.order_window_ms)
        times = sorted(_epoch_ms(t) for t in await self.store.approvals_since(since))
        self._approvals, self._window_start = times, 0
        ttl = self.settings.approval_ttl_ms
        recent = await self.store.approved_since(datetime.now(UTC) - timedelta(milliseconds=ttl))
        for decision in recent:
            detail = decision.reasons[0] if decision.reasons else {}
            issued = _epoch_ms(decision.decided_at)
            self._ledger[decision.client_order_id] = LedgerEntry(
                InFlightOrder(
                    Symbol(decision.symbol),
                    Side(decision.side),
                    Decimal(decision.quantity),
                    bool(detail.get("reduce_only", False)),
                    decision.client_order_id,
                ),
                issued,
                issued + ttl,
            )
        self._set_state_gauge()
        self.log.info(
            "risk state restored",
            state=self._state.value,
            reason=self._state_reason,
            epoch=self._epoch,
            approvals_in_flight=len(self._ledger),
        )

    # Market data ------------------------------------------------------------------------------

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Keep the latest quote per symbol: the reference prices orders are judged at."""
        tick = event.data
        if tick.bid <= 0 or tick.ask < tick.bid:
            return
        symbol = Symbol(tick.symbol)
        current = self._quotes.get(symbol)
        if current is not None and tick.ts_ms < current.ts_ms:
            return  # a redelivered or late tick must not replace a newer quote
        self._quotes[symbol] = MarketQuote(tick.bid, tick.ask, tick.ts_ms, now_ms())

    def quotes(self) -> dict[Symbol, ReferenceQuote]:
        return {symbol: quote.reference() for symbol, quote in self._quotes.items()}

    # Decisions --------------------------------------------------------------------------------

    async def check(self, order: OrderRequest, caller_price: Decimal | None = None) -> Verdict:
        """Decide on `order`; persist and publish the decision; sign an approval if approved.

        `caller_price` is what the caller believes the price is: recorded, never judged at.
        """
        started = time.perf_counter()
        # A lean span (an SDK span costs several times as much), current for the check: it
        # lies on the path of every order.
        with lean_span(
            self._tracer,
            "risk.check",
            {
                "client_order_id": order.client_order_id,
                "symbol": order.symbol,
                "side": order.side.value,
                "quantity": str(order.quantity),
                "order_type": order.order_type.value,
                "reduce_only": order.reduce_only,
            },
        ) as span:
            read = next(self._read_ids)
            self._last_check_ms = now_ms()
            self._checking.set()
            # One read of each dependency serves every check that arrives while it is under
            # way (see SharedRead); a check counts from the moment its exposure read began.
            # An answer read in the background is used when its read began as recently as a
            # joined one must have; otherwise the dependency is read (or joined) on the path.
            # A reduce-only order whose symbol has an approval the background answer does
            # not report received (its entry, say) reads (or joins a read) as before, so an
            # exit right after its entry is not denied on an answer from before that fill.
            exposure_read = self._exposure_read_for(order)
            self._reads_in_flight[read] = exposure_read.started_ms
            portfolio_read = self._offered(self._portfolio_reads)
            span.set_attributes(
                {
                    "portfolio.read_waited": not portfolio_read.result.done(),
                    "exposure.read_waited": not exposure_read.result.done(),
                }
            )
            try:
                if portfolio_read.result.done() and exposure_read.result.done():
                    # Both answered in the background: no turn of the event loop to wait.
                    snapshot = portfolio_read.result.result()
                    execution = exposure_read.result.result()
                else:
                    # Shielded: a caller that goes away must not cancel a read others wait on.
                    snapshot, execution = await asyncio.gather(
                        asyncio.shield(portfolio_read.result),
                        asyncio.shield(exposure_read.result),
                    )
            except BaseException:
                del self._reads_in_flight[read]
                raise
            async with self._lock:
                now = now_ms()
                self._trim_window(now)
                if execution is not None:
                    self._note_received(execution)
                # This check's own read is among those the pruning must not outrun.
                self._prune_ledger(now)
                del self._reads_in_flight[read]
                exposure = self._exposure(execution, order)
                fill_lag_ms = 0
                if execution is not None and snapshot is not None and snapshot.fills is not None:
                    fill_lag_ms = self._fill_lag.lag_ms(
                        execution_sequence=execution.fill_sequence,
                        booked_sequence=snapshot.fills.booked_sequence,
                        now_ms=now,
                    )
                    metrics.FILL_LAG.set(fill_lag_ms / 1000)
                quotes = self.quotes()
                decision = check_order(
                    order,
                    portfolio=snapshot,
                    exposure=exposure,
                    quotes=quotes,
                    state=self._state,
                    recent_order_times=self._recent_approvals(now),
                    now_ms=now,
                    limits=self.limits,
                    fill_lag_ms=fill_lag_ms,
                )
                detail = self._explain(decision.reason, decision.detail, snapshot)
                if order.symbol in quotes:
                    metrics.QUOTE_AGE.labels(order.symbol).set(
                        (now - quotes[order.symbol].as_of_ms) / 1000
                    )
                if decision.recommended_state is not None and snapshot is not None:
                    await self._change_state(
                        decision.recommended_state,
                        actor="risk-safety",
                        reason=self._breach(decision.recommended_state, snapshot),
                    )
                state, epoch = self._state, self._epoch
                entry = None
                if decision.approved:
                    # Counted from now on, before the decision is stored: a check decided
                    # while this one commits sees it in flight.
                    insort(self._approvals, now)
                    entry = LedgerEntry(
                        InFlightOrder(
                            order.symbol,
                            order.side,
                            order.quantity,
                            order.reduce_only,
                            order.client_order_id,
                        ),
                        now,
                        now + self.settings.approval_ttl_ms,
                    )
                    self._ledger[order.client_order_id] = entry
                    self._confirmed.pop(order.client_order_id, None)
            traceparent = current_traceparent()
            try:
                # Outside the lock, committed together with the decisions made meanwhile.
                decision_id = await self.store.record_decision(
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    side=order.side.value,
                    quantity=order.quantity,
                    approved=decision.approved,
                    reason={
                        "code": decision.reason.value,
                        "detail": detail,
                        "state": state.value,
                        "epoch": epoch,
                        "reference_price": _text(decision.reference_price),
                        "caller_price": _text(caller_price),
                        "notional": _text(decision.notional),
                        "order_type": order.order_type.value,
                        "limit_price": _text(order.limit_price),
                        "time_in_force": order.time_in_force.value,
                        "reduce_only": order.reduce_only,
                    },
                    trace_id=traceparent.split("-")[1] if traceparent else None,
                    decided_at=datetime.fromtimestamp(now / 1000, UTC),
                    # Through the outbox: the relay, woken by the commit, publishes it; the
                    # check never waits on Redis.
                    announce=RiskDecisionEvent(
                        client_order_id=order.client_order_id,
                        symbol=order.symbol,
                        approved=decision.approved,
                        reason_code=decision.reason.value,
                        detail=detail,
                    ),
                )
            except BaseException:
                # No approval leaves without its decision stored; it no longer counts.
                if entry is not None and self._ledger.get(order.client_order_id) is entry:
                    del self._ledger[order.client_order_id]
                raise
            approval = None
            if entry is not None:
                approval = sign_approval(
                    self.secret,
                    decision_id=decision_id,
                    order=order,
                    epoch=epoch,
                    expires_ms=entry.expires_ms,
                )
            span.set_attributes(
                {
                    "approved": decision.approved,
                    "reason": decision.reason.value,
                    "decision_id": decision_id,
                    "trading_state": state.value,
                    "reference_price": _text(decision.reference_price) or "",
                }
            )
            log = self.log.info if decision.approved else self.log.warning
            log(
                "order approved" if decision.approved else "order denied",
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side=order.side.value,
                quantity=order.quantity,
                reason=decision.reason.value,
                detail=detail,
                decision_id=decision_id,
                state=state.value,
                reference_price=_text(decision.reference_price),
                caller_price=_text(caller_price),
            )
            metrics.DECISIONS.labels(str(decision.approved).lower(), decision.reason.value).inc()
            if not decision.approved:
                metrics.DENIALS.labels(decision.reason.value).inc()
            metrics.CHECK_DURATION.observe(time.perf_counter() - started)
        return Verdict(decision.approved, decision.reason, detail, decision_id, approval, state)

    def _offered(self, reads: SharedRead[T]) -> Read[T | None]:
        recent = reads.recent() if self._refreshes else None
        return recent or reads.join()

    def _exposure_read_for(self, order: OrderRequest) -> Read[ExecutionView | None]:
        """The read of execution `order` is judged on: the background answer when there is
        one, else a read joined or begun now.

        A reduce-only order takes the background answer only if it reports every approval
        of the order's symbol still in the ledger as received: then no fill that could make
        its position larger can come from an order risk approved after that read began. The
        answer obeys the same age bound as for any order, and the approvals it has not seen
        count in flight as for any order, so the limits hold either way; a fresh read only
        spares an exit a denial on a position its entry's fill has just made."""
        reads = self._exposure_reads
        if not order.reduce_only:
            return self._offered(reads)
        recent = reads.recent() if self._refreshes else None
        if recent is not None:
            view = recent.result.result()
            if view is not None and all(
                cid in view.received
                for cid, entry in self._ledger.items()
                if entry.order.symbol == order.symbol and cid != order.client_order_id
            ):
                return recent
        return reads.join()

    def _explain(self, reason: ReasonCode, detail: str, snapshot: PortfolioSnapshot | None) -> str:
        """The denial's detail, with the fetch error when a dependency could not be read."""
        fetch, exposure = self.last_fetch, self.last_exposure
        if reason is ReasonCode.STALE_PORTFOLIO and snapshot is None and fetch and fetch.error:
            return f"portfolio unavailable: {fetch.error}"
        if reason is ReasonCode.EXPOSURE_UNAVAILABLE and exposure and exposure.error:
            return f"execution exposure unavailable: {exposure.error}"
        return detail

    def _exposure(self, execution: ExecutionView | None, order: OrderRequest) -> Exposure | None:
        """Execution's holdings and working orders plus the approvals it had not received.

        Called under the lock. An approval counts unless this very read of execution reports
        its client order id (it is then a working order or a holding there) or it had expired
        before the read (execution refuses an expired approval). Reads answer out of order,
        so an approval is judged against each read, never dropped because of a newer one.
        """
        if execution is None:
            return None
        approvals = [
            entry.order
            for cid, entry in self._ledger.items()
            if cid not in execution.received
            and entry.expires_ms > execution.read_at_ms
            # A new check for the same client order id replaces its earlier approval.
            and cid != order.client_order_id
        ]
        return Exposure(execution.holdings, [*execution.working, *approvals])

    def _received_since(self) -> int:
        # The clock margin only widens the set of ids asked for: harmless.
        return min((e.issued_ms for e in self._ledger.values()), default=now_ms())

    def _note_received(self, execution: ExecutionView) -> None:
        """Remember when a read first reported each approved order received (once per read)."""
        if execution is self._noted:
            return
        self._noted = execution
        for cid in execution.received:
            if cid in self._ledger:
                self._confirmed.setdefault(cid, execution.done_ms)

    def _prune_ledger(self, now: int) -> None:
        """Forget approvals that no read still to be judged can miss.

        An approval that expired before every such read began is refused by execution; one
        that a completed read reported received is, in every read begun after that one
        completed, a working order or a holding there, so counted without the ledger."""
        horizon = min(self._reads_in_flight.values(), default=now)
        # So is a read that a later check may still be handed (answered in the background,
        # or under way). Only a read begun after every answered one can be offered (see
        # SharedRead), which already keeps this bound; it is kept here too, so the pruning
        # does not rest on that ordering alone.
        offered = self._exposure_reads.oldest_offered_ms()
        if offered is not None:
            horizon = min(horizon, offered)
        confirmed = self._confirmed
        for cid, entry in list(self._ledger.items()):
            done = confirmed.get(cid)
            if entry.expires_ms <= horizon or (done is not None and done < horizon):
                del self._ledger[cid]
                confirmed.pop(cid, None)

    async def _fetch_portfolio(self) -> PortfolioSnapshot | None:
        """The portfolio as risk needs it; None (and the error kept) when it cannot be read."""
        fetched_ms = now_ms()
        try:
            # The contract refuses non-finite figures and a portfolio without `fills`.
            book = await self.readers.portfolio.portfolio()
            snapshot = book.to_snapshot()
        # Anything that stops us reading the portfolio means "no portfolio": fail closed.
        except Exception as exc:
            error = _error_text(exc)
            self.last_fetch = PortfolioFetch(False, fetched_ms, error=error)
            metrics.PORTFOLIO_REACHABLE.set(0)
            self.log.warning("portfolio unavailable", url=self.portfolio_url, error=error)
            return None
        age_ms = fetched_ms - snapshot.as_of_ms
        self.last_fetch = PortfolioFetch(True, fetched_ms, age_ms=age_ms)
        metrics.PORTFOLIO_REACHABLE.set(1)
        metrics.PORTFOLIO_AGE.set(age_ms / 1000)
        return snapshot

    async def _fetch_exposure(self, since_ms: int) -> ExecutionView | None:
        """Execution's holdings, working orders and received client order ids, in one read."""
        read_at = now_ms()  # execution reads its state after this moment
        try:
            answer = await self.readers.execution.exposure(since_ms)
            view = ExecutionView(
                read_at_ms=read_at,
                fill_sequence=answer.fill_sequence,
                holdings={Symbol(s): q for s, q in answer.holdings.items()},
                working=[
                    InFlightOrder(
                        Symbol(w.symbol),
                        Side(w.side),
                        w.remaining_quantity,
                        w.reduce_only,
                        w.client_order_id,
                    )
                    for w in answer.working
                ],
                received=frozenset(answer.client_order_ids_since),
                done_ms=now_ms(),
            )
        # Anything that stops us reading execution means "exposure unknown": fail closed.
        except Exception as exc:
            error = _error_text(exc)
            self.last_exposure = ExposureFetch(False, read_at, error=error)
            metrics.EXPOSURE_REACHABLE.set(0)
            self.log.warning("execution exposure unavailable", url=self.execution_url, error=error)
            return None
        self.last_exposure = ExposureFetch(True, read_at, fill_sequence=view.fill_sequence)
        metrics.EXPOSURE_REACHABLE.set(1)
        return view

    def _breach(self, target: TradingState, snapshot: PortfolioSnapshot) -> str:
        """Why a loss limit moved trading to `target`, for the audit trail."""
        if target is TradingState.HALTED:
            drawdown = (snapshot.peak_equity - snapshot.equity) / snapshot.peak_equity
            return (
                f"DRAWDOWN: equity {snapshot.equity} is {drawdown:.4f} below peak "
                f"{snapshot.peak_equity}, max {self.limits.max_drawdown_fraction}"
            )
        return (
            f"DAILY_LOSS: daily pnl {snapshot.daily_pnl}, "
            f"max daily loss {self.limits.max_daily_loss}"
        )

    def _trim_window(self, now: int) -> None:
        gone = bisect_right(self._approvals, now - self.limits.order_window_ms)
        if gone >= WINDOW_TRIM or gone == len(self._approvals):
            del self._approvals[:gone]
            gone = 0
        self._window_start = gone

    def _recent_approvals(self, now: int) -> list[int]:
        """The order-rate window as the rule needs it: counted here (two bisections rather
        than the rule's scan of every approval per check), and handed over only at the
        limit, where the newest `max_orders_per_window` of it make the rule deny."""
        times = self._approvals
        first, end = self._window_start, bisect_right(self._approvals, now)
        limit = self.limits.max_orders_per_window
        return times[max(first, end - limit) : end] if end - first >= limit else []

    # Trading state ----------------------------------------------------------------------------

    def state(self) -> StateView:
        return StateView(
            self._state,
            self._state_reason,
            self._state_changed_at,
            self._epoch,
            recorded=not self._unrecorded,
        )

    def state_token(self, state: TradingState, epoch: int) -> str:
        return sign_state(self.secret, state=state.value, epoch=epoch).token

    async def set_state(self, target: TradingState, *, actor: str, reason: str) -> StateView:
        """Move to `target` on an operator's request (kill switch, resume); audited.

        Asking for the state already in force changes nothing, but pushes the current signed
        state to execution again, in case it missed the change.
        """
        with self._tracer.start_as_current_span(
            "risk.state_change",
            kind=SpanKind.INTERNAL,
            attributes={"trading_state": target.value, "actor": actor, "reason": reason},
        ) as span:
            async with self._lock:
                if target is self._state:
                    push = await self._push_state(self._state, self._epoch, self._state_reason)
                    span.set_attributes(
                        {"changed": False, "execution_acknowledged": push.acknowledged}
                    )
                    view = replace(self.state(), execution=push)
                    # Asked again while the change waits for its record: write it now.
                    try:
                        await self._record_unrecorded()
                    except DatabaseError as exc:
                        raise StateNotRecorded(view, exc) from exc
                    return replace(view, recorded=True)
                push = await self._change_state(target, actor=actor, reason=reason)
                view = StateView(
                    self._state,
                    self._state_reason,
                    self._state_changed_at,
                    self._epoch,
                    changed=True,
                    execution=push,
                )
            # Outside the lock: the change is committed, and its answer must not wait on Redis
            # for more than a moment; a queued event goes out when the relay gets through.
            published = await self.store.outbox.publish_within(EVENT_WAIT_S)
            event = "published" if published else "queued"
            span.set_attributes(
                {
                    "changed": True,
                    "epoch": view.epoch,
                    "execution_acknowledged": push.acknowledged,
                    "event": event,
                }
            )
            if not published:
                self.log.warning(
                    "trading state change queued for the bus; the outbox relay publishes it",
                    state=view.state.value,
                    epoch=view.epoch,
                )
            return replace(view, event=event)

    async def _change_state(self, target: TradingState, *, actor: str, reason: str) -> StatePush:
        """Called under the lock: move to `target`, record it, tell execution, in the order
        that is safe for the move.

        A change that closes trading is pushed to execution first, then committed: execution
        hears of it before anyone can see it here, so no approval of the old epoch can be
        issued after execution moved on, and a halt takes effect where orders fill before the
        bus (which can lag) carries it. A change that opens trading is committed first:
        execution is never told of one the database does not hold (until then, execution
        stays closed, and learns of it by polling if the push fails).
        """
        previous = self._state
        transition_state(previous, target)
        closing = closes_trading(previous, target)
        # Changes the database did not take yet are written first, in order. A change that
        # closes trading does not wait for them: it joins them, and is written after them.
        refused: DatabaseError | None = None
        try:
            await self._record_unrecorded()
        except DatabaseError as exc:
            if not closing:
                raise
            refused = exc
        epoch = self._epoch + 1
        change = StateChange(
            epoch, previous, target, reason, actor, datetime.now(UTC), current_traceparent()
        )
        if closing:
            push = await self._push_state(target, epoch, reason)
            if refused is None:
                try:
                    await self._record(change)
                except DatabaseError as exc:
                    refused = exc
        else:
            await self._record(change)  # opening trading without its record: never
            push = await self._push_state(target, epoch, reason)
        self._adopt(target, epoch, reason, change.at)
        if refused is not None:
            # Closing trading is safe without its record, and execution may have adopted it
            # already: it stays in force, and is recorded once the database answers.
            self._unrecorded.append(change)
            journaled = await self._write_journal()
            self.log.error(
                "trading state changed but not recorded; recording it when the database answers",
                previous_state=previous.value,
                state=target.value,
                epoch=epoch,
                actor=actor,
                reason=reason,
                execution_acknowledged=push.acknowledged,
                journaled=journaled,
                error=str(refused),
            )
            view = replace(self.state(), changed=True, execution=push)
            raise StateNotRecorded(view, refused) from refused
        self.log.warning(
            "trading state changed",
            previous_state=previous.value,
            state=target.value,
            epoch=epoch,
            actor=actor,
            reason=reason,
            execution_acknowledged=push.acknowledged,
            execution_canceled=len(push.canceled),
        )
        return push

    def _adopt(
        self, target: TradingState, epoch: int, reason: str, changed_at: datetime | None
    ) -> None:
        self._state = target
        self._epoch = epoch
        self._state_reason = reason
        self._state_changed_at = changed_at
        self._set_state_gauge()
        metrics.STATE_CHANGES.labels(target.value).inc()

    async def _record_unrecorded(self) -> None:
        """Called under the lock: write the changes in force that the database did not take
        (if any), in order and as they happened (their time, their trace); a `DatabaseError`
        if it still cannot."""
        while self._unrecorded:
            pending = self._unrecorded[0]
            await self._record(pending)
            del self._unrecorded[0]
            await self._write_journal()
            self.log.warning(
                "trading state change recorded",
                state=pending.target.value,
                epoch=pending.epoch,
                actor=pending.actor,
                changed_at=pending.at.isoformat(),
            )

    async def _record(self, change: StateChange) -> None:
        """Write `change` (the state, its audit row, `risk.state_changed` through the outbox)
        in its own trace."""
        with use_trace_context(change.traceparent):
            await self.store.change_state(
                from_mode=change.previous.value,
                to_mode=change.target.value,
                reason=change.reason,
                actor=change.actor,
                trace_id=change.traceparent.split("-")[1] if change.traceparent else None,
                announce=RiskStateChanged(
                    previous_state=change.previous, state=change.target, reason=change.reason
                ),
                at=change.at,
            )

    async def _write_journal(self) -> bool:
        """Make the journal hold the changes still unrecorded (none: remove it). True if it
        does; a disk that refuses is logged, and the changes stay in force all the same."""
        journal = Journal(self._database(), tuple(self._unrecorded))
        try:
            if journal.changes:
                await asyncio.to_thread(self._journal.write, journal)
            else:
                await asyncio.to_thread(self._journal.remove)
        except OSError as exc:
            self.log.error(
                "could not write the state journal; until the database takes the records, "
                "only this process and execution hold the state in force",
                path=str(self._journal.path),
                unrecorded=len(journal.changes),
                error=str(exc),
            )
            return False
        return True

    async def _take_unrecorded_from_journal(self) -> None:
        """At start-up, once the database's state and epoch are loaded: adopt the journal's
        closing changes past the recorded epoch (made and not recorded before a restart),
        and drop those the database already holds."""
        try:
            journal = await asyncio.to_thread(self._journal.read)
        except JournalUnreadable as exc:
            aside = await asyncio.to_thread(self._journal.set_aside)
            self.log.error(
                "the state journal is unreadable; set aside, not taken",
                error=str(exc),
                aside=str(aside),
            )
            return
        except OSError as exc:
            # Not a reason to stay down: execution's copy is still asked for (below).
            self.log.error(
                "the state journal cannot be read; not taken",
                path=str(self._journal.path),
                error=str(exc),
            )
            return
        if journal is None:
            return
        database = self._database()
        if journal.database != database:
            self.log.error(
                "the state journal belongs to another database; not taken, left in place",
                path=str(self._journal.path),
                journal_database=journal.database,
                database=database,
            )
            return
        # Those at or below the recorded epoch were written before the journal was updated.
        pending = [change for change in journal.changes if change.epoch > self._epoch]
        state, epoch = self._state, self._epoch
        for change in pending:
            if (
                change.epoch != epoch + 1
                or change.previous is not state
                or not closes_trading(state, change.target)
            ):
                self.log.error(
                    "the state journal does not follow the recorded state; not taken, left "
                    "in place",
                    path=str(self._journal.path),
                    recorded_state=self._state.value,
                    recorded_epoch=self._epoch,
                    journal=[c.document() for c in journal.changes],
                )
                return
            state, epoch = change.target, change.epoch
        self._unrecorded = pending
        if not pending:
            await self._write_journal()
            return
        last = pending[-1]
        self._adopt(last.target, last.epoch, last.reason, last.at)
        if len(pending) < len(journal.changes):
            await self._write_journal()
        self.log.error(
            "trading state changes not recorded before the restart read back from the state "
            "journal; in force, and recorded as soon as the database takes them",
            state=last.target.value,
            epoch=last.epoch,
            changes=[change.document() for change in pending],
        )

    def _database(self) -> str:
        """The database this service records in, as its journal names it."""
        return self._resources.engine.url.render_as_string(hide_password=True)

    async def record_state_changes(self, _resources: Resources | None = None) -> None:
        """Background task: write the closing state changes the database did not take, every
        `RECORD_RETRY_S` until it does (a kill switch or resume also tries, first). From
        start-up until execution first answers, also look there for such a change made
        before a restart and lost with the journal (`_take_unrecorded_from_execution`)."""
        asked_execution = False
        while True:
            if not asked_execution:
                asked_execution = await self._take_unrecorded_from_execution()
            if self._unrecorded:
                async with self._lock:
                    with contextlib.suppress(DatabaseError):
                        await self._record_unrecorded()
            await asyncio.sleep(RECORD_RETRY_S)

    async def _take_unrecorded_from_execution(self) -> bool:
        """Adopt the closing state execution enforces one epoch past the last recorded one: a
        change this process made, pushed and could not record before it restarted, when the
        journal did not keep it (a new pod, a disk that refused). Only a change that closes
        trading is taken (safe whoever claims it); True once execution answered. risk-safety
        runs as one replica, replaced rather than rolled (DEPLOYMENT.md): no other process
        can be between its push and its commit at this moment."""
        http = self._resources.http
        if http is None:
            return False
        try:
            held = await ExecutionClient(http, self.execution_url).risk_state(
                timeout_s=self.settings.state_push_timeout_ms / 1000
            )
        except Exception:  # not up yet, or unreachable: asked again later
            return False
        async with self._lock:
            if (
                held.state is None
                or held.epoch != self._epoch + 1
                or held.state not in TradingState.__members__
                or self._unrecorded
            ):
                return True
            target = TradingState(held.state)
            if not closes_trading(self._state, target):
                return True
            at = (
                datetime.fromtimestamp(held.adopted_at_ms / 1000, UTC)
                if held.adopted_at_ms is not None
                else datetime.now(UTC)
            )
            reason = held.reason or ""
            change = StateChange(
                held.epoch, self._state, target, reason, ACTOR_FROM_EXECUTION, at, None
            )
            self._adopt(target, held.epoch, reason, at)
            self._unrecorded.append(change)
            await self._write_journal()
            self.log.error(
                "execution enforces a trading state this service had not recorded; "
                "adopted, and recorded when the database answers",
                state=target.value,
                epoch=held.epoch,
                reason=reason,
            )
        return True

    async def _push_state(self, state: TradingState, epoch: int, reason: str) -> StatePush:
        """POST the signed state to execution, bounded in time; a failure is counted, not raised."""
        http = self._resources.http
        assert http is not None
        signed = sign_state(self.secret, state=state.value, epoch=epoch)
        started = time.perf_counter()
        try:
            answer = await ExecutionClient(http, self.execution_url).push_risk_state(
                RiskStateIn.of(signed, reason),
                timeout_s=self.settings.state_push_timeout_ms / 1000,
            )
            if (answer.state, answer.epoch) != (state.value, epoch):
                raise RuntimeError(f"execution holds {answer.state} epoch {answer.epoch}")
            push = StatePush(True, list(answer.canceled))
        # Whatever went wrong, the state still changes: a halt must never wait on execution.
        # Execution's lease (it polls GET /state) covers a push that did not arrive.
        except Exception as exc:
            push = StatePush(False, error=_error_text(exc))
            metrics.STATE_PUSH_FAILURES.inc()
            self.log.error(
                "trading state push to execution failed",
                url=self.execution_url,
                state=state.value,
                epoch=epoch,
                error=push.error,
            )
        metrics.STATE_PUSH_DURATION.observe(time.perf_counter() - started)
        return push

    def _set_state_gauge(self) -> None:
        for state in TradingState:
            metrics.TRADING_STATE.labels(state.value).set(1 if state is self._state else 0)


def _epoch_ms(moment: datetime) -> int:
    # SQLite hands back naive datetimes; they were written in UTC.
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
