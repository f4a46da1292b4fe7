"""portfolio-intelligence's HTTP API: the portfolio, positions, fills, equity and performance."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from backend.infra.service import provided
from backend.trading.portfolio import EquityPoint, performance_report
from microservices.contracts.portfolio_intelligence import (
    EquityCurvePublic,
    EquityPointPublic,
    FillPublic,
    FillsPublic,
    FillsStatusPublic,
    PerformancePublic,
    PortfolioPublic,
    PositionPublic,
    PositionsPublic,
)

from .book import FillsStatus, PortfolioBook
from .store import to_ms

router = APIRouter()


def fills_status_public(status: FillsStatus) -> FillsStatusPublic:
    return FillsStatusPublic(
        booked_sequence=status.booked_sequence,
        max_sequence=status.max_sequence,
        gaps=list(status.gaps),
        pending=status.pending,
        lag=status.lag,
        dead_letters=status.dead_letters,
        complete_as_of_ms=status.complete_as_of_ms,
        problems=list(status.problems),
    )


Book = Annotated[PortfolioBook, Depends(provided(PortfolioBook))]
Limit = Annotated[int, Query(ge=1, le=100_000)]


@router.get("/portfolio")
async def get_portfolio(book: Book) -> PortfolioPublic:
    if book.settings.shared_ledger:
        await book.catch_up()
    snap = book.snapshot()
    p = snap.portfolio
    equity = p.equity
    return PortfolioPublic(
        as_of_ms=snap.as_of_ms,
        marks_as_of_ms=snap.marks_as_of_ms,
        fills=fills_status_public(snap.fills),
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
    if book.settings.shared_ledger:
        await book.catch_up()
    data = [PositionPublic.of(pos, mark) for pos, mark in book.positions()]
    return PositionsPublic(data=data, count=len(data))


@router.get("/fills")
async def get_fills(
    book: Book, symbol: Annotated[str | None, Query()] = None, limit: Limit = 100
) -> FillsPublic:
    """Booked fills, newest first."""
    rows = await book.store.fills(symbol=symbol, limit=limit)
    data = [FillPublic.model_validate(r) for r in rows]
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
