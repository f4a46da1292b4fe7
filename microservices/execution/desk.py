"""The order desk: one paper venue, serialised; each change and its events commit together."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from backend.infra.db import DatabaseError
from backend.infra.db.models import FillRecord
from backend.infra.eventbus import (
    Event,
    EventData,
    MarketTick,
    OrderAccepted,
    OrderCanceled,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
)
from backend.infra.observability import (
    BoundLogger,
    SpanKind,
    current_traceparent,
    links_from_traceparent,
)
from backend.infra.outbox import Outbox
from backend.infra.service import Resources
from backend.trading.orders import Order, OrderEventKind, OrderStatus
from backend.trading.types import (
    ClientOrderId,
    Fill,
    FillId,
    Liquidity,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    Symbol,
    TimeInForce,
)
from backend.trading.venue import PaperVenue, VenueReport, WorkingOrder

from . import metrics
from .settings import ExecutionSettings
from .store import OrderStore, StoredOrder


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class NoQuote(LookupError):
    """A market order arrived before any quote of its symbol."""


class OrderNotFound(LookupError):
    """No order has this client order id."""


class OrderNotOpen(ValueError):
    """The order is already filled, canceled, rejected or expired."""


@dataclass(frozen=True, slots=True)
class Submission:
    """The outcome of POST /orders: the order as persisted and whether this call created it."""

    order: StoredOrder
    created: bool


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
        self._config = settings.venue_config()
        self.venue = PaperVenue(cash=settings.initial_cash, config=self._config, seed=settings.seed)
        self._quotes: dict[Symbol, Quote] = {}
        self._accepted_at: dict[ClientOrderId, float] = {}
        self._traceparents: dict[ClientOrderId, str | None] = {}
        self._traded: set[Symbol] = set()
        self._outbox: Outbox | None = None

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
        async with self._lock:
            await self._restore()

    async def run_outbox_relay(self, _resources: Resources | None = None) -> None:
        """Publish events the request path could not (Redis down, an earlier process's)."""
        await self.outbox.run_relay()

    async def _restore(self) -> None:
        fills, open_orders = await self.store.load_for_restore()
        self.venue = PaperVenue.restore(
            initial_cash=self.settings.initial_cash,
            fills=[_fill_of(f) for f in fills],
            open_orders=[WorkingOrder(_order_of(o), o.record.reserved_cash) for o in open_orders],
            quotes=self._quotes.values(),
            config=self._config,
            seed=self.settings.seed,
        )
        self._traded = {Symbol(f.symbol) for f in fills}
        self._accepted_at = {
            ClientOrderId(o.record.client_order_id): o.record.created_at.timestamp()
            for o in open_orders
        }
        self._traceparents = {
            ClientOrderId(o.record.client_order_id): o.record.trace_context for o in open_orders
        }
        self._update_gauges()
        self.log.info(
            "venue restored",
            open_orders=len(open_orders),
            fills=len(fills),
            cash=self.venue.cash,
            reserved_cash=self.venue.reserved_cash,
        )

    # Orders -----------------------------------------------------------------------------------

    async def submit(self, request: OrderRequest, risk_decision_id: str) -> Submission:
        """Place an order once: a known client order id returns the existing order unchanged."""
        cid = request.client_order_id
        async with self._lock:
            existing = await self.store.get(cid)
            stored = existing or await self._submit(request, risk_decision_id)
        # Also for a duplicate: a retry is a good moment to publish what an outage held back.
        await self.outbox.publish_pending()
        if existing is not None:
            metrics.DUPLICATES.inc()
            self.log.info("duplicate order", client_order_id=cid)
            return Submission(existing, created=False)
        return Submission(stored, created=True)

    async def _submit(self, request: OrderRequest, risk_decision_id: str) -> StoredOrder:
        cid = request.client_order_id
        with self._tracer.start_as_current_span(
            "order.submit", kind=SpanKind.INTERNAL, attributes=_order_attributes(request)
        ) as span:
            report = self.venue.submit(request, now_ms())
            traceparent = current_traceparent()
            await self._settle(
                report,
                submitted=request,
                link=None,
                traceparent=traceparent,
                decision=risk_decision_id,
            )
            span.set_attribute("order.status", report.order.status.value)
            if report.reason:
                span.set_attribute("reason", report.reason)
            if report.order.status.is_open:
                self._accepted_at[cid] = time.time()
                self._traceparents[cid] = traceparent
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
        stored = await self.store.get(cid)
        assert stored is not None
        return stored

    async def cancel(self, client_order_id: str) -> StoredOrder:
        """Cancel one working order and release its reservation."""
        cid = ClientOrderId(client_order_id)
        async with self._lock:
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
        async with self._lock:
            cids = [o.client_order_id for o in self.venue.open_orders(_symbol(symbol))]
            for cid in cids:
                await self._cancel(cid)
            result = [await self.store.get(cid) for cid in cids]
        await self.outbox.publish_pending()
        return [o for o in result if o is not None]

    async def _cancel(self, cid: ClientOrderId) -> None:
        with self._tracer.start_as_current_span(
            "order.cancel", kind=SpanKind.INTERNAL, attributes={"client_order_id": cid}
        ):
            report = self.venue.cancel(cid, now_ms())
            await self._settle(report, link=None)
            self._forget(cid)
            self.log.info("order canceled", client_order_id=cid, symbol=report.order.symbol)

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
        async with self._lock:
            self._quotes[quote.symbol] = quote
            reports = self.venue.on_quote(quote)
            for report in reports:
                cid = report.order.client_order_id
                await self._settle(report, link=self._traceparents.get(cid))
                if not report.order.status.is_open:
                    self._forget(cid)
        if reports:
            await self.outbox.publish_pending()

    def quotes(self) -> dict[Symbol, Quote]:
        """The latest quote of every symbol seen."""
        return dict(self._quotes)

    def symbols(self) -> list[Symbol]:
        """Every symbol quoted, traded or with a working order, sorted."""
        working = {o.symbol for o in self.venue.open_orders()}
        return sorted(self._traded | working | set(self._quotes))

    # Persistence and publication -------------------------------------------------------------

    async def _settle(
        self,
        report: VenueReport,
        *,
        link: str | None,
        submitted: OrderRequest | None = None,
        traceparent: str | None = None,
        decision: str | None = None,
    ) -> None:
        """Persist one report with the events announcing it, in one transaction."""
        order = report.order
        events = [self.outbox.event(data) for data in _order_events(report, submitted)]
        fill_records = [r for r in report.events if r.kind is OrderEventKind.FILL]
        fills = list(zip(report.fills, fill_records, strict=True))
        for fill, record in fills:
            leaves = order.quantity - record.filled_quantity
            # The fill's span is the parent of its order.filled event; a resting order's fill
            # happens in the tick's trace and links to the order's.
            with self._tracer.start_as_current_span(
                "order.fill",
                kind=SpanKind.INTERNAL,
                links=links_from_traceparent(link, {"link.reason": "order"}),
                attributes={
                    **_fill_attributes(fill),
                    "leaves_quantity": str(leaves),
                    "resting": link is not None,
                },
            ):
                events.append(self.outbox.event(_filled_event(fill, leaves)))
        # Every transition row carries the trace that caused it: the request's or the tick's.
        traceparent = traceparent or current_traceparent()
        await self._persist(report, events, traceparent=traceparent, decision=decision)
        for fill, record in fills:
            self._observe_fill(fill, order)
            self.log.info(
                "order filled",
                client_order_id=fill.client_order_id,
                fill_id=fill.fill_id,
                symbol=fill.symbol,
                side=fill.side.value,
                quantity=fill.quantity,
                price=fill.price,
                fee=fill.fee,
                liquidity=fill.liquidity.value,
                leaves_quantity=order.quantity - record.filled_quantity,
            )

    async def _persist(
        self,
        report: VenueReport,
        events: list[Event[Any]],
        *,
        traceparent: str | None = None,
        decision: str | None = None,
    ) -> None:
        try:
            await self.store.record(
                report,
                outbox=self.outbox,
                events=events,
                reserved_cash=self.venue.reserved_cash_of(report.order.client_order_id),
                traceparent=traceparent,
                risk_decision_id=decision,
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
        for record in report.events:
            metrics.ORDERS.labels(record.to_status.value).inc()
        self._update_gauges()

    def _observe_fill(self, fill: Fill, order: Order) -> None:
        self._traded.add(fill.symbol)
        metrics.FILLS.labels(fill.symbol, fill.side.value, fill.liquidity.value).inc()
        metrics.FILLED_NOTIONAL.inc(float(fill.notional))
        metrics.FEES.inc(float(fill.fee))
        accepted = self._accepted_at.get(order.client_order_id)
        metrics.ORDER_TO_FILL.observe(max(0.0, time.time() - accepted) if accepted else 0.0)

    def _forget(self, cid: ClientOrderId) -> None:
        self._accepted_at.pop(cid, None)
        self._traceparents.pop(cid, None)

    def _update_gauges(self) -> None:
        metrics.OPEN_ORDERS.set(len(self.venue.open_orders()))
        metrics.RESERVED_CASH.set(float(self.venue.reserved_cash))
        metrics.AVAILABLE_CASH.set(float(self.venue.available_cash))


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


def _fill_attributes(fill: Fill) -> dict[str, Any]:
    return {
        "client_order_id": fill.client_order_id,
        "fill_id": fill.fill_id,
        "symbol": fill.symbol,
        "side": fill.side.value,
        "quantity": str(fill.quantity),
        "price": str(fill.price),
        "fee": str(fill.fee),
        "liquidity": fill.liquidity.value,
    }


def _submitted_event(request: OrderRequest) -> OrderSubmitted:
    return OrderSubmitted(
        client_order_id=request.client_order_id,
        symbol=request.symbol,
        side=request.side.value,
        order_type=request.order_type.value,
        quantity=request.quantity,
        limit_price=request.limit_price,
        time_in_force=request.time_in_force.value,
        reduce_only=request.reduce_only,
    )


def _order_events(report: VenueReport, submitted: OrderRequest | None) -> list[EventData]:
    """The order.* events announcing one report's transitions (fills are announced apart)."""
    order = report.order
    events: list[EventData] = []
    for record in report.events:
        if record.kind is OrderEventKind.CREATED and submitted is not None:
            events.append(_submitted_event(submitted))
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


def _filled_event(fill: Fill, leaves: Decimal) -> OrderFilled:
    return OrderFilled(
        fill_id=fill.fill_id,
        client_order_id=fill.client_order_id,
        symbol=fill.symbol,
        side=fill.side.value,
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.fee,
        liquidity=fill.liquidity.value,
        leaves_quantity=leaves,
        ts_ms=fill.ts_ms,
    )


def _fill_of(row: FillRecord) -> Fill:
    return Fill(
        FillId(row.fill_id),
        ClientOrderId(row.client_order_id),
        Symbol(row.symbol),
        Side(row.side),
        row.quantity,
        row.price,
        row.fee,
        Liquidity(row.liquidity),
        int(row.filled_at.timestamp() * 1000),
    )
