"""execution's HTTP API: place, read and cancel orders; the venue's quotes and balances; the
trading state it enforces (pushed by risk-safety) and its exposure view for risk-safety."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status

from backend.infra.db.models import FillRecord
from backend.infra.service import JsonBodyRoute, SentAnswer, provided
from backend.trading.approval import ApprovalError
from backend.trading.orders import Order
from backend.trading.types import Symbol
from microservices.contracts.common import IDENTIFIER_PATTERN, MAX_INT64
from microservices.contracts.execution import (
    AccountPublic,
    ExposurePublic,
    FillPublic,
    HoldingPublic,
    OrderCreate,
    OrderEventPublic,
    OrderEventsPublic,
    OrderPublic,
    OrdersPublic,
    QuotePublic,
    RiskStateIn,
    RiskStatePublic,
    RiskStateUpdatePublic,
    WorkingOrderPublic,
)

from . import metrics
from .desk import (
    InvalidState,
    OrderConflict,
    OrderDesk,
    OrderNotFound,
    OrderNotOpen,
    TradingClosed,
)
from .riskstate import Outcome
from .store import PlacedOrder, StoredOrder

router = APIRouter()

ClientOrderIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=IDENTIFIER_PATTERN)]


def fill_public(fill: FillRecord) -> FillPublic:
    return FillPublic(
        fill_id=fill.fill_id,
        sequence=fill.id,
        quantity=fill.quantity,
        price=fill.price,
        fee=fill.fee,
        liquidity=fill.liquidity,
        filled_at=fill.filled_at,
    )


def placed_public(placed: PlacedOrder) -> OrderPublic:
    """The answer of a new order, from the values written (the same as a read would give).

    Built without validation: the values are the ones just written, of the fields' own types
    (`tests/microservices/execution/test_order_path.py` pins the answer, byte for byte, to the
    one a read of the rows gives)."""
    v = placed.values
    return OrderPublic.model_construct(
        client_order_id=v["client_order_id"],
        status=v["status"],
        symbol=v["symbol"],
        side=v["side"],
        quantity=v["quantity"],
        filled_quantity=v["filled_quantity"],
        avg_fill_price=v["average_fill_price"],
        order_type=v["order_type"],
        limit_price=v["limit_price"],
        time_in_force=v["time_in_force"],
        reduce_only=v["reduce_only"],
        reason=placed.reason,
        risk_decision_id=v["risk_decision_id"],
        created_at=v["created_at"],
        updated_at=v["updated_at"],
        fills=[
            FillPublic.model_construct(
                fill_id=f["fill_id"],
                sequence=f["id"],
                quantity=f["quantity"],
                price=f["price"],
                fee=f["fee"],
                liquidity=f["liquidity"],
                filled_at=f["filled_at"],
            )
            for f in placed.fills
        ],
    )


def order_public(stored: StoredOrder) -> OrderPublic:
    row = stored.record
    return OrderPublic(
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
        fills=[fill_public(f) for f in stored.fills],
    )


Desk = Annotated[OrderDesk, Depends(provided(OrderDesk))]


async def place_order(body: OrderCreate, desk: Desk) -> Response:
    """Place an order approved by risk-safety.

    A known client order id with the same order returns that order (200); with a different
    order it is a 409 naming the fields that differ. A new order needs an approval for exactly
    this order, unexpired and of the current trading-state epoch (else 403); while trading is
    not ACTIVE, or execution holds no fresh verified state, only reduce-only sells are accepted
    (else 403 naming the state).
    """
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
        submission = await desk.place(
            body.to_request(),
            approval.to_approval() if approval else None,
        )
    except OrderConflict as exc:
        desk.log.warning(
            "order refused: client order id reused",
            client_order_id=body.client_order_id,
            fields=list(exc.fields),
        )
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail={"message": str(exc), "fields": list(exc.fields)}
        ) from None
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
    except TradingClosed as exc:
        desk.log.warning(
            "order refused: trading closed",
            client_order_id=body.client_order_id,
            symbol=body.symbol,
            state=exc.state,
            reason=str(exc),
        )
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from None
    try:
        order = submission.order
        public = placed_public(order) if isinstance(order, PlacedOrder) else order_public(order)
        content = public.model_dump_json().encode()
    except BaseException:
        if submission.hold is not None:
            submission.hold.release()
        raise
    code = status.HTTP_201_CREATED if submission.created else status.HTTP_200_OK
    hold = submission.hold
    # Once the answer is sent, the outbox's relay may publish the order's events; until then
    # the event loop is the answer's.
    return SentAnswer(content, code, hold.release if hold is not None else None)


# The hot path: the body validated once, the desk looked up without dependency solving.
router.add_api_route(
    "/orders",
    place_order,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=OrderPublic,
    route_class_override=JsonBodyRoute,
)


@router.post("/risk/state")
async def push_risk_state(body: RiskStateIn, desk: Desk) -> RiskStateUpdatePublic:
    """Adopt a trading state signed by risk-safety if its epoch is higher than the one enforced.

    The same epoch again changes nothing (200); a lower epoch, or the same epoch with another
    state, is ignored (409); a bad signature is 403. Adopting a state other than ACTIVE cancels
    every working order that could increase exposure; their ids are in `canceled`.
    """
    try:
        update = await desk.update_state(body.to_signed_state(), source="push", reason=body.reason)
    except InvalidState as exc:
        desk.log.warning("trading state refused", state=body.state, epoch=body.epoch)
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from None
    adopted = update.adopted
    if update.outcome in (Outcome.STALE, Outcome.CONFLICT):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=(
                f"execution enforces {adopted.state} in epoch {adopted.epoch}; "
                f"{body.state} in epoch {body.epoch} is not newer, so it is ignored"
            ),
        )
    return RiskStateUpdatePublic(
        state=adopted.state, epoch=adopted.epoch, canceled=list(update.canceled)
    )


@router.get("/risk/state")
async def get_risk_state(desk: Desk) -> RiskStatePublic:
    """The trading state execution enforces and the age of its lease."""
    await desk.refresh()
    gate = desk.gate
    now_s = time.monotonic()
    adopted = gate.adopted
    age_s = gate.lease_age_s(now_s)
    blocker = gate.blocker(now_s)
    return RiskStatePublic(
        state=adopted.state if adopted else None,
        epoch=adopted.epoch if adopted else None,
        source=adopted.source if adopted else None,
        reason=adopted.reason if adopted else None,
        adopted_at_ms=adopted.adopted_at_ms if adopted else None,
        adopted_fill_sequence=adopted.fill_sequence if adopted else None,
        lease_ms=gate.lease_ms,
        lease_age_ms=round(age_s * 1000) if age_s is not None else None,
        lease_expired=gate.lease_expired(now_s),
        accepts="ALL" if blocker is None else "REDUCE_ONLY",
        blocker=blocker,
    )


@router.get("/exposure")
async def get_exposure(
    desk: Desk, since_ms: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0
) -> ExposurePublic:
    """Holdings (reserved included), working orders, the highest fill sequence, the enforced
    state, and every client order id received at or after `since_ms`, read in one step."""
    view = await desk.exposure(since_ms)
    return ExposurePublic(
        as_of_ms=view.as_of_ms,
        fill_sequence=view.fill_sequence,
        risk_state=view.risk_state,
        risk_epoch=view.risk_epoch,
        holdings={str(s): q for s, q in view.holdings.items()},
        working=[_working_public(o) for o in view.working],
        client_order_ids_since=view.client_order_ids_since,
    )


def _working_public(order: Order) -> WorkingOrderPublic:
    return WorkingOrderPublic(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side.value,
        order_type=order.order_type.value,
        limit_price=order.limit_price,
        remaining_quantity=order.remaining_quantity,
        reduce_only=order.reduce_only,
    )


@router.get("/orders")
async def list_orders(
    desk: Desk,
    status_: Annotated[
        str | None, Query(alias="status", max_length=20, pattern=r"^[A-Za-z_]+$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> OrdersPublic:
    """Newest orders first, optionally only those of one status (e.g. ACCEPTED)."""
    orders = await desk.store.recent(status=status_.upper() if status_ else None, limit=limit)
    return OrdersPublic(data=[order_public(o) for o in orders], count=len(orders))


@router.post("/orders/cancel-all")
async def cancel_all_orders(
    desk: Desk,
    symbol: Annotated[
        str | None, Query(min_length=1, max_length=32, pattern=IDENTIFIER_PATTERN)
    ] = None,
) -> OrdersPublic:
    """Cancel every working order (of one symbol, if given)."""
    orders = await desk.cancel_all(symbol)
    return OrdersPublic(data=[order_public(o) for o in orders], count=len(orders))


@router.get("/orders/{client_order_id}")
async def get_order(client_order_id: ClientOrderIdPath, desk: Desk) -> OrderPublic:
    stored = await desk.store.get(client_order_id)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {client_order_id}")
    return order_public(stored)


@router.get("/orders/{client_order_id}/events")
async def get_order_events(client_order_id: ClientOrderIdPath, desk: Desk) -> OrderEventsPublic:
    """Every transition of an order, as persisted."""
    rows = await desk.store.events(client_order_id)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {client_order_id}")
    data = [OrderEventPublic.model_validate(r) for r in rows]
    return OrderEventsPublic(data=data, count=len(data))


@router.post("/orders/{client_order_id}/cancel")
async def cancel_order(client_order_id: ClientOrderIdPath, desk: Desk) -> OrderPublic:
    try:
        stored = await desk.cancel(client_order_id)
    except OrderNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {client_order_id}") from None
    except OrderNotOpen as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return order_public(stored)


@router.get("/quotes")
async def get_quotes(desk: Desk) -> list[QuotePublic]:
    """The latest quote of every symbol the venue has seen."""
    await desk.refresh()
    return [
        QuotePublic(
            symbol=q.symbol, bid=q.bid, ask=q.ask, last=q.last, volume=q.volume, ts_ms=q.ts_ms
        )
        for q in desk.quotes().values()
    ]


@router.get("/account")
async def get_account(desk: Desk) -> AccountPublic:
    await desk.refresh()
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
