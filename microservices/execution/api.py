"""execution's HTTP API: place, read and cancel orders; the venue's quotes and balances."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backend.infra.db.models import FillRecord
from backend.infra.service import Resources, resources_of
from backend.trading.approval import Approval, ApprovalError, verify_approval
from backend.trading.types import ClientOrderId, OrderRequest, OrderType, Side, Symbol, TimeInForce

from . import metrics
from .desk import OrderDesk, OrderNotFound, OrderNotOpen
from .store import StoredOrder

router = APIRouter()

PositiveDecimal = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]


class ApprovalIn(BaseModel):
    """The approval risk-safety returned from POST /check."""

    decision_id: str = Field(min_length=1, max_length=64)
    token: str = Field(min_length=1, max_length=128)
    expires_ms: int
    epoch: int = Field(default=0, ge=0)


class OrderCreate(BaseModel):
    """An order to place; `client_order_id` makes the request idempotent."""

    model_config = ConfigDict(extra="ignore")

    client_order_id: str = Field(min_length=1, max_length=64)
    symbol: str = Field(min_length=1, max_length=32)
    side: Literal["BUY", "SELL"]
    quantity: PositiveDecimal
    order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    limit_price: PositiveDecimal | None = None
    time_in_force: Literal["GTC", "IOC"] = "GTC"
    reduce_only: bool = False
    approval: ApprovalIn | None = None

    @model_validator(mode="after")
    def _price_fits_type(self) -> OrderCreate:
        if self.order_type == "LIMIT" and self.limit_price is None:
            raise ValueError("limit_price is required for a LIMIT order")
        if self.order_type == "MARKET" and self.limit_price is not None:
            raise ValueError("limit_price must be null for a MARKET order")
        return self

    def to_request(self) -> OrderRequest:
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


class FillPublic(BaseModel):
    fill_id: str
    # The venue's order of fills (fill timestamps mix quote time and wall time, so they cannot
    # order fills of resting and market orders against each other).
    sequence: int
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: str
    filled_at: datetime

    @classmethod
    def of(cls, fill: FillRecord) -> FillPublic:
        return cls(
            fill_id=fill.fill_id,
            sequence=fill.id,
            quantity=fill.quantity,
            price=fill.price,
            fee=fill.fee,
            liquidity=fill.liquidity,
            filled_at=fill.filled_at,
        )


class OrderPublic(BaseModel):
    client_order_id: str
    status: str
    symbol: str
    side: str
    quantity: Decimal
    filled_quantity: Decimal
    avg_fill_price: Decimal | None
    order_type: str
    limit_price: Decimal | None
    time_in_force: str
    reduce_only: bool
    reason: str
    risk_decision_id: str | None
    created_at: datetime
    updated_at: datetime
    fills: list[FillPublic]

    @classmethod
    def of(cls, stored: StoredOrder) -> OrderPublic:
        row = stored.record
        return cls(
            client_order_id=row.client_order_id,
            status=row.status,
            symbol=row.symbol,
            side=row.side,
            quantity=row.quantity,
            filled_quantity=row.filled_quantity,
            avg_fill_price=row.average_fill_price,
            order_type=row.order_type,
            limit_price=row.limit_price,
            time_in_force=row.time_in_force,
            reduce_only=row.reduce_only,
            reason=stored.reason,
            risk_decision_id=row.risk_decision_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
            fills=[FillPublic.of(f) for f in stored.fills],
        )


class OrdersPublic(BaseModel):
    data: list[OrderPublic]
    count: int


class OrderEventPublic(BaseModel):
    sequence: int
    kind: str
    from_status: str | None
    to_status: str
    filled_quantity: Decimal
    fill_quantity: Decimal | None
    fill_price: Decimal | None
    reason: str
    trace_id: str | None
    occurred_at: datetime


class OrderEventsPublic(BaseModel):
    data: list[OrderEventPublic]
    count: int


class QuotePublic(BaseModel):
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: Decimal
    ts_ms: int


class HoldingPublic(BaseModel):
    symbol: str
    quantity: Decimal
    available: Decimal


class AccountPublic(BaseModel):
    """The venue's balances: reserved amounts back the open orders."""

    cash: Decimal
    reserved_cash: Decimal
    available_cash: Decimal
    holdings: list[HoldingPublic]
    open_orders: int


def desk_of(resources: Annotated[Resources, Depends(resources_of)]) -> OrderDesk:
    desk: OrderDesk = resources.extras["desk"]
    return desk


Desk = Annotated[OrderDesk, Depends(desk_of)]


@router.post("/orders", status_code=status.HTTP_201_CREATED)
async def place_order(body: OrderCreate, response: Response, desk: Desk) -> OrderPublic:
    """Place an order approved by risk-safety; a known client order id returns that order."""
    violation = desk.venue.violation(body.to_request())
    if violation is not None and await desk.store.get(body.client_order_id) is None:
        # An order the venue's instrument rules refuse is a bad request: 422 naming the field
        # and the rule, as for any other invalid field (the venue would reject it anyway).
        detail = [
            {
                "loc": ["body", violation.field],
                "msg": violation.reason,
                "type": "instrument_rule",
                "ctx": {"rule": violation.rule},
            }
        ]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    approval = body.approval
    try:
        verify_approval(
            desk.settings.approval_secret.get_secret_value(),
            Approval(approval.decision_id, approval.token, approval.expires_ms, approval.epoch)
            if approval
            else None,
            order=body.to_request(),
            now_ms=time.time_ns() // 1_000_000,
            # A retry of an order already placed gets it back even after its approval lapsed.
            check_expiry=await desk.store.get(body.client_order_id) is None,
        )
    except ApprovalError as exc:
        metrics.APPROVAL_REFUSALS.labels(exc.problem.value).inc()
        desk.log.warning(
            "order refused",
            client_order_id=body.client_order_id,
            symbol=body.symbol,
            problem=exc.problem.value,
            reason=str(exc),
        )
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from None
    assert approval is not None
    submission = await desk.submit(body.to_request(), approval.decision_id)
    if not submission.created:
        response.status_code = status.HTTP_200_OK
    return OrderPublic.of(submission.order)


@router.get("/orders")
async def list_orders(
    desk: Desk,
    status_: Annotated[str | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> OrdersPublic:
    """Newest orders first, optionally only those of one status (e.g. ACCEPTED)."""
    orders = await desk.store.recent(status=status_.upper() if status_ else None, limit=limit)
    return OrdersPublic(data=[OrderPublic.of(o) for o in orders], count=len(orders))


@router.post("/orders/cancel-all")
async def cancel_all_orders(
    desk: Desk, symbol: Annotated[str | None, Query()] = None
) -> OrdersPublic:
    """Cancel every working order (of one symbol, if given)."""
    orders = await desk.cancel_all(symbol)
    return OrdersPublic(data=[OrderPublic.of(o) for o in orders], count=len(orders))


@router.get("/orders/{client_order_id}")
async def get_order(client_order_id: str, desk: Desk) -> OrderPublic:
    stored = await desk.store.get(client_order_id)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {client_order_id}")
    return OrderPublic.of(stored)


@router.get("/orders/{client_order_id}/events")
async def get_order_events(client_order_id: str, desk: Desk) -> OrderEventsPublic:
    """Every transition of an order, as persisted."""
    rows = await desk.store.events(client_order_id)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {client_order_id}")
    data = [
        OrderEventPublic(
            sequence=r.sequence,
            kind=r.kind,
            from_status=r.from_status,
            to_status=r.to_status,
            filled_quantity=r.filled_quantity,
            fill_quantity=r.fill_quantity,
            fill_price=r.fill_price,
            reason=r.reason,
            trace_id=r.trace_id,
            occurred_at=r.occurred_at,
        )
        for r in rows
    ]
    return OrderEventsPublic(data=data, count=len(data))


@router.post("/orders/{client_order_id}/cancel")
async def cancel_order(client_order_id: str, desk: Desk) -> OrderPublic:
    try:
        stored = await desk.cancel(client_order_id)
    except OrderNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {client_order_id}") from None
    except OrderNotOpen as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return OrderPublic.of(stored)


@router.get("/quotes")
async def get_quotes(desk: Desk) -> list[QuotePublic]:
    """The latest quote of every symbol the venue has seen."""
    return [
        QuotePublic(
            symbol=q.symbol, bid=q.bid, ask=q.ask, last=q.last, volume=q.volume, ts_ms=q.ts_ms
        )
        for q in desk.quotes().values()
    ]


@router.get("/account")
async def get_account(desk: Desk) -> AccountPublic:
    venue = desk.venue
    symbols = desk.symbols()
    return AccountPublic(
        cash=venue.cash,
        reserved_cash=venue.reserved_cash,
        available_cash=venue.available_cash,
        holdings=[
            HoldingPublic(
                symbol=s,
                quantity=venue.holding(Symbol(s)),
                available=venue.available_quantity(Symbol(s)),
            )
            for s in symbols
        ],
        open_orders=len(venue.open_orders()),
    )
