"""portfolio-intelligence persistence: the fill ledger, derived positions and the equity curve."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import select

from backend.infra.db.models import EquityPoint, LedgerFill, Position
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


def venue_order(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """`entries` (in booking order) in the order the venue produced them.

    Average-cost accounting depends on the order fills are applied in, so the ledger is replayed
    by sequence, then booking order. Fills without a sequence (booked before producers sent one)
    come first, in booking order, so a ledger without any sequence replays as it was booked.
    """
    return sorted(entries, key=lambda e: -1 if e.sequence is None else e.sequence)


def ledger_row(fill: Fill, sequence: int | None) -> LedgerFill:
    """The ledger row of `fill`, booked with its venue `sequence`."""
    return LedgerFill(**fill.columns(), sequence=sequence)


class LedgerStore:
    """Reads and writes the portfolio tables through the service's unit of work."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def book(self, fill: Fill, sequence: int | None, position: DomainPosition) -> None:
        """Add `fill` (with its venue `sequence`) to the ledger and save its symbol's position,
        in one transaction.

        A fill id already in the ledger raises IntegrityViolationError (the unique key).
        """
        async with self._resources.session() as session:
            session.add(ledger_row(fill, sequence))
            row = await session.get(Position, position.symbol)
            if row is None:
                row = Position(symbol=position.symbol)
                session.add(row)
            row.quantity = position.quantity
            row.average_price = position.average_price or ZERO
            row.realized_pnl = position.realized_pnl
            row.fees_paid = position.fees
            row.updated_at = datetime.now(UTC)

    async def ledger(self) -> list[LedgerEntry]:
        """Every booked fill with its venue sequence, in booking order: what the portfolio is
        rebuilt from (in venue order, see `venue_order`)."""
        async with self._resources.session() as session:
            rows = await session.scalars(select(LedgerFill).order_by(LedgerFill.id))
            # Rows from before revision 0006 kept no liquidity; it moves no number.
            return [
                LedgerEntry(
                    Fill.from_stored(r, liquidity=Liquidity.TAKER),
                    r.sequence,
                    r.liquidity is not None,
                )
                for r in rows
            ]

    async def fills(self, *, symbol: str | None, limit: int) -> list[LedgerFill]:
        """Newest booked fills first."""
        async with self._resources.session() as session:
            query = select(LedgerFill).order_by(LedgerFill.id.desc()).limit(limit)
            if symbol is not None:
                query = query.where(LedgerFill.symbol == symbol)
            return list(await session.scalars(query))

    async def record_equity(
        self, at: datetime, equity: Decimal, cash: Decimal, unrealized: Decimal, realized: Decimal
    ) -> None:
        async with self._resources.session() as session:
            session.add(
                EquityPoint(
                    at=at,
                    equity=equity,
                    cash=cash,
                    unrealized_pnl=unrealized,
                    realized_pnl=realized,
                )
            )

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
