"""The portfolio book: the domain Portfolio kept in step with the ledger, marks and equity peaks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from backend.infra.db import DatabaseError, IntegrityViolationError
from backend.infra.eventbus import Event, MarketTick, OrderFilled, PositionUpdated
from backend.infra.observability import BoundLogger, SpanKind
from backend.infra.service import Resources
from backend.trading.portfolio import Portfolio
from backend.trading.portfolio import Position as DomainPosition
from backend.trading.types import ClientOrderId, Fill, FillId, Liquidity, Side, Symbol

from . import metrics
from .settings import PortfolioSettings
from .store import LedgerEntry, LedgerStore, venue_order

ZERO = Decimal(0)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _day_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The portfolio at one instant, as GET /portfolio reports it."""

    as_of_ms: int
    portfolio: Portfolio
    peak_equity: Decimal
    day_start_equity: Decimal


class PortfolioBook:
    """Books fills once, marks positions to ticks and tracks peak and day-start equity.

    Memory follows the ledger: a fill is applied in memory, then written with its position in
    one transaction; if the write fails, memory is rebuilt from the ledger and the event is
    retried by the bus. `as_of_ms` is the publish time of the latest event applied (or the
    rebuild time), so a consumer that falls behind shows up as a stale portfolio.

    Average cost depends on the order fills are applied in, and the bus may deliver a fill
    after later ones (a retried event). Fills are therefore applied in the venue's order: a
    fill whose sequence is below one already booked for its symbol is booked with the portfolio
    replayed in that order, so the result is what in-order delivery would have given.
    """

    def __init__(
        self,
        settings: PortfolioSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        self.settings = settings
        self.store = LedgerStore(resources)
        self.log = logger
        self._resources = resources
        self._tracer = tracer
        self._lock = asyncio.Lock()
        self.portfolio = Portfolio(settings.initial_cash)
        # The venue sequence of every booked fill that has one, and the highest per symbol.
        self._sequences: dict[FillId, int] = {}
        self._last_sequence: dict[Symbol, int] = {}
        self._peak = settings.initial_cash
        self._day = _day_start(datetime.now(UTC))
        self._day_start_equity = settings.initial_cash
        self._as_of_ms = now_ms()

    # Start-up ---------------------------------------------------------------------------------

    async def restore(self, _resources: Resources | None = None) -> None:
        """Rebuild positions and cash from the ledger, peak and day start from the curve."""
        async with self._lock:
            await self._restore()

    async def _restore(self) -> None:
        marks = self._marks()
        fills = await self.store.ledger()
        self._replay(fills)
        # Marks seen before a rebuild are still the latest prices known.
        self.portfolio.set_marks(marks)
        equity = self.portfolio.equity
        peak = await self.store.peak_equity()
        self._peak = max(self.settings.initial_cash, equity, peak or ZERO)
        self._day = _day_start(datetime.now(UTC))
        day_start = await self.store.equity_at_or_after(self._day)
        self._day_start_equity = day_start if day_start is not None else equity
        self._as_of_ms = max(self._as_of_ms, now_ms())
        self._update_gauges()
        self.log.info("portfolio rebuilt from the ledger", fills=len(fills), equity=equity)

    # Events -----------------------------------------------------------------------------------

    async def on_fill(self, event: Event[OrderFilled]) -> None:
        """Book a fill once (by fill id) in the venue's order, then publish the symbol's
        position."""
        data = event.data
        fill = Fill(
            FillId(data.fill_id),
            ClientOrderId(data.client_order_id),
            Symbol(data.symbol),
            Side(data.side),
            data.quantity,
            data.price,
            data.fee,
            Liquidity(data.liquidity),
            data.ts_ms,
        )
        async with self._lock:
            with self._tracer.start_as_current_span(
                "position.update",
                kind=SpanKind.INTERNAL,
                attributes={
                    "client_order_id": fill.client_order_id,
                    "fill_id": fill.fill_id,
                    "symbol": fill.symbol,
                    "side": fill.side.value,
                    "quantity": str(fill.quantity),
                    "price": str(fill.price),
                },
            ) as span:
                booked = await self._book(fill, data.sequence)
                span.set_attribute("duplicate", not booked)
                if not booked:
                    return
                self._as_of_ms = max(self._as_of_ms, _event_ms(event))
                position = self.portfolio.position(fill.symbol)
                mark = self.portfolio.mark(fill.symbol)
                unrealized = position.unrealized_pnl(mark) if mark else ZERO
                span.set_attribute("position.quantity", str(position.quantity))
                span.set_attribute("position.realized_pnl", str(position.realized_pnl))
                self.log.info(
                    "position updated",
                    client_order_id=fill.client_order_id,
                    fill_id=fill.fill_id,
                    symbol=fill.symbol,
                    side=fill.side.value,
                    quantity=fill.quantity,
                    price=fill.price,
                    position=position.quantity,
                    average_price=position.average_price,
                    realized_pnl=position.realized_pnl,
                )
                await self._resources.publisher.publish(
                    PositionUpdated(
                        symbol=fill.symbol,
                        quantity=position.quantity,
                        average_price=position.average_price,
                        realized_pnl=position.realized_pnl,
                        unrealized_pnl=unrealized,
                        mark_price=mark,
                    )
                )

    async def _book(self, fill: Fill, sequence: int | None) -> bool:
        last = self._last_sequence.get(fill.symbol)
        late = sequence is not None and last is not None and sequence < last
        marks = self._marks() if late else {}
        outcome = self.portfolio.apply_fill(fill)
        if outcome.duplicate:
            metrics.DUPLICATE_FILLS.inc()
            self.log.info("duplicate fill ignored", fill_id=fill.fill_id)
            return False
        position = outcome.position
        if sequence is not None:
            self._sequences[fill.fill_id] = sequence
        if late:
            metrics.OUT_OF_ORDER_FILLS.inc()
            self.log.warning(
                "fill arrived after later fills; replaying the ledger in venue order",
                fill_id=fill.fill_id,
                symbol=fill.symbol,
                sequence=sequence,
                last_sequence=last,
            )
            # What in-order booking gives: the ledger, this fill included, in venue order. The
            # marks are the ones from before this fill, whose price is older than the last fill's.
            self._replay(self._entries())
            self.portfolio.set_marks(marks)
            position = self.portfolio.position(fill.symbol)
        elif sequence is not None:
            self._last_sequence[fill.symbol] = sequence
        try:
            await self.store.book(fill, sequence, position)
        except IntegrityViolationError:
            # Booked already (by another replica, or before memory was lost): the ledger wins.
            metrics.DUPLICATE_FILLS.inc()
            self.log.info("fill already in the ledger", fill_id=fill.fill_id)
            await self._restore()
            return False
        except DatabaseError:
            self.log.exception("fill not booked; rebuilding from the ledger", fill_id=fill.fill_id)
            try:
                await self._restore()
            except DatabaseError:
                self.log.exception("rebuild failed; retrying with the next event")
            raise
        metrics.FILLS_BOOKED.labels(fill.symbol).inc()
        self._after_change()
        return True

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Mark the symbol at the tick's mid price."""
        tick = event.data
        if tick.bid <= ZERO or tick.ask < tick.bid:
            return
        async with self._lock:
            self.portfolio.set_mark(Symbol(tick.symbol), (tick.bid + tick.ask) / 2)
            self._as_of_ms = max(self._as_of_ms, _event_ms(event))
            self._after_change()

    # Equity curve -----------------------------------------------------------------------------

    async def sample_equity(self, _resources: Resources | None = None) -> None:
        """Record one equity point per interval (the background loop)."""
        while True:
            await asyncio.sleep(self.settings.equity_sample_s)
            now = datetime.now(UTC)
            async with self._lock:
                p = self.portfolio
                equity, cash = p.equity, p.cash
                unrealized, realized = p.unrealized_pnl, p.realized_pnl
                if _day_start(now) != self._day:
                    self._day = _day_start(now)
                    self._day_start_equity = equity
            await self.store.record_equity(now, equity, cash, unrealized, realized)

    # Reading ----------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(self._as_of_ms, self.portfolio, self._peak, self._day_start_equity)

    def positions(self) -> list[tuple[DomainPosition, Decimal | None]]:
        """Every symbol traded, with its mark, sorted by symbol."""
        p = self.portfolio
        return [(p.position(s), p.mark(s)) for s in sorted(p.positions)]

    def _marks(self) -> dict[Symbol, Decimal]:
        p = self.portfolio
        return {s: m for s in p.positions if (m := p.mark(s))}

    def _entries(self) -> list[LedgerEntry]:
        """The ledger in memory: venue order up to the last rebuild, booking order since, which
        `venue_order` sorts exactly as it sorts the stored ledger."""
        return [LedgerEntry(f, self._sequences.get(f.fill_id)) for f in self.portfolio.ledger]

    def _replay(self, entries: list[LedgerEntry]) -> None:
        """Rebuild the portfolio from ledger `entries` (in booking order), in venue order."""
        ordered = venue_order(entries)
        self.portfolio = Portfolio.replay(self.settings.initial_cash, [e.fill for e in ordered])
        self._sequences = {e.fill.fill_id: e.sequence for e in ordered if e.sequence is not None}
        self._last_sequence = {e.fill.symbol: e.sequence for e in ordered if e.sequence is not None}

    def _after_change(self) -> None:
        equity = self.portfolio.equity
        if equity > self._peak:
            self._peak = equity
        self._update_gauges()

    def _update_gauges(self) -> None:
        p = self.portfolio
        equity = p.equity
        metrics.EQUITY.set(float(equity))
        metrics.CASH.set(float(p.cash))
        metrics.REALIZED_PNL.set(float(p.realized_pnl))
        metrics.UNREALIZED_PNL.set(float(p.unrealized_pnl))
        metrics.FEES.set(float(p.fees))
        metrics.GROSS_EXPOSURE.set(float(p.gross_exposure))
        metrics.NET_EXPOSURE.set(float(p.net_exposure))
        metrics.DRAWDOWN.set(float((self._peak - equity) / self._peak) if self._peak else 0.0)
        for symbol, position in p.positions.items():
            metrics.POSITION.labels(symbol).set(float(position.quantity))


def _event_ms(event: Event[Any]) -> int:
    return int(event.time.timestamp() * 1000)
