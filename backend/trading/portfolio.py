"""Positions, cash and PnL from a fill ledger, plus performance analytics of an equity curve."""

from __future__ import annotations

import decimal
import itertools
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from backend.trading.risk import PortfolioSnapshot
from backend.trading.types import Fill, FillId, Symbol

ZERO = Decimal(0)
# The cost taken off a partly closed position is rounded to this quantum; whatever rounding
# happens stays inside the open cost basis, so realized + unrealized still equals cash + value.
COST_PLACES = 12
COST_QUANTUM = Decimal(1).scaleb(-COST_PLACES)


# What identifies a fill and moves the books; a fill id seen again must agree on all of them.
# The fill time is left out: it is not part of the books, and the ledger keeps it to the
# millisecond through a float conversion, so a faithful copy could differ by one.
BOOKED_FIELDS = ("client_order_id", "symbol", "side", "quantity", "price", "fee")


class ConflictingFill(ValueError):
    """Raised when a fill id is seen again with different contents; `differences` names them."""

    def __init__(self, fill_id: FillId, differences: Sequence[str]) -> None:
        super().__init__(
            f"fill {fill_id} was booked with different contents: {', '.join(differences)}"
        )
        self.fill_id = fill_id
        self.differences = tuple(differences)


def fill_differences(booked: Fill, again: Fill, *, compare_liquidity: bool = True) -> list[str]:
    """How `again` differs from the `booked` fill of the same id ("quantity 1 != 2", ...).

    Empty when `again` is a duplicate. Liquidity is compared only when `compare_liquidity`:
    fills booked before the ledger kept it come back from the ledger without it.
    """
    names = BOOKED_FIELDS + (("liquidity",) if compare_liquidity else ())
    return [
        f"{name} {getattr(booked, name)} != {getattr(again, name)}"
        for name in names
        if getattr(booked, name) != getattr(again, name)
    ]


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
        self._liquidity_unknown: set[FillId] = set()
        self._closed_trades: list[ClosedTrade] = []
        self._equity_curve: list[EquityPoint] = []

    @classmethod
    def replay(
        cls,
        initial_cash: Decimal,
        fills: Iterable[Fill],
        marks: Mapping[Symbol, Decimal] | None = None,
        *,
        liquidity_unknown: Collection[FillId] = (),
    ) -> Portfolio:
        """Rebuild a portfolio from its ledger (and optional marks); `liquidity_unknown` are the
        fills whose liquidity the ledger did not keep."""
        portfolio = cls(initial_cash)
        for fill in fills:
            portfolio.apply_fill(fill, liquidity_known=fill.fill_id not in liquidity_unknown)
        portfolio.set_marks(marks or {})
        return portfolio

    def apply_fill(self, fill: Fill, *, liquidity_known: bool = True) -> FillOutcome:
        """Book a fill. A fill id already booked is ignored and reported as a duplicate when it
        agrees on every booked field (`fill_differences`), else `ConflictingFill` is raised.

        `liquidity_known=False` books a fill whose liquidity is a placeholder: later copies of
        it are then not compared on liquidity.
        """
        seen = self._ledger.get(fill.fill_id)
        if seen is not None:
            differences = fill_differences(
                seen, fill, compare_liquidity=fill.fill_id not in self._liquidity_unknown
            )
            if differences:
                raise ConflictingFill(fill.fill_id, differences)
            return FillOutcome(False, True, self.position(fill.symbol), ZERO)
        if fill.quantity <= ZERO or fill.price <= ZERO or fill.fee < ZERO:
            raise ValueError(f"fill {fill.fill_id}: quantity and price must be positive, fee >= 0")
        self._ledger[fill.fill_id] = fill
        if not liquidity_known:
            self._liquidity_unknown.add(fill.fill_id)

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
                removed = _round_cost(cost * closing / abs(quantity))
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

    def has_fill(self, fill_id: FillId) -> bool:
        """Whether a fill with this id is booked."""
        return fill_id in self._ledger

    @property
    def liquidity_unknown(self) -> frozenset[FillId]:
        """Booked fills whose liquidity is a placeholder (`apply_fill(liquidity_known=False)`)."""
        return frozenset(self._liquidity_unknown)

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


def _round_cost(value: Decimal) -> Decimal:
    """`value` rounded to COST_QUANTUM, however large: quantizing needs the integer digits plus
    the quantum's twelve, which past about 1e16 is more than the default 28-digit context has
    (and `quantize` raises InvalidOperation rather than round)."""
    context = decimal.getcontext().copy()
    context.prec = max(context.prec, value.adjusted() + 1 + COST_PLACES)
    return value.quantize(COST_QUANTUM, context=context)


MISSING_LISTED = 20


class FillSequences:
    """Which venue fill sequences (1, 2, 3, ...) have been booked, and which are missing.

    The venue numbers its fills without holes, so a sequence missing below the highest one
    booked is a fill the books do not hold (yet: it may be on its way after a retry).
    """

    def __init__(self, sequences: Iterable[int] = ()) -> None:
        self._contiguous = 0
        self._above: set[int] = set()
        self._max = 0
        self._missing: list[int] | None = []  # the lowest missing ones, until the next add
        for sequence in sequences:
            self.add(sequence)

    def add(self, sequence: int) -> None:
        """Record a booked fill's sequence (again is harmless)."""
        if sequence < 1:
            raise ValueError(f"venue sequences start at 1, got {sequence}")
        if sequence <= self._contiguous or sequence in self._above:
            return
        self._missing = None
        self._max = max(self._max, sequence)
        if sequence != self._contiguous + 1:
            self._above.add(sequence)
            return
        self._contiguous = sequence
        while self._contiguous + 1 in self._above:
            self._contiguous += 1
            self._above.remove(self._contiguous)

    @property
    def booked(self) -> int:
        """The highest sequence with every sequence up to it booked (0 when 1 is missing)."""
        return self._contiguous

    @property
    def highest(self) -> int:
        """The highest sequence booked (0 when none)."""
        return self._max

    @property
    def missing_count(self) -> int:
        """How many sequences below the highest are not booked."""
        return self._max - self._contiguous - len(self._above)

    def missing(self, limit: int = MISSING_LISTED) -> list[int]:
        """The lowest sequences below the highest that are not booked, ascending (at most
        `limit`, itself at most MISSING_LISTED)."""
        if self._missing is None:
            self._missing = list(itertools.islice(self._holes(), MISSING_LISTED))
        return self._missing[:limit]

    def _holes(self) -> Iterator[int]:
        previous = self._contiguous
        for sequence in sorted(self._above):
            yield from range(previous + 1, sequence)
            previous = sequence


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
