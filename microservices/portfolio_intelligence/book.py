"""The portfolio book: the domain Portfolio kept in step with the ledger, marks and equity peaks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from backend.infra.db import DatabaseError, IntegrityViolationError
from backend.infra.eventbus import (
    BatchEntry,
    Event,
    EventBusError,
    GroupBacklog,
    GroupMonitor,
    default_catalogue,
)
from backend.infra.observability import BoundLogger, SpanKind, lean_span
from backend.infra.service import Resources
from backend.trading.events import MarketTick, OrderFilled, PositionUpdated
from backend.trading.portfolio import ConflictingFill, FillSequences, Portfolio
from backend.trading.portfolio import Position as DomainPosition
from backend.trading.types import Fill, FillId, Symbol

from . import metrics
from .settings import PortfolioIntelligenceSettings
from .store import LedgerEntry, LedgerStore, venue_order

ZERO = Decimal(0)
FILLS_STREAM = default_catalogue().spec_for_model(OrderFilled).stream
# A backlog read slower than this counts as unknown: the answer is wanted now, not later.
BACKLOG_TIMEOUT_S = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _day_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class FillsStatus:
    """Whether the books hold every fill on `order.filled`, and if not, what is missing.

    `problems` is empty when they do; otherwise it holds stable codes: `backlog_unknown`
    (the consumer group's backlog could not be read), `pending` (fills delivered, not yet
    acknowledged), `lag` (fills not yet delivered), `gaps` (venue sequences missing below the
    highest booked), `dead_letters` (fills this group gave up on), `unbooked` (a fill in
    memory that the ledger may not hold, after a failed write). `complete_as_of_ms` is the
    last time there was none (None if never since start).
    """

    booked_sequence: int
    max_sequence: int
    gaps: tuple[int, ...]
    missing_sequences: int
    pending: int
    lag: int | None
    dead_letters: int
    complete_as_of_ms: int | None
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The portfolio at one instant, as GET /portfolio reports it.

    `as_of_ms` is the last time the books were known to hold every fill (0 if never since
    start); `marks_as_of_ms` the publish time of the latest mark (a tick, or a fill's price).
    """

    as_of_ms: int
    marks_as_of_ms: int | None
    fills: FillsStatus
    portfolio: Portfolio
    peak_equity: Decimal
    day_start_equity: Decimal


class PortfolioBook:
    """Books fills once, marks positions to ticks and tracks peak and day-start equity.

    Memory follows the ledger: a fill is applied in memory, then written with its position in
    one transaction; if the write fails, memory is rebuilt from the ledger and the event is
    retried by the bus (and if the rebuild fails too, the next fill event rebuilds first).

    Freshness follows the fill stream, not the marks: every `fills_check_interval_ms` the book
    reads its consumer group's backlog on `order.filled` (pending, lag, dead letters) and looks
    for holes in the venue sequences it booked. When there is nothing missing, the time the
    check started becomes `as_of_ms`: every fill published before it is in the books. Ticks
    never move it, so a portfolio that lost a fill ages until the loss is repaired.

    Replicas: several books may share one database and one consumer group
    (`PORTFOLIO_SHARED_LEDGER`). Booking is then serialised through the database
    (`LedgerStore.booking`), and a book first applies the ledger rows the others booked since
    its last one, so each fill is booked on top of every
    fill booked before it and the position it announces is the portfolio's, not one
    replica's share. Reads catch up the same way (`catch_up`).

    Average cost depends on the order fills are applied in, and the bus may deliver a fill
    after later ones (a retried event). Fills are therefore applied in the venue's order: a
    fill whose sequence is below one already booked for its symbol is booked with the portfolio
    replayed in that order, so the result is what in-order delivery would have given.
    """

    def __init__(
        self,
        settings: PortfolioIntelligenceSettings,
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
        self._coverage = FillSequences()
        self._ledger_row = 0
        """The last ledger row memory holds (booking order across replicas)."""
        self._peak = settings.initial_cash
        self._day = _day_start(datetime.now(UTC))
        self._day_start_equity = settings.initial_cash
        self._marks_as_of_ms: int | None = None
        self._tick_ms: dict[Symbol, int] = {}
        """The market time of the newest tick marked, per symbol: an older one is ignored."""
        # Memory may hold a fill the ledger does not: a write failed and so did the rebuild.
        self._unbooked = False
        self._monitor: GroupMonitor | None = None
        self._backlog: GroupBacklog | None = None
        self._complete_as_of_ms: int | None = None
        self._reported_problems: tuple[str, ...] | None = None

    # Start-up ---------------------------------------------------------------------------------

    async def run_outbox_relay(self, _resources: Resources | None = None) -> None:
        """Publish the position updates the booking path left in the outbox."""
        await self.store.outbox.run_relay()

    async def restore(self, _resources: Resources | None = None) -> None:
        """Rebuild positions and cash from the ledger, peak and day start from the curve."""
        async with self._lock:
            await self._restore()

    async def _restore(self) -> None:
        marks = self._marks()
        fills = await self.store.ledger()
        self._replay(fills)
        self._ledger_row = max((e.row_id for e in fills), default=0)
        # Marks seen before a rebuild are still the latest prices known.
        self.portfolio.set_marks(marks)
        equity = self.portfolio.equity
        peak = await self.store.peak_equity()
        self._peak = max(self.settings.initial_cash, equity, peak or ZERO)
        self._day = _day_start(datetime.now(UTC))
        day_start = await self.store.equity_at_or_after(self._day)
        self._day_start_equity = day_start if day_start is not None else equity
        self._unbooked = False
        self._update_gauges()
        self.log.info("portfolio rebuilt from the ledger", fills=len(fills), equity=equity)

    # Events -----------------------------------------------------------------------------------

    async def on_fill(self, event: Event[OrderFilled]) -> None:
        """Book a fill once (by fill id) in the venue's order, then publish the symbol's
        position."""
        data = event.data
        fill = data.to_fill()
        if data.sequence is not None and data.sequence < 1:
            raise ValueError(f"fill {data.fill_id}: venue sequence {data.sequence} is below 1")
        async with self._lock:
            if self._unbooked:
                await self._restore()  # raises while the database is down: retried later
            with self._tracer.start_as_current_span(
                "position.update",
                kind=SpanKind.INTERNAL,
                attributes=fill.attributes(),
            ) as span:
                try:
                    booked = await self._book(fill, data.sequence)
                except ConflictingFill as exc:
                    self._conflicting(span, fill, exc, event.deliveries)
                    raise
                span.set_attribute("duplicate", not booked)
                if not booked:
                    return
                self._marks_as_of_ms = max(self._marks_as_of_ms or 0, _event_ms(event))
                position = self.portfolio.position(fill.symbol)
                span.set_attribute("position.quantity", str(position.quantity))
                span.set_attribute("position.realized_pnl", str(position.realized_pnl))
                self.log.info(
                    "position updated",
                    **fill.attributes(),
                    position=position.quantity,
                    average_price=position.average_price,
                    realized_pnl=position.realized_pnl,
                )

    async def on_fills(self, entries: Sequence[BatchEntry[OrderFilled]]) -> None:
        """Book a read's fills in one transaction (the bus hands them over together), each
        once and in the venue's order, and publish each one's position.

        All or nothing: if anything fails, memory is rebuilt from the ledger and the error
        raised, and the bus hands the fills over again one at a time (`on_fill`), so a bad
        fill is retried and dead-lettered alone.
        """
        if len(entries) == 1:
            await self.on_fill(entries[0].event)
            return
        for entry in entries:
            data = entry.data
            if data.sequence is not None and data.sequence < 1:
                raise ValueError(f"fill {data.fill_id}: venue sequence {data.sequence} is below 1")
        async with self._lock:
            if self._unbooked:
                await self._restore()
            try:
                try:
                    booked = await self._book_many(entries)
                except IntegrityViolationError:
                    # Some were booked already (before memory was lost): once memory holds the
                    # ledger again they are duplicates, and the rest books.
                    await self._restore()
                    booked = await self._book_many(entries)
            except Exception:
                # Memory may hold fills of the batch that the rolled-back transaction did not.
                self._unbooked = True
                try:
                    await self._restore()
                except DatabaseError:
                    self.log.exception("rebuild failed; the next fill event rebuilds first")
                raise
            for entry, fill, position in booked:
                metrics.FILLS_BOOKED.labels(fill.symbol).inc()
                self._marks_as_of_ms = max(self._marks_as_of_ms or 0, _event_ms(entry.event))
                with entry.activate():
                    self.log.info(
                        "position updated",
                        **fill.attributes(),
                        position=position.quantity,
                        average_price=position.average_price,
                        realized_pnl=position.realized_pnl,
                    )
            self._after_change()

    async def _book_many(
        self, entries: Sequence[BatchEntry[OrderFilled]]
    ) -> list[tuple[BatchEntry[OrderFilled], Fill, DomainPosition]]:
        """Apply `entries` in memory and write them with their positions and announcements in
        one booking transaction; the entries booked (not duplicates) with their positions."""
        shared = self.settings.shared_ledger
        booked: list[tuple[BatchEntry[OrderFilled], Fill, DomainPosition]] = []
        rows: list[tuple[Fill, int | None]] = []
        announce: list[Event[Any]] = []
        async with self.store.booking(self._ledger_row, shared=shared) as booking:
            self._apply_booked(booking.newer)
            for entry in entries:
                data = entry.data
                fill = data.to_fill()
                # Each fill's span and announcement belong to its own trace. The lean span:
                # one per fill, on the booking path (an SDK span costs ten times more).
                with (
                    entry.activate(),
                    lean_span(self._tracer, "position.update", fill.attributes()) as span,
                ):
                    try:
                        position = self._apply(fill, data.sequence)
                    except ConflictingFill as exc:
                        self._conflicting(span, fill, exc, entry.event.deliveries)
                        raise
                    span.set_attribute("duplicate", position is None)
                    if position is None:
                        metrics.DUPLICATE_FILLS.inc()
                        self.log.info("duplicate fill ignored", fill_id=fill.fill_id)
                        continue
                    span.set_attribute("position.quantity", str(position.quantity))
                    span.set_attribute("position.realized_pnl", str(position.realized_pnl))
                    announce.append(self.store.outbox.event(self._announcement(fill)))
                rows.append((fill, data.sequence))
                booked.append((entry, fill, position))
            if rows:
                self._ledger_row = await booking.add_many(
                    rows,
                    # After the whole batch, so the late fill replays are accounted for too.
                    [self.portfolio.position(s) for s in {f.symbol: None for f, _ in rows}],
                    announce,
                )
        return booked

    def _conflicting(self, span: Any, fill: Fill, exc: ConflictingFill, deliveries: int) -> None:
        """Say (metric, span, error line) that `fill` differs from the booked fill of its id."""
        metrics.CONFLICTING_FILLS.inc()
        span.set_attribute("conflict", list(exc.differences))
        self.log.error(
            "fill conflicts with the booked fill of the same id; not booked",
            fill_id=fill.fill_id,
            client_order_id=fill.client_order_id,
            differences=list(exc.differences),
            deliveries=deliveries,
        )

    def _announcement(self, fill: Fill) -> PositionUpdated:
        """The `position.updated` event of `fill`'s symbol, as memory holds it now."""
        position = self.portfolio.position(fill.symbol)
        mark = self.portfolio.mark(fill.symbol)
        return PositionUpdated(
            symbol=fill.symbol,
            quantity=position.quantity,
            average_price=position.average_price,
            realized_pnl=position.realized_pnl,
            unrealized_pnl=position.unrealized_pnl(mark) if mark else ZERO,
            mark_price=mark,
            sequence=self._last_sequence.get(fill.symbol),
            client_order_id=fill.client_order_id,
        )

    async def _book(self, fill: Fill, sequence: int | None) -> bool:
        try:
            shared = self.settings.shared_ledger
            async with self.store.booking(self._ledger_row, shared=shared) as booking:
                self._apply_booked(booking.newer)
                position = self._apply(fill, sequence)
                if position is None:
                    metrics.DUPLICATE_FILLS.inc()
                    self.log.info("duplicate fill ignored", fill_id=fill.fill_id)
                    if booking.newer:
                        self._after_change()
                    return False
                # Committed with the ledger row (the outbox): published by the relay, never
                # lost to a Redis outage, and never waited on here.
                announce = self._announcement(fill)
                self._ledger_row = await booking.add(fill, sequence, position, announce)
        except IntegrityViolationError:
            # Booked already (before memory was lost): the ledger wins, and this copy must
            # agree with what it holds (ConflictingFill if not).
            self._unbooked = True
            await self._restore()
            if not self.portfolio.has_fill(fill.fill_id):
                raise  # another row collided (a position written concurrently): retry
            self.portfolio.apply_fill(fill)
            metrics.DUPLICATE_FILLS.inc()
            self.log.info("fill already in the ledger", fill_id=fill.fill_id)
            return False
        except DatabaseError:
            self._unbooked = True
            self.log.exception("fill not booked; rebuilding from the ledger", fill_id=fill.fill_id)
            try:
                await self._restore()
            except DatabaseError:
                self.log.exception("rebuild failed; the next fill event rebuilds first")
            raise
        metrics.FILLS_BOOKED.labels(fill.symbol).inc()
        self._after_change()
        return True

    def _apply_booked(self, entries: list[LedgerEntry]) -> None:
        """Apply ledger rows other replicas booked (in booking order) that memory lacks."""
        for entry in entries:
            if not self.portfolio.has_fill(entry.fill.fill_id):
                self._apply(entry.fill, entry.sequence)
            self._ledger_row = max(self._ledger_row, entry.row_id)

    async def catch_up(self) -> None:
        """Apply what other replicas booked since memory's last ledger row (one query)."""
        async with self._lock:
            newer = await self.store.since(self._ledger_row)
            if newer:
                self._apply_booked(newer)
                self._after_change()

    def _apply(self, fill: Fill, sequence: int | None) -> DomainPosition | None:
        """Apply `fill` in memory in the venue's order; its symbol's position, or None for a
        fill already booked."""
        last = self._last_sequence.get(fill.symbol)
        late = sequence is not None and last is not None and sequence < last
        marks = self._marks() if late else {}
        outcome = self.portfolio.apply_fill(fill)
        if outcome.duplicate:
            return None
        position = outcome.position
        if sequence is not None:
            self._sequences[fill.fill_id] = sequence
            self._coverage.add(sequence)
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
        return position

    async def on_tick(self, event: Event[MarketTick]) -> None:
        """Mark the symbol at the tick's mid price, unless a newer tick marked it already.

        Idempotent by nature (the service reads ticks without processed marks): a tick
        delivered again, or a copy under a new entry, sets the mark it set or is older than
        the one that replaced it.
        """
        tick = event.data
        if tick.bid <= ZERO or tick.ask < tick.bid:
            return
        symbol = Symbol(tick.symbol)
        async with self._lock:
            if tick.ts_ms < self._tick_ms.get(symbol, tick.ts_ms):
                return
            self._tick_ms[symbol] = tick.ts_ms
            self.portfolio.set_mark(symbol, (tick.bid + tick.ask) / 2)
            self._marks_as_of_ms = max(self._marks_as_of_ms or 0, _event_ms(event))
            self._after_change()

    # Freshness --------------------------------------------------------------------------------

    async def watch_fills(self, _resources: Resources | None = None) -> None:
        """Check the fill stream every `fills_check_interval_ms` (the background loop)."""
        while True:
            if self._unbooked:
                async with self._lock:
                    try:
                        await self._restore()
                    except DatabaseError:
                        self.log.warning("rebuild after a failed write still failing")
            try:
                await self.catch_up()
            except DatabaseError:
                self.log.warning("ledger unreadable; other replicas' fills not applied yet")
            await self.check_fills()
            await asyncio.sleep(self.settings.fills_check_interval_ms / 1000)

    async def check_fills(self) -> FillsStatus:
        """Read the group's backlog, then decide whether the books hold every fill."""
        started_ms = now_ms()
        try:
            backlog = await asyncio.wait_for(self._read_backlog(), BACKLOG_TIMEOUT_S)
        except (EventBusError, TimeoutError) as exc:
            backlog = None
            if self._backlog is not None or self._reported_problems is None:
                self.log.warning("fill stream backlog unreadable", error=str(exc) or repr(exc))
        self._backlog = backlog
        status = self.fills_status()
        # Every entry acknowledged and no hole: whatever was published before `started_ms`
        # was handled, and handling a fill books it in memory before the acknowledgement.
        if status.complete:
            self._complete_as_of_ms = max(self._complete_as_of_ms or 0, started_ms)
            status = self.fills_status()
        self._report(status)
        metrics.CHECKED_TIMESTAMP.set(started_ms / 1000)
        return status

    async def _read_backlog(self) -> GroupBacklog:
        if self._monitor is None:
            consumer = self._resources.consumer
            if consumer is None:
                raise EventBusError("the fill consumer is not started yet")
            self._monitor = GroupMonitor(
                self._resources.redis, consumer.group, FILLS_STREAM, consumer.settings
            )
        return await self._monitor.backlog()

    def fills_status(self) -> FillsStatus:
        """What the books hold of the fill stream, from the last backlog read and memory."""
        coverage, backlog = self._coverage, self._backlog
        problems: list[str] = []
        if backlog is None or backlog.lag is None:
            problems.append("backlog_unknown")
        else:
            problems += [
                code
                for code, count in (
                    ("pending", backlog.pending),
                    ("lag", backlog.lag),
                    ("dead_letters", backlog.dead_letters),
                )
                if count
            ]
        if coverage.missing_count:
            problems.append("gaps")
        if self._unbooked:
            problems.append("unbooked")
        return FillsStatus(
            booked_sequence=coverage.booked,
            max_sequence=coverage.highest,
            gaps=tuple(coverage.missing()),
            missing_sequences=coverage.missing_count,
            pending=backlog.pending if backlog else 0,
            lag=backlog.lag if backlog else None,
            dead_letters=backlog.dead_letters if backlog else 0,
            complete_as_of_ms=self._complete_as_of_ms,
            problems=tuple(problems),
        )

    def _report(self, status: FillsStatus) -> None:
        """Gauges on every check; a log line whenever what is missing changes."""
        metrics.FILLS_COMPLETE.set(1 if status.complete else 0)
        metrics.FILL_PENDING.set(status.pending)
        metrics.FILL_LAG.set(math.nan if status.lag is None else status.lag)
        metrics.DEAD_LETTERS.set(status.dead_letters)
        metrics.SEQUENCE_GAPS.set(status.missing_sequences)
        metrics.BOOKED_SEQUENCE.set(status.booked_sequence)
        metrics.MAX_SEQUENCE.set(status.max_sequence)
        if status.complete_as_of_ms is not None:
            metrics.COMPLETE_TIMESTAMP.set(status.complete_as_of_ms / 1000)
        if status.problems == self._reported_problems:
            return
        previous, self._reported_problems = self._reported_problems, status.problems
        if status.complete:
            if previous is not None:
                self.log.info("portfolio holds every fill again", **_fields_of(status))
            return
        self.log.warning("portfolio is not known to hold every fill", **_fields_of(status))

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
            # Replicas share the curve: each interval gets the first replica's point only.
            gap = self.settings.equity_sample_s / 2 if self.settings.shared_ledger else 0.0
            await self.store.record_equity(now, equity, cash, unrealized, realized, min_gap_s=gap)

    # Reading ----------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The portfolio now, in a `portfolio.snapshot` span that says how fresh it is."""
        fills = self.fills_status()
        as_of_ms = fills.complete_as_of_ms or 0
        attributes: dict[str, Any] = {
            "portfolio.complete": fills.complete,
            "portfolio.age_ms": now_ms() - as_of_ms,
            "portfolio.fills.booked_sequence": fills.booked_sequence,
        }
        if not fills.complete:
            attributes.update({f"portfolio.fills.{k}": v for k, v in _fields_of(fills).items()})
        with self._tracer.start_as_current_span(
            "portfolio.snapshot", kind=SpanKind.INTERNAL, attributes=attributes
        ):
            return Snapshot(
                as_of_ms,
                self._marks_as_of_ms,
                fills,
                self.portfolio,
                self._peak,
                self._day_start_equity,
            )

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
        unknown = self.portfolio.liquidity_unknown
        return [
            LedgerEntry(f, self._sequences.get(f.fill_id), f.fill_id not in unknown)
            for f in self.portfolio.ledger
        ]

    def _replay(self, entries: list[LedgerEntry]) -> None:
        """Rebuild the portfolio from ledger `entries` (in booking order), in venue order."""
        ordered = venue_order(entries)
        self.portfolio = Portfolio.replay(
            self.settings.initial_cash,
            [e.fill for e in ordered],
            liquidity_unknown={e.fill.fill_id for e in ordered if not e.liquidity_known},
        )
        self._sequences = {e.fill.fill_id: e.sequence for e in ordered if e.sequence is not None}
        self._last_sequence = {e.fill.symbol: e.sequence for e in ordered if e.sequence is not None}
        self._coverage = FillSequences(self._sequences.values())

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


def _fields_of(status: FillsStatus) -> dict[str, Any]:
    """What a stale portfolio's log line and span say about the fill stream."""
    return {
        "problems": list(status.problems),
        "booked_sequence": status.booked_sequence,
        "max_sequence": status.max_sequence,
        "gaps": list(status.gaps),
        "missing_sequences": status.missing_sequences,
        "pending": status.pending,
        "lag": -1 if status.lag is None else status.lag,
        "dead_letters": status.dead_letters,
        "complete_as_of_ms": status.complete_as_of_ms or 0,
    }
