"""Services' answers built from their contract models, for the stubs standing in for them."""

from __future__ import annotations

from decimal import Decimal

from backend.trading.types import ZERO
from microservices.contracts.portfolio_intelligence import (
    FillsStatusPublic,
    PortfolioPublic,
    PositionPublic,
)


def portfolio_answer(equity: Decimal, positions: dict[str, Decimal]) -> PortfolioPublic:
    """A portfolio with `equity` holding `positions` (bought at 100), as the service says it."""
    held = [
        PositionPublic(
            symbol=s,
            quantity=q,
            avg_price=Decimal(100),
            mark=None,
            unrealized_pnl=ZERO,
            realized_pnl=ZERO,
            fees=ZERO,
        )
        for s, q in positions.items()
    ]
    fills = FillsStatusPublic(
        booked_sequence=0,
        max_sequence=0,
        gaps=[],
        pending=0,
        lag=0,
        dead_letters=0,
        complete_as_of_ms=None,
        problems=[],
    )
    return PortfolioPublic(
        as_of_ms=0,
        marks_as_of_ms=None,
        fills=fills,
        initial_cash=equity,
        cash=equity,
        equity=equity,
        peak_equity=equity,
        day_start_equity=equity,
        daily_pnl=ZERO,
        realized_pnl=ZERO,
        unrealized_pnl=ZERO,
        fees=ZERO,
        total_pnl=ZERO,
        gross_exposure=ZERO,
        net_exposure=ZERO,
        positions=held,
    )
