"""Execution persistence: orders, their transitions and their fills, one commit per report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.infra.db.models import FillRecord, OrderEventRow, OrderRecord
from backend.infra.eventbus import Event
from backend.infra.outbox import Outbox
from backend.infra.service import Resources
from backend.trading.events import OrderFilled
from backend.trading.orders import Order, OrderStatus
from backend.trading.types import Fill
from backend.trading.venue import VenueReport

OPEN_STATUSES = (OrderStatus.ACCEPTED.value, OrderStatus.PARTIALLY_FILLED.value)


def to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as persisted, with its fills in the order they happened."""

    record: OrderRecord
    fills: tuple[FillRecord, ...]
    reason: str = ""
    """Why the order was rejected or canceled, if it was."""


class OrderStore:
    """Reads and writes the execution tables through the service's unit of work."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def record(
        self,
        report: VenueReport,
        *,
        outbox: Outbox,
        events: Sequence[Event[Any]] = (),
        reserved_cash: Decimal = Decimal(0),
        traceparent: str | None = None,
        risk_decision_id: str | None = None,
    ) -> int | None:
        """Persist what one venue call did: the order's state and reservation, its transitions
        and fills, and the events announcing them (into the outbox, in the same commit).

        Returns the highest venue fill sequence written, None without fills."""
        order = report.order
        trace_id = traceparent.split("-")[1] if traceparent else None
        async with self._resources.session() as session:
            row = await session.scalar(
                select(OrderRecord).where(OrderRecord.client_order_id == order.client_order_id)
            )
            if row is None:
                row = OrderRecord(
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    side=order.side.value,
                    order_type=order.order_type.value,
                    quantity=order.quantity,
                    limit_price=order.limit_price,
                    time_in_force=order.time_in_force.value,
                    reduce_only=order.reduce_only,
                    risk_decision_id=risk_decision_id,
                    trace_context=traceparent,
                    created_at=to_datetime(order.created_ms),
                )
                session.add(row)
            _copy_progress(row, order)
            row.reserved_cash = reserved_cash
            await session.flush()
            for event in report.events:
                session.add(
                    OrderEventRow(
                        order_id=row.id,
                        client_order_id=event.client_order_id,
                        sequence=event.sequence,
                        kind=event.kind.value,
                        from_status=event.from_status.value if event.from_status else None,
                        to_status=event.to_status.value,
                        filled_quantity=event.filled_quantity,
                        fill_quantity=event.fill_quantity,
                        fill_price=event.fill_price,
                        reason=event.reason,
                        trace_id=trace_id,
                        occurred_at=to_datetime(event.ts_ms),
                    )
                )
            fill_rows = [fill_record(fill, row.id) for fill in report.fills]
            if fill_rows:
                # A fill row's id is the venue's fill sequence, which its order.filled carries.
                # It is numbered here, inside the transaction that writes the fills, rather than
                # by the database's autoincrement: a rolled-back transaction burns sequence
                # values on PostgreSQL, and the portfolio would wait forever for the fill of a
                # hole. The desk writes one order at a time, so max + 1 cannot race.
                last = await session.scalar(select(func.coalesce(func.max(FillRecord.id), 0)))
                for offset, fill_row in enumerate(fill_rows, start=1):
                    fill_row.id = int(last or 0) + offset
                session.add_all(fill_rows)
                await session.flush()
            sequences = {f.fill_id: f.id for f in fill_rows}
            for announcement in events:
                outbox.add(session, _with_sequence(announcement, sequences))
        return max(sequences.values(), default=None)

    async def get(self, client_order_id: str) -> StoredOrder | None:
        """One order and its fills; None if unknown."""
        async with self._resources.session() as session:
            row = await session.scalar(
                select(OrderRecord).where(OrderRecord.client_order_id == client_order_id)
            )
            if row is None:
                return None
            fills = await self._fills_of(session, [row.id])
            reasons = await self._reasons_of(session, [row.id])
            return StoredOrder(row, tuple(fills.get(row.id, ())), reasons.get(row.id, ""))

    async def recent(self, *, status: str | None, limit: int) -> list[StoredOrder]:
        """Newest orders first, optionally of one status, with their fills."""
        async with self._resources.session() as session:
            query = select(OrderRecord).order_by(OrderRecord.id.desc()).limit(limit)
            if status is not None:
                query = query.where(OrderRecord.status == status)
            rows = list(await session.scalars(query))
            ids = [r.id for r in rows]
            fills = await self._fills_of(session, ids)
            reasons = await self._reasons_of(session, ids)
            return [StoredOrder(r, tuple(fills.get(r.id, ())), reasons.get(r.id, "")) for r in rows]

    async def client_order_ids_since(self, since_ms: int) -> list[str]:
        """Every client order id received (persisted, in any status) at or after `since_ms`."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(OrderRecord.client_order_id)
                .where(OrderRecord.created_at >= to_datetime(since_ms))
                .order_by(OrderRecord.id)
            )
            return list(rows)

    async def events(self, client_order_id: str) -> list[OrderEventRow]:
        """Every persisted transition of one order, in sequence."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(OrderEventRow)
                .where(OrderEventRow.client_order_id == client_order_id)
                .order_by(OrderEventRow.sequence)
            )
            return list(rows)

    async def load_for_restore(self) -> tuple[list[FillRecord], list[StoredOrder]]:
        """Every fill (to rebuild balances) and the open orders with their fills."""
        async with self._resources.session() as session:
            fills = list(await session.scalars(select(FillRecord).order_by(FillRecord.id)))
            rows = list(
                await session.scalars(
                    select(OrderRecord)
                    .where(OrderRecord.status.in_(OPEN_STATUSES))
                    .order_by(OrderRecord.id)
                )
            )
        by_order: dict[int, list[FillRecord]] = {}
        for fill in fills:
            by_order.setdefault(fill.order_id, []).append(fill)
        return fills, [StoredOrder(r, tuple(by_order.get(r.id, ()))) for r in rows]

    @staticmethod
    async def _fills_of(
        session: AsyncSession, order_ids: Sequence[int]
    ) -> dict[int, list[FillRecord]]:
        if not order_ids:
            return {}
        rows = await session.scalars(
            select(FillRecord).where(FillRecord.order_id.in_(order_ids)).order_by(FillRecord.id)
        )
        result: dict[int, list[FillRecord]] = {}
        for fill in rows:
            result.setdefault(fill.order_id, []).append(fill)
        return result

    @staticmethod
    async def _reasons_of(session: AsyncSession, order_ids: Sequence[int]) -> dict[int, str]:
        if not order_ids:
            return {}
        rows = await session.execute(
            select(OrderEventRow.order_id, OrderEventRow.reason)
            .where(
                OrderEventRow.order_id.in_(order_ids),
                OrderEventRow.kind.in_(("REJECT", "CANCEL")),
            )
            .order_by(OrderEventRow.sequence)
        )
        return {order_id: reason for order_id, reason in rows}


def fill_record(fill: Fill, order_id: int) -> FillRecord:
    """The row of `fill` (its `id`, the venue sequence, is numbered when it is written)."""
    return FillRecord(**fill.columns(), order_id=order_id)


def _with_sequence(event: Event[Any], sequences: Mapping[str, int]) -> Event[Any]:
    """`event`, with the venue sequence (the fill row's id) if it announces one of these fills."""
    data = event.data
    if isinstance(data, OrderFilled) and data.fill_id in sequences:
        return replace(event, data=data.model_copy(update={"sequence": sequences[data.fill_id]}))
    return event


def _copy_progress(row: OrderRecord, order: Order) -> None:
    row.status = order.status.value
    row.filled_quantity = order.filled_quantity
    row.average_fill_price = order.average_fill_price
    row.sequence = order.sequence
    row.updated_at = to_datetime(order.updated_ms)
