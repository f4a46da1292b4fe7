"""The order desk: one paper venue, serialised; each change and its events commit together.

The desk also enforces the trading state (see riskstate.py): it adopts signed states pushed
by risk-safety or polled from it, under the same lock as every submission and every tick, so
nothing that increases exposure is accepted or filled after a halt has been adopted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from backend.infra.db import DatabaseError
from backend.infra.eventbus import Event, EventData
from backend.infra.observability import (
    BoundLogger,
    current_traceparent,
    lean_span,
    links_from_traceparent,
    use_trace_context,
)
from backend.infra.outbox import Outbox, ReplyHold
from backend.infra.service import Resources, service_url
from backend.trading.approval import (
    Approval,
    ApprovalError,
    SignedState,
    order_fields,
    verify_approval,
    verify_state,
)
from backend.trading.events import (
    MarketTick,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
)
from backend.trading.orders import Order, OrderEventKind, OrderStatus
from backend.trading.types import (
    ClientOrderId,
    Fill,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    Symbol,
    TimeInForce,
)
from backend.trading.venue import PaperVenue, VenueReport, WorkingOrder
from microservices.contracts import MalformedAnswer, Refused, UpstreamError
from microservices.contracts.risk_safety import RiskSafetyClient

from . import metrics
from .riskstate import (
    ACTIVE,
    Adopted,
    Outcome,
    RiskStateGate,
    order_reduces,
    request_reduces,
)
from .settings import ExecutionSettings
from .store import (
    LockConnection,
    OrderStore,
    PlacedOrder,
    Recorded,
    Report,
    StoredOrder,
    StoredRiskState,
    VenueChanges,
    VenueLock,
)

ORDER_FIELD_NAMES = (
    "client_order_id",
    "symbol",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "time_in_force",
    "reduce_only",
)
"""The names of `approval.order_fields`, in its order: what makes two submissions one order."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


RECEIVED_WINDOW_MS = 120_000
"""How far back the desk remembers the client order ids it received, for GET /exposure
(risk-safety asks for about its approval TTL plus a clock margin); older asks read the table."""


class ReceivedIds:
    """The client order ids persisted in the last `window_ms`, by the time they were received.

    Times are kept non-decreasing (a clock stepping back files an id a little later), so an
    answer may hold a few ids received just before `since_ms`: a superset, which risk-safety
    treats as received, as they are.
    """

    def __init__(self, window_ms: int = RECEIVED_WINDOW_MS) -> None:
        self.window_ms = window_ms
        self.covered_from_ms: int | None = None
        self._times: list[int] = []
        self._ids: list[str] = []
        self._start = 0

    def reset(self, covered_from_ms: int, received: Sequence[tuple[int, str]]) -> None:
        """Start again from the ids the database holds since `covered_from_ms`."""
        self.covered_from_ms = covered_from_ms
        self._times, self._ids, self._start = [], [], 0
        for at_ms, cid in received:
            self.add(at_ms, cid)

    def add(self, at_ms: int, client_order_id: str) -> None:
        if self._times:
            at_ms = max(at_ms, self._times[-1])
        self._times.append(at_ms)
        self._ids.append(client_order_id)
        horizon = at_ms - self.window_ms
        if self._times[self._start] < horizon:
            self._start = bisect.bisect_left(self._times, horizon, lo=self._start)
            covered = self.covered_from_ms
            self.covered_from_ms = horizon if covered is None else max(covered, horizon)
            if self._start > 4096 and self._start * 2 > len(self._times):
                del self._times[: self._start], self._ids[: self._start]
                self._start = 0

    def since(self, since_ms: int) -> list[str] | None:
        """Every id received at or after `since_ms`, oldest first; None if that is before what
        is remembered (ask the database)."""
        if self.covered_from_ms is None or since_ms < self.covered_from_ms:
            return None
        return self._ids[bisect.bisect_left(self._times, since_ms, lo=self._start) :]


class OrderNotFound(LookupError):
    """No order has this client order id."""


class OrderNotOpen(ValueError):
    """The order is already filled, canceled, rejected or expired."""


class OrderConflict(ValueError):
    """A known client order id submitted again with a different order."""

    def __init__(self, client_order_id: str, fields: Sequence[str]) -> None:
        super().__init__(
            f"client_order_id {client_order_id} is already used by an order that differs in "
            f"{', '.join(fields)}; use a new client_order_id for a new order"
        )
        self.fields = tuple(fields)


class TradingClosed(PermissionError):
    """An exposure-increasing order while the enforced state does not allow it."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


class InvalidState(ValueError):
    """A trading state whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """What one signed state did: the outcome, the state now enforced, the orders canceled."""

    outcome: Outcome
    adopted: Adopted
    canceled: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exposure:
    """Execution's view for risk-safety, read under the desk's lock in one step."""

    as_of_ms: int
    fill_sequence: int
    risk_state: str | None
    risk_epoch: int | None
    holdings: dict[Symbol, Decimal]
    working: list[Order]
    client_order_ids_since: list[str]


class GatedVenue(PaperVenue):
    """The paper venue, able to leave some working orders unmatched on a quote.

    While trading is not open the desk holds back every working order that could increase
    exposure (they keep their reservations, and match again on the first quote after trading
    reopens), while reduce-only exits still fill against the same quote.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hold: Callable[[Order], bool] | None = None

    def on_quote(
        self, quote: Quote, *, hold: Callable[[Order], bool] | None = None
    ) -> list[VenueReport]:
        """Take a new quote and fill the working orders it allows, except those `hold` keeps."""
        self._hold = hold
        try:
            return super().on_quote(quote)
        finally:
            self._hold = None

    def open_orders(self, symbol: Symbol | None = None) -> list[Order]:
        orders = super().open_orders(symbol)
        hold = self._hold
        return orders if hold is None else [o for o in orders if not hold(o)]

    def resume(
        self,
        *,
        fills: Iterable[Fill],
        open_orders: Iterable[tuple[WorkingOrder, Sequence[Fill]]],
        quotes: Iterable[Quote] = (),
    ) -> None:
        """Take in what other replicas sharing this venue did since this one last held it.

        `fills` are the fills written since (they move cash and holdings); `open_orders` are
        every order open now, each with all its fills (they replace the working orders, their
        reservations, fee carries and fill counts, as a restart derives them); `quotes` are
        the latest quotes, kept (not matched) where newer than the ones held.
        """
        for fill in fills:
            holding = self._holdings.get(fill.symbol, Decimal(0))
            if fill.side is Side.BUY:
                self._cash -= fill.quantity * fill.price + fill.fee
                self._holdings[fill.symbol] = holding + fill.quantity
            else:
                self._cash += fill.quantity * fill.price - fill.fee
                self._holdings[fill.symbol] = holding - fill.quantity
        pairs = list(open_orders)
        working = PaperVenue.restore(
            initial_cash=Decimal(0),
            fills=[fill for _, order_fills in pairs for fill in order_fills],
            open_orders=[w for w, _ in pairs],
            config=self._config,
        )
        self._orders = working._orders
        self._reserved_cash = working._reserved_cash
        self._reserved_quantity = working._reserved_quantity
        self._fee_carry = working._fee_carry
        self._takers = working._takers
        self._fill_counts.update(working._fill_counts)
        self.take_quotes(quotes)

    def forget(self, client_order_id: ClientOrderId) -> None:
        """Drop an order that can no longer fill, once persisted: the venue keeps the orders
        that can still fill, as a restart rebuilds it, so no walk over its orders (every tick,
        every exposure view) grows with the orders it ever took. A repeated submission of
        the order is answered from the database, before the venue sees it."""
        order = self._orders.get(client_order_id)
        if order is not None and not order.status.is_open:
            del self._orders[client_order_id]
            self._fill_counts.pop(client_order_id, None)

    def take_quotes(self, quotes: Iterable[Quote]) -> None:
        """Keep the quotes newer than the ones held, without matching (they are not new ticks)."""
        for quote in quotes:
            held = self._quotes.get(quote.symbol)
            if held is None or quote.ts_ms > held.ts_ms:
                self._quotes[quote.symbol] = quote


def _held_while_closed(order: Order) -> bool:
    return not order_reduces(order)


@dataclass(frozen=True, slots=True)
class Submission:
    """The outcome of POST /orders: the order as persisted and whether this call created it;
    `hold` keeps the outbox's relay waiting until the answer is sent (release it then)."""

    order: StoredOrder | PlacedOrder
    created: bool
    hold: ReplyHold | None = None


@dataclass(frozen=True, slots=True)
class _Ask:
    """One POST /orders waiting for the desk: the order, its approval, the request's context
    (its trace) and where its outcome goes."""

    request: OrderRequest
    approval: Approval | None
    context: contextvars.Context
    future: asyncio.Future[Submission]
    holds: list[ReplyHold]
    """The hold of the batch that decided it (one release is this ask's)."""


@dataclass(frozen=True, slots=True)
class _Staged:
    """A new order the venue took (in memory), waiting for its batch's commit."""

    ask: _Ask
    item: Report
    fills: list[tuple[Fill, Any]]


class OrderDesk:
    """Serialises venue calls (HTTP submits and cancels, market ticks) behind one lock.

    Each venue report is persisted in one transaction together with its events (the
    outbox), which are published after the commit; if the write fails the venue is rebuilt
    from the database, so memory never runs ahead of it and no event announces what was not
    committed.
    """

    def __init__(
        self,
        settings: ExecutionSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        self.settings = settings
        self.store = OrderStore(resources)
        self._resources = resources
        self.log = logger
        self._tracer = tracer
        self._lock = asyncio.Lock()
        self._config = settings.to_domain()
        self.venue = GatedVenue(cash=settings.initial_cash, config=self._config, seed=settings.seed)
        self._quotes: dict[Symbol, Quote] = {}
        self._accepted_at: dict[ClientOrderId, float] = {}
        self._traceparents: dict[ClientOrderId, str | None] = {}
        self._traded: set[Symbol] = set()
        self._outbox: Outbox | None = None
        self._fill_sequence = 0
        self._received = ReceivedIds()
        self._asks: list[_Ask] = []
        self.gate = RiskStateGate(lease_ms=settings.risk_lease_ms)
        self._venue_lock = VenueLock(resources) if settings.shared_venue else None
        self._seen_version = -1
        """With a shared venue: the newest order transition this replica has taken in."""
        self.risk_safety_url = service_url("risk-safety")
        self._install_risk_gauges()

    @property
    def outbox(self) -> Outbox:
        """Where the desk's events wait for publication (created at start-up)."""
        if self._outbox is None:
            raise RuntimeError("the order desk has not started")
        return self._outbox

    # Start-up ---------------------------------------------------------------------------------

    async def restore(self, _resources: Resources | None = None) -> None:
        """Rebuild balances, reservations and working orders from the database."""
        if self._outbox is None:
            r = self._resources
            self._outbox = Outbox(r.sessions, r.publisher, source=r.name)
        async with self._exclusive(catch_up=False):
            await self._restore()

    async def run_outbox_relay(self, _resources: Resources | None = None) -> None:
        """Publish events the request path could not (Redis down, an earlier process's)."""
        await self.outbox.run_relay()

    async def _restore(self) -> None:
        fills, open_orders = await self.store.load_for_restore()
        venue = GatedVenue.restore(
            initial_cash=self.settings.initial_cash,
            fills=[Fill.from_stored(f) for f in fills],
            open_orders=[WorkingOrder(_order_of(o), o.record.reserved_cash) for o in open_orders],
            quotes=self._quotes.values(),
            config=self._config,
            seed=self.settings.seed,
        )
        assert isinstance(venue, GatedVenue)
        self.venue = venue
        self._fill_sequence = fills[-1].id if fills else 0
        covered_from = now_ms() - self._received.window_ms
        self._received.reset(covered_from, await self.store.received_since(covered_from))
        self._traded = {Symbol(f.symbol) for f in fills}
        self._accepted_at = {
            ClientOrderId(o.record.client_order_id): o.record.created_at.timestamp()
            for o in open_orders
        }
        self._traceparents = {
            ClientOrderId(o.record.client_order_id): o.record.trace_context for o in open_orders
        }
        if self._venue_lock is not None:
            self._seen_version = await self.store.venue_version()
        self._update_gauges()
        self.log.info(
            "venue restored",
            open_orders=len(open_orders),
            fills=len(fills),
            cash=self.venue.cash,
            reserved_cash=self.venue.reserved_cash,
        )

    @contextlib.asynccontextmanager
    async def _exclusive(self, *, catch_up: bool = True) -> AsyncIterator[None]:
        """The desk's lock; with a shared venue also the lock across replicas, taken after it,
        and (with `catch_up`) what the other replicas did taken in before the caller acts."""
        async with self._lock:
            if self._venue_lock is None:
                yield
                return
            async with self._venue_lock.hold() as conn:
                if catch_up:
                    await self._catch_up(conn)
                # What this section writes moves `_seen_version` (see `_wrote`).
                yield

    async def _catch_up(self, conn: LockConnection | None) -> None:
        """Take in the orders, fills, quotes and trading state other replicas wrote."""
        shared = await self.store.catch_up(self._seen_version, self._fill_sequence, conn)
        if shared.changes is not None:
            self._resume(shared.changes)
        self.venue.take_quotes(shared.quotes)
        for quote in shared.quotes:
            held = self._quotes.get(quote.symbol)
            if held is None or quote.ts_ms > held.ts_ms:
                self._quotes[quote.symbol] = quote
        if shared.risk is not None:
            self._adopt_shared(shared.risk)

    def _resume(self, changes: VenueChanges) -> None:
        fills = [Fill.from_stored(f) for f in changes.fills]
        self.venue.resume(
            fills=fills,
            open_orders=[
                (
                    WorkingOrder(_order_of(o), o.record.reserved_cash),
                    [Fill.from_stored(f) for f in o.fills],
                )
                for o in changes.open_orders
            ],
        )
        if changes.fills:
            self._fill_sequence = max(self._fill_sequence, changes.fills[-1].id)
        self._traded.update(f.symbol for f in fills)
        open_ids = set()
        for o in changes.open_orders:
            cid = ClientOrderId(o.record.client_order_id)
            open_ids.add(cid)
            if cid not in self._accepted_at:
                self._accepted_at[cid] = o.record.created_at.timestamp()
                self._traceparents[cid] = o.record.trace_context
        for cid in set(self._accepted_at) - open_ids:
            self._forget(cid)
        self._seen_version = changes.version
        metrics.VENUE_CATCH_UPS.inc()
        self._update_gauges()

    def _adopt_shared(self, stored: StoredRiskState) -> None:
        """Enforce a newer trading state another replica adopted (its signature checked)."""
        signed, adopted = stored.signed, self.gate.adopted
        if adopted is not None and signed.epoch <= adopted.epoch:
            return
        if not verify_state(self.settings.approval_secret.get_secret_value(), signed):
            metrics.RISK_STATE_UPDATES.labels("replica", "invalid").inc()
            self.log.warning("shared trading state ignored: invalid token", epoch=signed.epoch)
            return
        # The lease runs from when the other replica verified it, not from now.
        age_s = max(0, now_ms() - stored.verified_at_ms) / 1000
        self.gate.adopt(
            Adopted(
                state=signed.state,
                epoch=signed.epoch,
                source="replica",
                reason=stored.reason,
                adopted_at_ms=now_ms(),
                fill_sequence=self._fill_sequence,
            ),
            now_s=time.monotonic() - age_s,
        )
        self._watch_state_label(signed.state)
        metrics.RISK_STATE_UPDATES.labels("replica", Outcome.ADOPTED.value).inc()
        self.log.warning(
            "trading state adopted",
            state=signed.state,
            epoch=signed.epoch,
            previous_state=adopted.state if adopted else None,
            previous_epoch=adopted.epoch if adopted else None,
            source="replica",
            adopted_by=stored.source,
            fill_sequence=self._fill_sequence,
        )

    # Orders -----------------------------------------------------------------------------------

    async def place(self, request: OrderRequest, approval: Approval | None) -> Submission:
        """Place an order risk-safety approved, once.

        A known client order id with the same order returns that order, even after its
        approval lapsed or was revoked (the retry changes nothing); with any field different
        it raises OrderConflict. A new order needs an approval valid now and issued in the
        enforced epoch (else ApprovalError), and, unless it only reduces a position, trading
        open (else TradingClosed). All of it is decided under the desk's lock, so a state
        adopted while this request waited applies to it.

        Submissions that arrive while the desk is busy are decided together by the first of
        them to get the lock, in arrival order, and committed in one transaction (group
        commit); each caller gets its own outcome. The events go out through the outbox,
        whose relay the commit wakes once every answer of the batch is sent (the caller
        releases `Submission.hold` then): nothing on the way back waits for Redis, or shares
        the event loop with its publication.
        """
        ask = _Ask(
            request,
            approval,
            contextvars.copy_context(),
            asyncio.get_running_loop().create_future(),
            [],
        )
        self._asks.append(ask)
        async with self._exclusive():
            if not ask.future.done():
                asks, self._asks = self._asks, []
                await self._place_batch(asks)
        hold = ask.holds[0] if ask.holds else None
        try:
            submission = replace(ask.future.result(), hold=hold)
        except BaseException:
            if hold is not None:
                hold.release()
            raise
        if not submission.created:
            metrics.DUPLICATES.inc()
            self.log.info("duplicate order", client_order_id=request.client_order_id)
        return submission

    async def _place_batch(self, asks: list[_Ask]) -> None:
        """Decide `asks` in order and commit the new orders together; called under the lock.

        The lookup of the ids and the writes are one transaction. Every ask's future is
        settled, whatever happens (a failed write fails the asks it would have created, and
        rebuilds the venue from the database)."""
        hold = self.outbox.hold()
        hold.add(len(asks))
        for ask in asks:
            ask.holds.append(hold)
        try:
            staged: dict[ClientOrderId, _Staged] = {}
            repeats: list[tuple[_Ask, _Staged]] = []
            written: list[Recorded] = []
            try:
                with contextlib.ExitStack() as persisting:
                    async with self.store.placing() as placement:
                        known = await placement.get_many(
                            list(dict.fromkeys(a.request.client_order_id for a in asks))
                        )
                        for ask in asks:
                            self._decide(ask, known, staged, repeats)
                        if staged:
                            persisting.enter_context(self._persist_span(list(staged.values())))
                            written = await placement.record_new(
                                [st.item for st in staged.values()],
                                outbox=self.outbox,
                                last_fill_sequence=self._fill_sequence,
                                version=self._venue_lock is not None,
                            )
            except DatabaseError as exc:
                if staged:
                    self.log.exception(
                        "orders not persisted; rebuilding the venue from the database",
                        client_order_ids=list(staged),
                    )
                    try:
                        await self._restore()
                    except DatabaseError:
                        self.log.exception("venue rebuild failed; retrying on the next call")
                for ask in asks:
                    if not ask.future.done():
                        ask.future.set_exception(exc)
                return
            if staged:
                self._settle_staged(list(staged.values()), written)
            for ask, first in repeats:
                if first.ask.future.exception() is not None:
                    ask.future.set_exception(first.ask.future.exception())  # type: ignore[arg-type]
                else:
                    ask.future.set_result(Submission(first.ask.future.result().order, False))
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else RuntimeError("order not placed")
            for ask in asks:
                if not ask.future.done():
                    ask.future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            # The venue may hold orders of this batch that were never written.
            self.log.exception("order batch failed; rebuilding the venue from the database")
            try:
                await self._restore()
            except DatabaseError:
                self.log.exception("venue rebuild failed; retrying on the next call")
        finally:
            hold.release()

    def _decide(
        self,
        ask: _Ask,
        known: dict[str, StoredOrder],
        staged: dict[ClientOrderId, _Staged],
        repeats: list[tuple[_Ask, _Staged]],
    ) -> None:
        """One ask of a batch: answered now (a known id, a refusal), a repeat of an order
        staged earlier in the batch, or staged on the venue."""
        cid = ask.request.client_order_id
        try:
            if cid in known:
                ask.future.set_result(ask.context.run(self._again, ask, known[cid]))
            elif cid in staged:
                # The same order twice in one batch: the second is a retry of the first.
                first = staged[cid]
                ask.context.run(self._check_repeat, ask, first.ask.request)
                repeats.append((ask, first))
            else:
                staged[cid] = ask.context.run(self._stage, ask)
        except (OrderConflict, ApprovalError, TradingClosed) as exc:
            ask.future.set_exception(exc)

    def _again(self, ask: _Ask, existing: StoredOrder) -> Submission:
        """A known client order id: the same order again returns it, another is a conflict."""
        cid = ask.request.client_order_id
        conflicts = conflicting_fields(_order_of(existing).request, ask.request)
        if conflicts:
            metrics.CONFLICTS.inc()
            raise OrderConflict(cid, conflicts)
        # Still risk-safety's approval of this very order, if no longer a valid one.
        verify_approval(
            self.settings.approval_secret.get_secret_value(),
            ask.approval,
            order=ask.request,
            now_ms=now_ms(),
            check_expiry=False,
        )
        return Submission(existing, created=False)

    def _check_repeat(self, ask: _Ask, first: OrderRequest) -> None:
        conflicts = conflicting_fields(first, ask.request)
        if conflicts:
            metrics.CONFLICTS.inc()
            raise OrderConflict(ask.request.client_order_id, conflicts)
        verify_approval(
            self.settings.approval_secret.get_secret_value(),
            ask.approval,
            order=ask.request,
            now_ms=now_ms(),
            check_expiry=False,
        )

    def _stage(self, ask: _Ask) -> _Staged:
        """Verify a new order and submit it to the venue (in memory); run in the ask's context,
        so its span and events belong to the request's trace."""
        request, approval = ask.request, ask.approval
        verify_approval(
            self.settings.approval_secret.get_secret_value(),
            approval,
            order=request,
            now_ms=now_ms(),
            current_epoch=self.gate.epoch,
        )
        assert approval is not None
        self._require_open(request)
        with self._span("order.submit", _order_attributes(request)) as span:
            report = self.venue.submit(request, now_ms())
            traceparent = current_traceparent()
            events, fills = self._announce(report, link=None, submitted=request)
            span.set_attribute("order.status", report.order.status.value)
            if report.reason:
                span.set_attribute("reason", report.reason)
        item = Report(
            report,
            tuple(events),
            self.venue.reserved_cash_of(request.client_order_id),
            traceparent,
            approval.decision_id,
        )
        return _Staged(ask, item, fills)

    def _persist_span(self, staged: list[_Staged]) -> contextlib.AbstractContextManager[Any]:
        """The span of one batch's write and commit, linked to each order's span."""
        links = [
            link
            for st in staged
            for link in links_from_traceparent(st.item.traceparent, {"link.reason": "order"})
        ]
        return self._span("order.persist", {"order.batch_size": len(staged)}, links)

    def _span(
        self, name: str, attributes: dict[str, Any], links: list[Any] | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """A span of the desk's own (`lean_span`): an order takes three of them
        (`order.submit`, `order.fill`, `order.persist`)."""
        return lean_span(self._tracer, name, attributes, links=links)

    def _settle_staged(self, staged: list[_Staged], recorded: list[Recorded]) -> None:
        """After the commit: bookkeeping, and each staged ask's answer."""
        if recorded:
            self._wrote(recorded[-1])
        for st, written in zip(staged, recorded, strict=True):
            if written.fill_sequence is not None:
                self._fill_sequence = max(self._fill_sequence, written.fill_sequence)
            assert written.order is not None
            st.ask.context.run(self._placed, st)
            st.ask.future.set_result(Submission(written.order, created=True))
        self._update_gauges()

    def _placed(self, st: _Staged) -> None:
        """What follows a committed submission: bookkeeping, metrics and logs (in the order's
        own `order.submit` span, so its lines sit on that span)."""
        with use_trace_context(st.item.traceparent):
            self._placed_in_span(st)

    def _placed_in_span(self, st: _Staged) -> None:
        report, request = st.item.report, st.ask.request
        cid = request.client_order_id
        for record in report.events:
            metrics.ORDERS.labels(record.to_status.value).inc()
        self._received.add(report.order.created_ms, cid)
        if report.order.status.is_open:
            self._accepted_at[cid] = time.time()
            self._traceparents[cid] = st.item.traceparent
        else:
            self.venue.forget(cid)
        self._log_fills(st.fills, report.order)
        self.log.info(
            "order placed",
            client_order_id=cid,
            status=report.order.status.value,
            symbol=request.symbol,
            side=request.side.value,
            quantity=request.quantity,
            order_type=request.order_type.value,
            reason=report.reason,
        )

    def _require_open(self, request: OrderRequest) -> None:
        if request_reduces(request):
            return
        now_s = time.monotonic()
        blocker = self.gate.blocker(now_s)
        if blocker is not None:
            label = self.gate.refusal_label(now_s)
            metrics.RISK_REFUSALS.labels(label).inc()
            raise TradingClosed(label, blocker)

    async def cancel(self, client_order_id: str) -> StoredOrder:
        """Cancel one working order and release its reservation."""
        cid = ClientOrderId(client_order_id)
        async with self._exclusive():
            stored = await self.store.get(cid)
            if stored is None:
                raise OrderNotFound(client_order_id)
            if stored.record.status not in (
                OrderStatus.ACCEPTED.value,
                OrderStatus.PARTIALLY_FILLED.value,
            ):
                raise OrderNotOpen(
                    f"order {cid} is {stored.record.status}; only open orders cancel"
                )
            await self._cancel(cid)
            stored = await self.store.get(cid)
        await self.outbox.publish_pending()
        assert stored is not None
        return stored

    async def cancel_all(self, symbol: str | None = None) -> list[StoredOrder]:
        """Cancel every working order (of one symbol, if given)."""
        async with self._exclusive():
            cids = [o.client_order_id for o in self.venue.open_orders(_symbol(symbol))]
            for cid in cids:
                await self._cancel(cid)
            result = [await self.store.get(cid) for cid in cids]
        await self.outbox.publish_pending()
        return [o for o in result if o is not None]

    async def _cancel(self, cid: ClientOrderId, reason: str | None = None) -> None:
        with self._span("order.cancel", {"client_order_id": cid}):
            report = self.venue.cancel(cid, now_ms())
            if reason is not None:
                report = _with_cancel_reason(report, reason)
            await self._settle(report, link=None)
            self._forget(cid)
            self.log.info(
                "order canceled",
                client_order_id=cid,
                symbol=report.order.symbol,
                reason=reason or "canceled by request",
            )

    # Trading state ----------------------------------------------------------------------------

    async def update_state(
        self, signed: SignedState, *, source: str, reason: str = ""
    ) -> StateUpdate:
        """Take a signed trading state from risk-safety (pushed or polled).

        A higher epoch than the one enforced is adopted; the same epoch and state renews the
        lease; anything else is ignored. While the enforced state is not ACTIVE, every working
        order that could increase exposure is canceled (through the outbox, like any cancel).
        Raises InvalidState if the signature does not verify.
        """
        if not verify_state(self.settings.approval_secret.get_secret_value(), signed):
            metrics.RISK_STATE_UPDATES.labels(source, "invalid").inc()
            raise InvalidState(
                "state token is invalid: it was not issued by risk-safety for this state and epoch"
            )
        self.gate.announce(signed)  # closes trading before the lock is ours
        adopted = self.gate.adopted
        # Renewing the lease of the ACTIVE state enforced changes nothing shared.
        renewal = (
            adopted is not None
            and adopted.state == ACTIVE
            and (signed.state, signed.epoch) == (adopted.state, adopted.epoch)
        )
        async with self._lock if renewal else self._exclusive():
            now_s = time.monotonic()
            outcome = self.gate.consider(signed, now_s=now_s)
            previous = self.gate.adopted
            if outcome is Outcome.ADOPTED:
                self.gate.adopt(
                    Adopted(
                        state=signed.state,
                        epoch=signed.epoch,
                        source=source,
                        reason=reason,
                        adopted_at_ms=now_ms(),
                        fill_sequence=self._fill_sequence,
                    ),
                    now_s=now_s,
                )
                if self._venue_lock is not None:
                    await self._share_state(signed, source, reason)
                self._watch_state_label(signed.state)  # also a state outside the usual three
                self.log.warning(
                    "trading state adopted",
                    state=signed.state,
                    epoch=signed.epoch,
                    previous_state=previous.state if previous else None,
                    previous_epoch=previous.epoch if previous else None,
                    source=source,
                    reason=reason,
                    fill_sequence=self._fill_sequence,
                )
            elif outcome is not Outcome.CURRENT:
                # A lower epoch is expected between a push and risk-safety's own commit.
                self.log.log(
                    logging.INFO if outcome is Outcome.STALE else logging.WARNING,
                    "trading state ignored",
                    outcome=outcome.value,
                    state=signed.state,
                    epoch=signed.epoch,
                    enforced_state=previous.state if previous else None,
                    enforced_epoch=previous.epoch if previous else None,
                    source=source,
                )
            adopted = self.gate.adopted
            assert adopted is not None
            canceled: list[str] = []
            if outcome in (Outcome.ADOPTED, Outcome.CURRENT) and adopted.state != ACTIVE:
                canceled = await self._cancel_increasing(adopted)
        metrics.RISK_STATE_UPDATES.labels(source, outcome.value).inc()
        if canceled:
            await self.outbox.publish_pending()
        return StateUpdate(outcome, adopted, tuple(canceled))

    async def _share_state(self, signed: SignedState, source: str, reason: str) -> None:
        try:
            await self.store.save_risk_state(
                signed, source=source, reason=reason, verified_at_ms=now_ms()
            )
        except DatabaseError:
            # Enforced here all the same; the other replicas learn it from their own polls.
            self.log.exception("trading state not shared", state=signed.state, epoch=signed.epoch)

    async def _cancel_increasing(self, adopted: Adopted) -> list[str]:
        """Cancel every working order that could increase exposure; the canceled ids."""
        reason = f"trading state {adopted.state} (epoch {adopted.epoch})"
        canceled: list[str] = []
        for order in [o for o in self.venue.open_orders() if _held_while_closed(o)]:
            try:
                await self._cancel(order.client_order_id, reason)
            except DatabaseError:
                # The order stays working but held (never matched while the state holds); the
                # next verified state cancels it again.
                self.log.exception(
                    "cancel on halt not persisted", client_order_id=order.client_order_id
                )
                break
            metrics.RISK_CANCELS.inc()
            canceled.append(order.client_order_id)
        return canceled

    async def poll_risk_state(self, _resources: Resources | None = None) -> None:
        """Poll risk-safety's GET /state every `risk_poll_ms`, adopting what it vouches for.

        The poll is the lease: push alone could be lost, and without a verified state for
        `risk_lease_ms` the desk accepts and fills only reduce-only orders.
        """
        url = f"{self.risk_safety_url}/state"
        interval_s = self.settings.risk_poll_ms / 1000
        failing: str | None = None
        http = self._resources.http
        if http is None:
            raise RuntimeError("the service has no HTTP client yet")
        # Four polls a second for the process's life: on a connection of the poll's own, one
        # write per request and no httpx machinery (the same span, headers and log line).
        client = RiskSafetyClient(http, self.risk_safety_url, direct=True)
        try:
            while True:
                started = time.monotonic()
                error = await self._poll_once(client)
                if error is not None and failing is None:
                    self.log.warning("trading state poll failed", url=url, error=error)
                elif error is None and failing is not None:
                    self.log.info("trading state poll recovered", url=url, after_error=failing)
                failing = error
                await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
        finally:
            client.close()

    async def _poll_once(self, client: RiskSafetyClient) -> str | None:
        """One poll; None if it gave a verified state, else what went wrong."""
        try:
            signed = await client.signed_state(timeout_s=self.settings.risk_poll_timeout_ms / 1000)
        except MalformedAnswer as exc:
            return self._poll_failed("unverified", exc.detail)
        except (Refused, UpstreamError) as exc:
            kind = "unreachable" if exc.status is None else f"http_{exc.status}"
            return self._poll_failed(kind, exc.detail)
        try:
            await self.update_state(signed, source="poll", reason="polled")
        except InvalidState as exc:
            return self._poll_failed("invalid", str(exc))
        return None

    @staticmethod
    def _poll_failed(kind: str, message: str) -> str:
        metrics.RISK_POLL_FAILURES.labels(kind).inc()
        return f"{kind}: {message}"

    def _enforced_label(self) -> str:
        return self.gate.refusal_label(time.monotonic())

    def _install_risk_gauges(self) -> None:
        # Read at scrape time: a lapsing lease changes them without any event.
        for state in ("ACTIVE", "REDUCING", "HALTED", "UNKNOWN"):
            self._watch_state_label(state)
        metrics.RISK_EPOCH.set_function(
            lambda: float(self.gate.epoch) if self.gate.epoch is not None else -1.0
        )
        metrics.RISK_LEASE_AGE.set_function(self._lease_age_or_inf)

    def _watch_state_label(self, state: str) -> None:
        metrics.RISK_STATE.labels(state).set_function(functools.partial(self._is_enforced, state))

    def _is_enforced(self, state: str) -> float:
        return 1.0 if self._enforced_label() == state else 0.0

    def _lease_age_or_inf(self) -> float:
        age = self.gate.lease_age_s(time.monotonic())
        return math.inf if age is None else age

    async def exposure(self, since_ms: int) -> Exposure:
        """Holdings, working orders, the fill sequence, the enforced state, and every client
        order id received since `since_ms`, as of one instant."""
        async with self._exclusive():
            # With a shared venue the other replicas receive orders too: ask the database.
            received = None if self._venue_lock is not None else self._received.since(since_ms)
            if received is None:
                received = await self.store.client_order_ids_since(since_ms)
            venue = self.venue
            holdings = {s: venue.holding(s) for s in self.symbols() if venue.holding(s) != 0}
            return Exposure(
                as_of_ms=now_ms(),
                fill_sequence=self._fill_sequence,
                risk_state=self.gate.state,
                risk_epoch=self.gate.epoch,
                holdings=holdings,
                working=venue.open_orders(),
                client_order_ids_since=received,
            )

    # Market data ------------------------------------------------------------------------------

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Keep the symbol's quote and fill the working orders it crosses."""
        tick = event.data
        try:
            quote = Quote(
                Symbol(tick.symbol), tick.bid, tick.ask, tick.last, tick.volume, tick.ts_ms
            )
        except ValueError as exc:
            metrics.BAD_TICKS.labels(tick.symbol).inc()
            self.log.warning("unusable tick ignored", symbol=tick.symbol, error=str(exc))
            return
        async with self._exclusive():
            if self._venue_lock is not None and not await self.store.save_quote(quote):
                # Another replica matched a newer tick already: this one would move the
                # venue back in time.
                metrics.TICKS_OUT_OF_ORDER.labels(quote.symbol).inc()
                return
            self._quotes[quote.symbol] = quote
            # While trading is not open, a tick may still fill reduce-only exits, nothing else.
            closed = self.gate.blocker(time.monotonic()) is not None
            reports = self.venue.on_quote(quote, hold=_held_while_closed if closed else None)
            for report in reports:
                cid = report.order.client_order_id
                await self._settle(report, link=self._traceparents.get(cid))
                if not report.order.status.is_open:
                    self._forget(cid)
        if reports:
            await self.outbox.publish_pending()

    async def refresh(self) -> None:
        """With a shared venue, take in what the other replicas did (a read is then current)."""
        if self._venue_lock is not None:
            async with self._exclusive():
                pass

    def quotes(self) -> dict[Symbol, Quote]:
        """The latest quote of every symbol seen."""
        return dict(self._quotes)

    def symbols(self) -> list[Symbol]:
        """Every symbol quoted, traded or with a working order, sorted."""
        working = {o.symbol for o in self.venue.open_orders()}
        return sorted(self._traded | working | set(self._quotes))

    # Persistence and publication -------------------------------------------------------------

    async def _settle(self, report: VenueReport, *, link: str | None) -> None:
        """Persist one report (a tick's fills, a cancel) with the events announcing it, in one
        transaction."""
        events, fills = self._announce(report, link=link, submitted=None)
        # Every transition row carries the trace that caused it: the tick's or the request's.
        await self._persist(report, events, traceparent=current_traceparent())
        self._log_fills(fills, report.order)

    def _announce(
        self, report: VenueReport, *, link: str | None, submitted: OrderRequest | None
    ) -> tuple[list[Event[Any]], list[tuple[Fill, Any]]]:
        """The events announcing one report, each fill under its own `order.fill` span."""
        order = report.order
        events = self.outbox.events(_order_events(report, submitted))
        fill_records = [r for r in report.events if r.kind is OrderEventKind.FILL]
        fills = list(zip(report.fills, fill_records, strict=True))
        for fill, record in fills:
            leaves = order.quantity - record.filled_quantity
            # The fill's span is the parent of its order.filled event; a resting order's fill
            # happens in the tick's trace and links to the order's.
            with self._span(
                "order.fill",
                {**fill.attributes(), "leaves_quantity": str(leaves), "resting": link is not None},
                links_from_traceparent(link, {"link.reason": "order"}),
            ):
                events.append(self.outbox.event(OrderFilled.of(fill, leaves)))
        return events, fills

    def _log_fills(self, fills: list[tuple[Fill, Any]], order: Order) -> None:
        for fill, record in fills:
            self._observe_fill(fill, order)
            self.log.info(
                "order filled",
                **fill.attributes(),
                leaves_quantity=order.quantity - record.filled_quantity,
            )

    async def _persist(
        self, report: VenueReport, events: list[Event[Any]], *, traceparent: str | None
    ) -> None:
        try:
            recorded = await self.store.record(
                report,
                outbox=self.outbox,
                events=events,
                reserved_cash=self.venue.reserved_cash_of(report.order.client_order_id),
                traceparent=traceparent,
                # The desk alone writes fills, under its lock, and a failed write rebuilds it
                # from the database: its sequence is the table's.
                last_fill_sequence=self._fill_sequence,
            )
        except DatabaseError:
            self.log.exception(
                "order not persisted; rebuilding the venue from the database",
                client_order_id=report.order.client_order_id,
            )
            try:
                await self._restore()
            except DatabaseError:
                self.log.exception("venue rebuild failed; retrying on the next call")
            raise
        self._wrote(recorded)
        if recorded.fill_sequence is not None:
            self._fill_sequence = max(self._fill_sequence, recorded.fill_sequence)
        for record in report.events:
            metrics.ORDERS.labels(record.to_status.value).inc()
        self._update_gauges()

    def _wrote(self, recorded: Recorded) -> None:
        # Written under the lock across replicas, on top of everything caught up: the newest
        # transition now is this replica's own.
        if self._venue_lock is not None:
            self._seen_version = max(self._seen_version, recorded.last_event_id)

    def _observe_fill(self, fill: Fill, order: Order) -> None:
        self._traded.add(fill.symbol)
        metrics.FILLS.labels(fill.symbol, fill.side.value, fill.liquidity.value).inc()
        metrics.FILLED_NOTIONAL.inc(float(fill.notional))
        metrics.FEES.inc(float(fill.fee))
        accepted = self._accepted_at.get(order.client_order_id)
        metrics.ORDER_TO_FILL.observe(max(0.0, time.time() - accepted) if accepted else 0.0)

    def _forget(self, cid: ClientOrderId) -> None:
        self.venue.forget(cid)
        self._accepted_at.pop(cid, None)
        self._traceparents.pop(cid, None)

    def _update_gauges(self) -> None:
        metrics.OPEN_ORDERS.set(len(self.venue.open_orders()))
        metrics.RESERVED_CASH.set(float(self.venue.reserved_cash))
        metrics.AVAILABLE_CASH.set(float(self.venue.available_cash))


def conflicting_fields(known: OrderRequest, again: OrderRequest) -> list[str]:
    """The fields in which `again` differs from the order `known`, canonically compared."""
    return [
        name
        for name, a, b in zip(
            ORDER_FIELD_NAMES, order_fields(known), order_fields(again), strict=True
        )
        if a != b
    ]


def _with_cancel_reason(report: VenueReport, reason: str) -> VenueReport:
    events = tuple(
        replace(e, reason=reason) if e.kind is OrderEventKind.CANCEL else e for e in report.events
    )
    return replace(report, events=events, reason=reason)


def _order_of(stored: StoredOrder) -> Order:
    row = stored.record
    return Order(
        client_order_id=ClientOrderId(row.client_order_id),
        symbol=Symbol(row.symbol),
        side=Side(row.side),
        order_type=OrderType(row.order_type),
        quantity=row.quantity,
        limit_price=row.limit_price,
        time_in_force=TimeInForce(row.time_in_force),
        reduce_only=row.reduce_only,
        status=OrderStatus(row.status),
        filled_quantity=row.filled_quantity,
        average_fill_price=row.average_fill_price,
        created_ms=int(row.created_at.timestamp() * 1000),
        updated_ms=int(row.updated_at.timestamp() * 1000),
        sequence=row.sequence,
    )


def _symbol(symbol: str | None) -> Symbol | None:
    return Symbol(symbol) if symbol else None


def _order_attributes(request: OrderRequest) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "client_order_id": request.client_order_id,
        "symbol": request.symbol,
        "side": request.side.value,
        "quantity": str(request.quantity),
        "order_type": request.order_type.value,
        "reduce_only": request.reduce_only,
    }
    if request.limit_price is not None:
        attributes["limit_price"] = str(request.limit_price)
    return attributes


def _order_events(report: VenueReport, submitted: OrderRequest | None) -> list[EventData]:
    """The order.* events announcing one report's transitions (fills are announced apart)."""
    order = report.order
    events: list[EventData] = []
    for record in report.events:
        if record.kind is OrderEventKind.CREATED and submitted is not None:
            events.append(OrderSubmitted.of(submitted))
        elif record.kind is OrderEventKind.ACCEPT:
            events.append(OrderAccepted(client_order_id=order.client_order_id, symbol=order.symbol))
        elif record.kind is OrderEventKind.REJECT:
            events.append(
                OrderRejected(
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    reason=record.reason,
                )
            )
        elif record.kind is OrderEventKind.CANCEL:
            events.append(
                OrderCanceled(
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    filled_quantity=record.filled_quantity,
                    reason=record.reason,
                )
            )
    return events
