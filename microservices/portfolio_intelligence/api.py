"""portfolio-intelligence's HTTP API: the portfolio, positions, fills, equity and performance."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from backend.infra.service import provided
from backend.trading.portfolio import EquityPoint, performance_report
from backend.trading.portfolio import Position as DomainPosition

from .book import FillsStatus, PortfolioBook
from .store import to_ms

router = APIRouter()
ZERO = Decimal(0)


class PositionPublic(BaseModel):
    symbol: str
    quantity: Decimal
    avg_price: Decimal | None
    mark: Decimal | None
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    fees: Decimal

    @classmethod
    def of(cls, position: DomainPosition, mark: Decimal | None) -> PositionPublic:
        return cls(
            symbol=position.symbol,
            quantity=position.quantity,
            avg_price=position.average_price,
            mark=mark,
            unrealized_pnl=position.unrealized_pnl(mark) if mark else ZERO,
            realized_pnl=position.realized_pnl,
            fees=position.fees,
        )


class PositionsPublic(BaseModel):
    data: list[PositionPublic]
    count: int


class FillsStatusPublic(BaseModel):
    """How much of the fill stream the books hold (see FillsStatus in book.py)."""

    booked_sequence: int
    max_sequence: int
    gaps: list[int]
    pending: int
    lag: int | None
    dead_letters: int
    complete_as_of_ms: int | None
    # Why the books are not known complete; empty when they are.
    problems: list[str]

    @classmethod
    def of(cls, status: FillsStatus) -> FillsStatusPublic:
        return cls(
            booked_sequence=status.booked_sequence,
            max_sequence=status.max_sequence,
            gaps=list(status.gaps),
            pending=status.pending,
            lag=status.lag,
            dead_letters=status.dead_letters,
            complete_as_of_ms=status.complete_as_of_ms,
            problems=list(status.problems),
        )


class PortfolioPublic(BaseModel):
    """Cash, equity and PnL (realized before fees; fees separate), and every traded symbol.

    `as_of_ms` is the last time the books were known to hold every fill on the stream (0 if
    never since start); `marks_as_of_ms` the time of the latest mark.
    """

    as_of_ms: int
    marks_as_of_ms: int | None
    fills: FillsStatusPublic
    initial_cash: Decimal
    cash: Decimal
    equity: Decimal
    peak_equity: Decimal
    day_start_equity: Decimal
    daily_pnl: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    total_pnl: Decimal
    gross_exposure: Decimal
    net_exposure: Decimal
    positions: list[PositionPublic]


class FillPublic(BaseModel):
    fill_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    filled_at: datetime
    booked_at: datetime
    # The venue's fill sequence, the order the ledger is replayed in; None if it was not sent.
    sequence: int | None
    # MAKER or TAKER; None for fills booked before the ledger kept it.
    liquidity: str | None


class FillsPublic(BaseModel):
    data: list[FillPublic]
    count: int


class EquityPointPublic(BaseModel):
    ts_ms: int
    equity: Decimal
    cash: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal


class EquityCurvePublic(BaseModel):
    data: list[EquityPointPublic]
    count: int
    sample_s: float


class PerformancePublic(BaseModel):
    """Ratios are null until there are enough points (or trades) to define them."""

    total_return: Decimal | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: Decimal
    win_rate: Decimal | None
    trades: int
    points: int
    sample_s: float


Book = Annotated[PortfolioBook, Depends(provided(PortfolioBook))]
Limit = Annotated[int, Query(ge=1, le=100_000)]


@router.get("/portfolio")
async def get_portfolio(book: Book) -> PortfolioPublic:
    snap = book.snapshot()
    p = snap.portfolio
    equity = p.equity
    return PortfolioPublic(
        as_of_ms=snap.as_of_ms,
        marks_as_of_ms=snap.marks_as_of_ms,
        fills=FillsStatusPublic.of(snap.fills),
        initial_cash=p.initial_cash,
        cash=p.cash,
        equity=equity,
        peak_equity=max(snap.peak_equity, equity),
        day_start_equity=snap.day_start_equity,
        daily_pnl=equity - snap.day_start_equity,
        realized_pnl=p.realized_pnl,
        unrealized_pnl=p.unrealized_pnl,
        fees=p.fees,
        total_pnl=p.total_pnl,
        gross_exposure=p.gross_exposure,
        net_exposure=p.net_exposure,
        positions=[PositionPublic.of(pos, mark) for pos, mark in book.positions()],
    )


@router.get("/positions")
async def get_positions(book: Book) -> PositionsPublic:
    data = [PositionPublic.of(pos, mark) for pos, mark in book.positions()]
    return PositionsPublic(data=data, count=len(data))


@router.get("/fills")
async def get_fills(
    book: Book, symbol: Annotated[str | None, Query()] = None, limit: Limit = 100
) -> FillsPublic:
    """Booked fills, newest first."""
    rows = await book.store.fills(symbol=symbol, limit=limit)
    data = [
        FillPublic(
            fill_id=r.fill_id,
            client_order_id=r.client_order_id,
            symbol=r.symbol,
            side=r.side,
            quantity=r.quantity,
            price=r.price,
            fee=r.fee,
            filled_at=r.filled_at,
            booked_at=r.booked_at,
            sequence=r.sequence,
            liquidity=r.liquidity,
        )
        for r in rows
    ]
    return FillsPublic(data=data, count=len(data))


@router.get("/equity-curve")
async def get_equity_curve(book: Book, limit: Limit = 1000) -> EquityCurvePublic:
    """The latest equity points, oldest first, one per EQUITY_SAMPLE_S."""
    rows = await book.store.equity_curve(limit=limit)
    data = [
        EquityPointPublic(
            ts_ms=to_ms(r.at),
            equity=r.equity,
            cash=r.cash,
            unrealized_pnl=r.unrealized_pnl,
            realized_pnl=r.realized_pnl,
        )
        for r in rows
    ]
    return EquityCurvePublic(data=data, count=len(data), sample_s=book.settings.equity_sample_s)


@router.get("/performance")
async def get_performance(book: Book, limit: Limit = 10_000) -> PerformancePublic:
    """Return, Sharpe, Sortino, max drawdown over the equity curve; win rate over closed trades."""
    rows = await book.store.equity_curve(limit=limit)
    curve = [EquityPoint(to_ms(r.at), r.equity) for r in rows]
    report = performance_report(curve, book.portfolio.closed_trades, book.settings.periods_per_year)
    return PerformancePublic(
        total_return=report.total_return,
        sharpe=report.sharpe,
        sortino=report.sortino,
        max_drawdown=report.max_drawdown,
        win_rate=report.win_rate,
        trades=report.trades,
        points=len(curve),
        sample_s=book.settings.equity_sample_s,
    )
