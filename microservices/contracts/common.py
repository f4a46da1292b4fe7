"""Wire types more than one service's contract uses: identifiers, plain decimals, the order."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from backend.infra.service import Price, Quantity
from backend.trading.types import (
    ClientOrderId,
    OrderRequest,
    OrderType,
    Side,
    Symbol,
    TimeInForce,
    field_values,
)

MAX_INT64 = 2**63 - 1
IDENTIFIER_PATTERN = r"^[!-~]+$"
"""Printable ASCII without spaces: identifiers go into SQL, logs and span attributes, and a NUL
byte, for one, is refused by PostgreSQL (a 500 if it got that far)."""

PlainDecimal = Annotated[Decimal, PlainSerializer(lambda v: format(v, "f"), when_used="json")]
"""A decimal written in plain notation (`"100"`, never `"1E+2"`)."""


class OrderFields(BaseModel):
    """An order as it travels to risk-safety (`POST /check`) and to execution (`POST /orders`).

    Each of them narrows what it accepts; both map it to the domain's `OrderRequest` here.
    `side`, `order_type` and `time_in_force` are the domain enums' values spelled as literals,
    so a bad value is refused with the same 422 body (`literal_error`) as ever.
    """

    model_config = ConfigDict(extra="ignore")

    client_order_id: str = Field(min_length=1, max_length=64)
    symbol: str = Field(min_length=1, max_length=32)
    side: Literal["BUY", "SELL"]
    quantity: Quantity
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    limit_price: Price | None = None
    time_in_force: Literal["GTC", "IOC"] = "GTC"
    reduce_only: bool = False

    def to_request(self) -> OrderRequest:
        """The domain order these fields describe."""
        return OrderRequest(
            client_order_id=ClientOrderId(self.client_order_id),
            symbol=Symbol(self.symbol),
            side=Side(self.side),
            quantity=self.quantity,
            order_type=OrderType(self.order_type),
            limit_price=self.limit_price,
            time_in_force=TimeInForce(self.time_in_force),
            reduce_only=self.reduce_only,
        )

    @classmethod
    def of(cls, order: OrderRequest, **extra: Any) -> Self:
        """The model of `order`; `extra` fills the fields the model adds (a price, an approval)."""
        return cls(**field_values(order), **extra)
