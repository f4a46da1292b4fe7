"""Small builders of trading values for the tests: domain quotes, orders and fills, fill events."""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal

from backend.infra.db.models import OrderRecord
from backend.trading.events import MarketTick, OrderFilled
from backend.trading.types import (
    ClientOrderId,
    Fill,
    FillId,
    Liquidity,
    OrderRequest,
    OrderType,
    Quote,
    Side,
    Symbol,
    TimeInForce,
)

BTC = Symbol("BTCUSDT")
ETH = Symbol("ETHUSDT")


def D(value: str | int) -> Decimal:
    return Decimal(value)


def quote(
    bid: str, ask: str, *, volume: str = "10", ts_ms: int = 1_000, symbol: Symbol = BTC
) -> Quote:
    return Quote(symbol, D(bid), D(ask), D(bid), D(volume), ts_ms)


def request(
    side: Side,
    quantity: str,
    *,
    limit: str | None = None,
    cid: str = "qt-1",
    symbol: Symbol = BTC,
    reduce_only: bool = False,
    tif: TimeInForce = TimeInForce.GTC,
) -> OrderRequest:
    return OrderRequest(
        ClientOrderId(cid),
        symbol,
        side,
        D(quantity),
        OrderType.LIMIT if limit is not None else OrderType.MARKET,
        D(limit) if limit is not None else None,
        tif,
        reduce_only,
    )


def fill(
    side: Side,
    quantity: str | Decimal,
    price: str | Decimal,
    *,
    fee: str | Decimal = "0",
    fill_id: str = "f-1",
    client_order_id: str = "qt-1",
    symbol: Symbol = BTC,
    liquidity: Liquidity = Liquidity.TAKER,
    ts_ms: int = 1_000,
) -> Fill:
    """A domain fill; `fill_event` is the same fill as execution publishes it."""
    return Fill(
        FillId(fill_id),
        ClientOrderId(client_order_id),
        symbol,
        side,
        Decimal(quantity),
        Decimal(price),
        Decimal(fee),
        liquidity,
        ts_ms,
    )


def fill_event(
    fill_id: str,
    side: str,
    quantity: str,
    price: str,
    fee: str,
    symbol: str = "BTCUSDT",
    sequence: int | None = None,
    liquidity: str = "TAKER",
    *,
    client_order_id: str | None = None,
    ts_ms: int | None = None,
) -> OrderFilled:
    """An `OrderFilled` event. The order id defaults to the fill id up to its last "-"
    ("o1-2" is the second fill of "o1"), the time to now."""
    domain = fill(
        Side(side),
        quantity,
        price,
        fee=fee,
        fill_id=fill_id,
        client_order_id=client_order_id or fill_id.rsplit("-", 1)[0],
        symbol=Symbol(symbol),
        liquidity=Liquidity(liquidity),
        ts_ms=time.time_ns() // 1_000_000 if ts_ms is None else ts_ms,
    )
    return OrderFilled(**dataclasses.asdict(domain), sequence=sequence)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def market_tick(
    bid: str, ask: str, symbol: str = "BTCUSDT", volume: str = "1000", ts_ms: int | None = None
) -> MarketTick:
    """A `MarketTick` as the market-data feed publishes it (last = bid), stamped now by default."""
    return MarketTick(
        symbol=symbol,
        bid=Decimal(bid),
        ask=Decimal(ask),
        last=Decimal(bid),
        volume=Decimal(volume),
        ts_ms=now_ms() if ts_ms is None else ts_ms,
    )


def order_record(
    client_order_id: str,
    *,
    symbol: str = "BTCUSDT",
    side: str = "BUY",
    order_type: str = "MARKET",
    quantity: str | Decimal = "0.01",
    limit_price: str | Decimal | None = None,
    time_in_force: str = "GTC",
) -> OrderRecord:
    """A NEW order's database row."""
    return OrderRecord(
        client_order_id=client_order_id,
        symbol=symbol,
        side=side,
        order_type=order_type,
        quantity=Decimal(quantity),
        limit_price=None if limit_price is None else Decimal(limit_price),
        time_in_force=time_in_force,
        status="NEW",
    )
