"""portfolio-intelligence's public contract: portfolio, positions, fills, equity, performance."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from backend.trading.portfolio import Position
from backend.trading.risk import FillsFreshness, PortfolioSnapshot
from backend.trading.types import ZERO

from ._client import ServiceClient

SERVICE = "portfolio-intelligence"


class PositionPublic(BaseModel):
    symbol: str
    quantity: Decimal
    avg_price: Decimal | None
    mark: Decimal | None
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    fees: Decimal

    @classmethod
    def of(cls, position: Position, mark: Decimal | None) -> PositionPublic:
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
    """How much of the fill stream the books hold."""

    booked_sequence: int
    max_sequence: int
    gaps: list[int]
    pending: int
    lag: int | None
    dead_letters: int
    complete_as_of_ms: int | None
    # Why the books are not known complete; empty when they are.
    problems: list[str]


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

    def quantity_of(self, symbol: str) -> Decimal:
        """The position held in `symbol` (zero when none)."""
        return sum((p.quantity for p in self.positions if p.symbol == symbol), ZERO)

    def to_snapshot(self) -> PortfolioSnapshot:
        """The portfolio as the risk rules judge it."""
        return PortfolioSnapshot(
            as_of_ms=self.as_of_ms,
            equity=self.equity,
            peak_equity=self.peak_equity,
            daily_pnl=self.daily_pnl,
            fills=FillsFreshness(
                booked_sequence=self.fills.booked_sequence,
                gaps=tuple(self.fills.gaps),
                dead_letters=self.fills.dead_letters,
            ),
        )


class FillPublic(BaseModel):
    """A booked fill, read from the ledger row of the same field names."""

    model_config = ConfigDict(from_attributes=True)

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


class PortfolioClient(ServiceClient):
    """portfolio-intelligence's API as its callers use it."""

    service = SERVICE

    async def portfolio(self) -> PortfolioPublic:
        """`GET /portfolio`."""
        return await self._call("GET", "/portfolio", PortfolioPublic)

    async def equity_curve(self, limit: int = 1000) -> EquityCurvePublic:
        """`GET /equity-curve`: the newest `limit` equity points."""
        return await self._call("GET", "/equity-curve", EquityCurvePublic, params={"limit": limit})
