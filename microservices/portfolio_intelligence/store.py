"""portfolio-intelligence persistence: the fill ledger, derived positions and the equity curve."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.infra.db import execute
from backend.infra.db.models import EquityPoint, LedgerFill, Position
from backend.infra.eventbus import Event, EventData
from backend.infra.outbox import Outbox
from backend.infra.service import Resources
from backend.trading.portfolio import Position as DomainPosition
from backend.trading.types import Fill, Liquidity

ZERO = Decimal(0)


def to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class LedgerEntry(NamedTuple):
    """A booked fill and the venue's sequence of it (None when its producer sent none).

    `liquidity_known` is False for fills booked before the ledger kept liquidity: their
    `fill.liquidity` is a placeholder.
    """

    fill: Fill
    sequence: int | None
    liquidity_known: bool = True
    row_id: int = 0
    """The ledger row's id: booking order across every replica."""


def venue_order(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """`entries` (in booking order) in the order the venue produced them.

    Average-cost accounting depends on the order fills are applied in, so the ledger is replayed
    by sequence, then booking order. Fills without a sequence (booked before producers sent one)
    come first, in booking order, so a ledger without any sequence replays as it was booked.
    """
    return sorted(entries, key=lambda e: -1 if e.sequence is None else e.sequence)


# Booking is serialised across replicas sharing one database, so that each books on top of
# every fill booked before it: PostgreSQL with a transaction-scoped advisory lock (this key);
# SQLite by taking the write lock at once (a write that matches nothing).
_BOOKING_LOCK = {
    "postgresql": "SELECT pg_advisory_xact_lock(7203558436190862107)",
    "sqlite": "UPDATE positions SET symbol = symbol WHERE 0 = 1",
}


def _entry(row: LedgerFill) -> LedgerEntry:
    # Rows from before revision 0006 kept no liquidity; it moves no number.
    return LedgerEntry(
        Fill.from_stored(row, liquidity=Liquidity.TAKER),
        row.sequence,
        row.liquidity is not None,
        row.id,
    )


class Booking:
    """One booking transaction: `newer` holds what other replicas booked since the caller's
    last row (in booking order); `add` writes the caller's fill after them."""

    def __init__(self, store: LedgerStore, session: AsyncSession, newer: list[LedgerEntry]):
        self._store = store
        self._session = session
        self.newer = newer

    async def add(
        self,
        fill: Fill,
        sequence: int | None,
        position: DomainPosition,
        announce: EventData | None = None,
    ) -> int:
        """Add `fill` (with its venue `sequence`) to the ledger and save its symbol's position,
        with the event `announce` (through the outbox); the ledger row's id. Committed when
        the booking ends; a fill id already booked raises IntegrityViolationError then."""
        session = self._session
        row = ledger_row(fill, sequence)
        session.add(row)
        await self._save_position(position)
        if announce is not None:
            self._store.outbox.add(session, announce)
        await session.flush()
        return int(row.id)

    async def add_many(
        self,
        fills: Sequence[tuple[Fill, int | None]],
        positions: Iterable[DomainPosition],
        announce: Iterable[EventData | Event[Any]] = (),
    ) -> int:
        """Add `fills` (each with its venue sequence) to the ledger in this order, save
        `positions` (each symbol's after the last of them) and the events `announce` (through
        the outbox); the last ledger row's id. Committed when the booking ends, all or nothing;
        a fill id already booked raises IntegrityViolationError then."""
        session = self._session
        for position in positions:
            await self._save_position(position)
        # One multi-row INSERT per table, in the order given, so the ids are the booking order
        # replicas replay (the ORM writes rows with a generated key one statement at a time).
        rows = [{**fill.columns(), "sequence": seq} for fill, seq in fills]
        ids = (await execute(session, _INSERT_LEDGER, rows)).scalars().all()
        await self._store.outbox.add_many(session, announce)
        return max(int(row_id) for row_id in ids)

    async def _save_position(self, position: DomainPosition) -> None:
        # One UPDATE, and an INSERT only for a symbol's first position: no read, no ORM flush.
        # Bookings are serialised (the booking lock, or one replica), so the row's version only
        # counts its writes.
        values = {
            "quantity": position.quantity,
            "average_price": position.average_price or ZERO,
            "realized_pnl": position.realized_pnl,
            "fees_paid": position.fees,
            "updated_at": datetime.now(UTC),
        }
        updated = await execute(self._session, _UPDATE_POSITION, {**values, "of": position.symbol})
        if updated.rowcount == 0:
            await execute(
                self._session, _INSERT_POSITION, {**values, "symbol": position.symbol, "version": 1}
            )


_POSITIONS = cast(Table, Position.__table__)
_UPDATE_POSITION = (
    update(_POSITIONS)
    .where(_POSITIONS.c.symbol == bindparam("of"))
    .values(version=_POSITIONS.c.version + 1)
)
_INSERT_POSITION = insert(_POSITIONS)
_INSERT_LEDGER = insert(cast(Table, LedgerFill.__table__)).returning(LedgerFill.__table__.c.id)


def ledger_row(fill: Fill, sequence: int | None) -> LedgerFill:
    """The ledger row of `fill`, booked with its venue `sequence`."""
    return LedgerFill(**fill.columns(), sequence=sequence)


class LedgerStore:
    """Reads and writes the portfolio tables through the service's unit of work."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._outbox: Outbox | None = None

    @property
    def outbox(self) -> Outbox:
        """Where the position updates wait for publication (created with the database)."""
        if self._outbox is None:
            r = self._resources
            self._outbox = Outbox(r.sessions, r.publisher, source=r.name)
        return self._outbox

    @asynccontextmanager
    async def booking(self, after_row: int, *, shared: bool) -> AsyncIterator[Booking]:
        """A transaction; committed on leaving, rolled back on error. When the ledger is
        `shared` with other replicas it holds the booking lock and carries the ledger rows
        after `after_row` (booked by the others meanwhile); otherwise no row can be newer
        than this replica's own, and the lock and the read are skipped."""
        async with self._resources.session() as session:
            newer: list[LedgerEntry] = []
            if shared:
                lock = _BOOKING_LOCK.get(session.get_bind().dialect.name)
                if lock is not None:
                    await session.execute(text(lock))
                newer = await self._rows_after(session, after_row)
            yield Booking(self, session, newer)

    async def since(self, after_row: int) -> list[LedgerEntry]:
        """The ledger rows after `after_row`, in booking order (no lock: committed rows)."""
        async with self._resources.session() as session:
            return await self._rows_after(session, after_row)

    @staticmethod
    async def _rows_after(session: AsyncSession, after_row: int) -> list[LedgerEntry]:
        rows = await session.scalars(
            select(LedgerFill).where(LedgerFill.id > after_row).order_by(LedgerFill.id)
        )
        return [_entry(r) for r in rows]

    async def ledger(self) -> list[LedgerEntry]:
        """Every booked fill with its venue sequence, in booking order: what the portfolio is
        rebuilt from (in venue order, see `venue_order`)."""
        return await self.since(0)

    async def fills(self, *, symbol: str | None, limit: int) -> list[LedgerFill]:
        """Newest booked fills first."""
        async with self._resources.session() as session:
            query = select(LedgerFill).order_by(LedgerFill.id.desc()).limit(limit)
            if symbol is not None:
                query = query.where(LedgerFill.symbol == symbol)
            return list(await session.scalars(query))

    async def record_equity(
        self,
        at: datetime,
        equity: Decimal,
        cash: Decimal,
        unrealized: Decimal,
        realized: Decimal,
        *,
        min_gap_s: float = 0.0,
    ) -> bool:
        """Add a point to the equity curve unless one is less than `min_gap_s` older than `at`
        (another replica sampled this interval): one point per interval whatever the number of
        replicas. Under the booking lock, so two replicas never both add one."""
        async with self._resources.session() as session:
            if min_gap_s > 0:
                lock = _BOOKING_LOCK.get(session.get_bind().dialect.name)
                if lock is not None:
                    await session.execute(text(lock))
                last = await session.scalar(select(func.max(EquityPoint.at)))
                if last is not None and (at - last.replace(tzinfo=UTC)).total_seconds() < min_gap_s:
                    return False
            session.add(
                EquityPoint(
                    at=at,
                    equity=equity,
                    cash=cash,
                    unrealized_pnl=unrealized,
                    realized_pnl=realized,
                )
            )
        return True

    async def equity_curve(self, *, limit: int) -> list[EquityPoint]:
        """The latest `limit` points, oldest first."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(EquityPoint).order_by(EquityPoint.id.desc()).limit(limit)
            )
            return list(reversed(list(rows)))

    async def peak_equity(self) -> Decimal | None:
        async with self._resources.session() as session:
            peak: Decimal | None = await session.scalar(
                select(EquityPoint.equity).order_by(EquityPoint.equity.desc()).limit(1)
            )
            return peak

    async def equity_at_or_after(self, since: datetime) -> Decimal | None:
        """Equity at the first point at or after `since`, else at the last point before it."""
        async with self._resources.session() as session:
            value: Decimal | None = await session.scalar(
                select(EquityPoint.equity)
                .where(EquityPoint.at >= since)
                .order_by(EquityPoint.at)
                .limit(1)
            )
            if value is not None:
                return value
            value = await session.scalar(
                select(EquityPoint.equity).order_by(EquityPoint.at.desc()).limit(1)
            )
            return value
