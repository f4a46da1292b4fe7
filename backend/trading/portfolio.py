"""Positions, cash and PnL from a fill ledger, plus performance analytics of an equity curve."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from backend.trading.risk import PortfolioSnapshot
from backend.trading.types import Fill, FillId, Symbol

ZERO = Decimal(0)
# The cost taken off a partly closed position is rounded to this quantum; whatever rounding
# happens stays inside the open cost basis, so realized + unrealized still equals cash + value.
COST_QUANTUM = Decimal("1e-12")


class ConflictingFill(ValueError):
    """Raised when a fill id is seen again with different contents."""


@dataclass(frozen=True, slots=True)
class Position:
    """Net position in one symbol, by average cost.

    `cost_basis` is the signed cost of the open quantity (negative for a short), so the
    average entry price is cost_basis / quantity. `realized_pnl` is before fees.
    """

    symbol: Symbol
    quantity: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    @property
    def average_price(self) -> Decimal | None:
        """Average entry price of the open quantity; None when flat."""
        return self.cost_basis / self.quantity if self.quantity else None

    def unrealized_pnl(self, mark: Decimal) -> Decimal:
        """Profit of the open quantity if closed at `mark`, before fees."""
        return self.quantity * mark - self.cost_basis


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """The part of a fill that reduced a position, with its realized PnL before fees."""

    symbol: Symbol
    fill_id: FillId
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pnl: Decimal
    ts_ms: int


@dataclass(frozen=True, slots=True)
class FillOutcome:
    """Result of `apply_fill`: whether it was booked, and the position afterwards."""

    applied: bool
    duplicate: bool
    position: Position
    realized_pnl: Decimal


@dataclass(frozen=True, slots=True)
class EquityPoint:
    """Equity (cash plus marked positions) at a point in time."""

    ts_ms: int
    equity: Decimal


class Portfolio:
    """Cash and per-symbol positions built from fills; `apply_fill` is idempotent by fill id.

    Unrealized PnL uses the latest of each symbol's marks and fill prices.
    """

    def __init__(self, initial_cash: Decimal) -> None:
        self._initial_cash = initial_cash
        self._cash = initial_cash
        self._positions: dict[Symbol, Position] = {}
        self._marks: dict[Symbol, Decimal] = {}
        self._ledger: dict[FillId, Fill] = {}
        self._closed_trades: list[ClosedTrade] = []
        self._equity_curve: list[EquityPoint] = []

    @classmethod
    def replay(
        cls,
        initial_cash: Decimal,
        fills: Iterable[Fill],
        marks: Mapping[Symbol, Decimal] | None = None,
    ) -> Portfolio:
        """Rebuild a portfolio from its ledger (and optional marks)."""
        portfolio = cls(initial_cash)
        for fill in fills:
            portfolio.apply_fill(fill)
        portfolio.set_marks(marks or {})
        return portfolio

    def apply_fill(self, fill: Fill) -> FillOutcome:
        """Book a fill. A fill id already booked is ignored and reported as a duplicate."""
        seen = self._ledger.get(fill.fill_id)
        if seen is not None:
            if seen != fill:
                raise ConflictingFill(f"fill {fill.fill_id} was booked with different contents")
            return FillOutcome(False, True, self.position(fill.symbol), ZERO)
        if fill.quantity <= ZERO or fill.price <= ZERO or fill.fee < ZERO:
            raise ValueError(f"fill {fill.fill_id}: quantity and price must be positive, fee >= 0")
        self._ledger[fill.fill_id] = fill

        position = self.position(fill.symbol)
        signed = fill.quantity * fill.side.sign
        quantity, cost, realized = position.quantity, position.cost_basis, ZERO
        if quantity == ZERO or (quantity > ZERO) == (signed > ZERO):
            quantity += signed
            cost += signed * fill.price
        else:
            closing = min(abs(signed), abs(quantity))
            if closing == abs(quantity):
                removed = cost
            else:
                removed = (cost * closing / abs(quantity)).quantize(COST_QUANTUM)
            direction = 1 if quantity > ZERO else -1
            realized = direction * fill.price * closing - removed
            entry_price = cost / quantity
            quantity -= direction * closing
            cost -= removed
            self._closed_trades.append(
                ClosedTrade(
                    fill.symbol,
                    fill.fill_id,
                    closing,
                    entry_price,
                    fill.price,
                    realized,
                    fill.ts_ms,
                )
            )
            opening = abs(signed) - closing
            if opening > ZERO:
                # The fill went through zero: the rest opens a new position at the fill price.
                quantity = opening * fill.side.sign
                cost = quantity * fill.price
        updated = replace(
            position,
            quantity=quantity,
            cost_basis=cost,
            realized_pnl=position.realized_pnl + realized,
            fees=position.fees + fill.fee,
        )
        self._positions[fill.symbol] = updated
        self._cash -= signed * fill.price + fill.fee
        # A fill is the freshest observed price of its symbol.
        self._marks[fill.symbol] = fill.price
        return FillOutcome(True, False, updated, realized)

    def set_mark(self, symbol: Symbol, price: Decimal) -> None:
        """Record the latest market price of a symbol."""
        if price <= ZERO:
            raise ValueError("mark must be positive")
        self._marks[symbol] = price

    def set_marks(self, marks: Mapping[Symbol, Decimal]) -> None:
        """Record several marks at once."""
        for symbol, price in marks.items():
            self.set_mark(symbol, price)

    def mark(self, symbol: Symbol) -> Decimal | None:
        """The price unrealized PnL uses for a symbol."""
        return self._marks.get(symbol)

    def position(self, symbol: Symbol) -> Position:
        """Position in a symbol (flat if never traded)."""
        return self._positions.get(symbol, Position(symbol))

    @property
    def positions(self) -> Mapping[Symbol, Position]:
        """Every symbol ever traded, including flat ones with realized PnL."""
        return dict(self._positions)

    @property
    def open_positions(self) -> Mapping[Symbol, Position]:
        """Positions with a non-zero quantity."""
        return {s: p for s, p in self._positions.items() if p.quantity != ZERO}

    @property
    def ledger(self) -> tuple[Fill, ...]:
        """Booked fills in booking order."""
        return tuple(self._ledger.values())

    @property
    def closed_trades(self) -> tuple[ClosedTrade, ...]:
        """Position reductions in booking order."""
        return tuple(self._closed_trades)

    @property
    def initial_cash(self) -> Decimal:
        """Cash before any fill."""
        return self._initial_cash

    @property
    def cash(self) -> Decimal:
        """Cash after every booked fill and fee."""
        return self._cash

    @property
    def fees(self) -> Decimal:
        """Fees paid across all symbols."""
        return sum((p.fees for p in self._positions.values()), ZERO)

    @property
    def realized_pnl(self) -> Decimal:
        """Realized PnL before fees across all symbols."""
        return sum((p.realized_pnl for p in self._positions.values()), ZERO)

    @property
    def unrealized_pnl(self) -> Decimal:
        """Unrealized PnL of open positions at their marks."""
        return sum((p.unrealized_pnl(self._mark_of(p)) for p in self._positions.values()), ZERO)

    @property
    def total_pnl(self) -> Decimal:
        """Realized plus unrealized, net of fees; always equals equity minus initial cash."""
        return self.realized_pnl + self.unrealized_pnl - self.fees

    @property
    def gross_exposure(self) -> Decimal:
        """Sum of absolute marked position values."""
        return sum((abs(p.quantity) * self._mark_of(p) for p in self._positions.values()), ZERO)

    @property
    def net_exposure(self) -> Decimal:
        """Sum of signed marked position values."""
        return sum((p.quantity * self._mark_of(p) for p in self._positions.values()), ZERO)

    @property
    def equity(self) -> Decimal:
        """Cash plus marked value of all positions."""
        return self._cash + self.net_exposure

    def _mark_of(self, position: Position) -> Decimal:
        return self._marks.get(position.symbol, ZERO)

    def record_equity(self, ts_ms: int) -> EquityPoint:
        """Append the current equity to the equity curve and return the point."""
        point = EquityPoint(ts_ms, self.equity)
        self._equity_curve.append(point)
        return point

    @property
    def equity_curve(self) -> tuple[EquityPoint, ...]:
        """Points recorded by `record_equity`."""
        return tuple(self._equity_curve)

    def risk_snapshot(
        self, as_of_ms: int, *, peak_equity: Decimal, day_start_equity: Decimal
    ) -> PortfolioSnapshot:
        """The view risk checks need; `peak_equity` is raised to the current equity if lower."""
        equity = self.equity
        return PortfolioSnapshot(
            as_of_ms=as_of_ms,
            equity=equity,
            peak_equity=max(peak_equity, equity),
            daily_pnl=equity - day_start_equity,
            gross_exposure=self.gross_exposure,
            positions={s: p.quantity for s, p in self.open_positions.items()},
        )


@dataclass(frozen=True, slots=True)
class PerformanceReport:
    """Summary statistics; ratios are None when there is too little data to define them."""

    total_return: Decimal | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: Decimal
    win_rate: Decimal | None
    trades: int


def period_returns(equity: Sequence[Decimal]) -> list[float]:
    """Simple returns between consecutive equity values."""
    return [float(b / a - 1) for a, b in itertools.pairwise(equity) if a != ZERO]


def sharpe_ratio(returns: Sequence[float], periods_per_year: float) -> float | None:
    """Annualised mean over sample standard deviation (risk-free rate zero)."""
    if len(returns) < 2:
        return None
    mean = math.fsum(returns) / len(returns)
    variance = math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1)
    if variance <= 0:
        return None
    return mean / math.sqrt(variance) * math.sqrt(periods_per_year)


def sortino_ratio(returns: Sequence[float], periods_per_year: float) -> float | None:
    """Annualised mean over downside deviation (root mean square of negative returns)."""
    if len(returns) < 2:
        return None
    downside = math.sqrt(math.fsum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    if downside == 0:
        return None
    return math.fsum(returns) / len(returns) / downside * math.sqrt(periods_per_year)


def max_drawdown(equity: Sequence[Decimal]) -> Decimal:
    """Largest fall from a running peak, as a fraction of that peak (0 when never below it)."""
    peak: Decimal | None = None
    worst = ZERO
    for value in equity:
        peak = value if peak is None or value > peak else peak
        if peak > ZERO:
            worst = max(worst, (peak - value) / peak)
    return worst


def win_rate(trades: Sequence[ClosedTrade]) -> Decimal | None:
    """Share of closed trades with positive realized PnL; None without trades."""
    if not trades:
        return None
    return Decimal(sum(1 for t in trades if t.realized_pnl > ZERO)) / len(trades)


def performance_report(
    curve: Sequence[EquityPoint], trades: Sequence[ClosedTrade], periods_per_year: float
) -> PerformanceReport:
    """Performance of an equity curve sampled at a fixed period, and of its closed trades."""
    values = [p.equity for p in curve]
    returns = period_returns(values)
    total = values[-1] / values[0] - 1 if len(values) >= 2 and values[0] != ZERO else None
    return PerformanceReport(
        total_return=total,
        sharpe=sharpe_ratio(returns, periods_per_year),
        sortino=sortino_ratio(returns, periods_per_year),
        max_drawdown=max_drawdown(values),
        win_rate=win_rate(trades),
        trades=len(trades),
    )
