"""Small builders for trading-domain values used across the tests."""

from __future__ import annotations

from decimal import Decimal

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
    symbol: Symbol = BTC,
    ts_ms: int = 1_000,
) -> Fill:
    return Fill(
        FillId(fill_id),
        ClientOrderId("qt-1"),
        symbol,
        side,
        Decimal(quantity),
        Decimal(price),
        Decimal(fee),
        Liquidity.TAKER,
        ts_ms,
    )
