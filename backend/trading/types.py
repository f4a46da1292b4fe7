"""Value types shared across the trading domain: identifiers, sides, quotes, orders and fills."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, NewType, Protocol

Symbol = NewType("Symbol", str)
ClientOrderId = NewType("ClientOrderId", str)
FillId = NewType("FillId", str)

ZERO = Decimal(0)

Direction = Literal["BUY", "SELL", "HOLD"]
"""A model's view on a symbol: buy, sell, or do nothing."""


class Side(StrEnum):
    """Direction of an order or fill."""

    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the sign a fill adds to a position."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        """The side that closes a position opened on this side."""
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    """How an order is priced."""

    MARKET = "MARKET"
    LIMIT = "LIMIT"


class TimeInForce(StrEnum):
    """How long an order keeps working."""

    GTC = "GTC"
    IOC = "IOC"


class Liquidity(StrEnum):
    """Whether a fill added liquidity (maker) or took it (taker)."""

    MAKER = "MAKER"
    TAKER = "TAKER"


@dataclass(frozen=True, slots=True)
class Quote:
    """Top of book for one symbol at one instant; `volume` is the quantity at the touch."""

    symbol: Symbol
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: Decimal
    ts_ms: int

    def __post_init__(self) -> None:
        if self.bid <= ZERO or self.ask <= ZERO or self.last <= ZERO:
            raise ValueError(f"{self.symbol}: prices must be positive")
        if self.bid > self.ask:
            raise ValueError(f"{self.symbol}: bid {self.bid} is above ask {self.ask}")
        if self.volume < ZERO:
            raise ValueError(f"{self.symbol}: volume must not be negative")

    @property
    def mid(self) -> Decimal:
        """Midpoint of bid and ask."""
        return (self.bid + self.ask) / 2


Tick = Quote


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An intent to trade, before any venue has seen it."""

    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side
    quantity: Decimal
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False

    @property
    def signed_quantity(self) -> Decimal:
        """Quantity with the side's sign: what the order adds to a position if fully filled."""
        return self.quantity * self.side.sign


class StoredFill(Protocol):
    """A fill as a table keeps it: the fill's fields as text and numbers, its time as
    `filled_at` (a table may have kept no liquidity for old fills)."""

    @property
    def fill_id(self) -> str: ...
    @property
    def client_order_id(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def quantity(self) -> Decimal: ...
    @property
    def price(self) -> Decimal: ...
    @property
    def fee(self) -> Decimal: ...
    @property
    def liquidity(self) -> str | None: ...
    @property
    def filled_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of (part of) an order. `fee` is in the quote currency and always >= 0."""

    fill_id: FillId
    client_order_id: ClientOrderId
    symbol: Symbol
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: Liquidity
    ts_ms: int

    @property
    def notional(self) -> Decimal:
        """Quantity times price, before fees."""
        return self.quantity * self.price

    @classmethod
    def from_stored(cls, row: StoredFill, *, liquidity: Liquidity | None = None) -> Fill:
        """The fill a table row holds; `liquidity` stands in where the row kept none."""
        known = row.liquidity or liquidity
        if known is None:
            raise ValueError(f"fill {row.fill_id}: the row keeps no liquidity")
        return cls(
            FillId(row.fill_id),
            ClientOrderId(row.client_order_id),
            Symbol(row.symbol),
            Side(row.side),
            row.quantity,
            row.price,
            row.fee,
            Liquidity(known),
            int(row.filled_at.timestamp() * 1000),
        )

    def columns(self) -> dict[str, Any]:
        """The fill as a table's columns (the inverse of `from_stored`)."""
        return {
            "fill_id": self.fill_id,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "quantity": self.quantity,
            "price": self.price,
            "fee": self.fee,
            "liquidity": self.liquidity.value,
            "filled_at": datetime.fromtimestamp(self.ts_ms / 1000, UTC),
        }

    def attributes(self) -> dict[str, str]:
        """The fill as span attributes and log fields (amounts as exact decimal text)."""
        return {
            "client_order_id": self.client_order_id,
            "fill_id": self.fill_id,
            "symbol": self.symbol,
            "side": self.side.value,
            "quantity": str(self.quantity),
            "price": str(self.price),
            "fee": str(self.fee),
            "liquidity": self.liquidity.value,
        }


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def field_values(obj: Any) -> dict[str, Any]:
    """A flat dataclass's fields by name: `dataclasses.asdict` without its deep copy, which
    the types here (strings, enums, decimals, numbers) do not need and which cost a deep copy
    per value on the order path."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return {name: getattr(obj, name) for name in names}
