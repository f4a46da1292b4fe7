"""position-monitor persistence: `monitored_positions`, one row per position, written with the
events that announce the change (through the outbox, in the same commit)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update

from backend.infra.db.models import MonitoredPosition
from backend.infra.eventbus import EventData
from backend.infra.outbox import Outbox
from backend.infra.service import Resources
from backend.trading.stops import (
    ExitConfig,
    ExitReason,
    Offset,
    OffsetKind,
    PriceSource,
    TrailingState,
)
from backend.trading.types import Symbol

from .positions import ExitState, Outcome, Stage, Status, Tracked

DETAIL_MAX_LEN = 2_000

_TABLE = cast(Table, MonitoredPosition.__table__)
_COLUMNS = [c.name for c in _TABLE.columns if c.name not in ("position_id", "updated_at")]
"""Every column a position's state writes (`columns_of`), its id aside."""
_INSERT = insert(_TABLE)
_UPDATE = (
    update(_TABLE)
    .where(_TABLE.c.position_id == bindparam("id_"))
    .values({name: bindparam(name) for name in _COLUMNS})
)


class PositionStore:
    """Reads and writes `monitored_positions` through the service's unit of work."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def save(
        self,
        positions: Sequence[Tracked],
        *,
        outbox: Outbox | None = None,
        events: Sequence[EventData] = (),
    ) -> None:
        """Write the rows of `positions`, which are held (each has its row already), and queue
        `events`, in one transaction."""
        await self.write((), positions, outbox=outbox, events=events)

    async def write(
        self,
        new: Sequence[Tracked],
        held: Sequence[Tracked],
        *,
        outbox: Outbox | None = None,
        events: Sequence[EventData] = (),
    ) -> None:
        """Insert the rows of `new` positions, update those of `held` ones (which have a row)
        and queue `events`, in one transaction, without reading a row first."""
        async with self._resources.session() as session:
            if new:
                await session.execute(_INSERT, [columns_of(p) for p in new])
            for p in held:
                values = columns_of(p)
                values["id_"] = values.pop("position_id")
                result = await session.execute(_UPDATE, values)
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise LookupError(f"position {p.position_id} has no row to update")
            if events:
                assert outbox is not None, "events need the outbox"
                for event in events:
                    outbox.add(session, event)

    async def live(self, symbols: Collection[str] | None = None) -> list[Tracked]:
        """Every position not closed (of `symbols` only, if given)."""
        query = select(MonitoredPosition).where(MonitoredPosition.status != Status.CLOSED.value)
        if symbols is not None:
            query = query.where(MonitoredPosition.symbol.in_(sorted(symbols)))
        async with self._resources.session() as session:
            return [tracked_of(row) for row in (await session.execute(query)).scalars()]

    async def max_sequences(self) -> dict[Symbol, int]:
        """Per symbol, the highest sequence any of its rows holds."""
        query = select(MonitoredPosition.symbol, func.max(MonitoredPosition.sequence)).group_by(
            MonitoredPosition.symbol
        )
        async with self._resources.session() as session:
            rows = (await session.execute(query)).all()
        return {Symbol(symbol): int(top) for symbol, top in rows if top is not None}

    async def get(self, position_id: str) -> Tracked | None:
        async with self._resources.session() as session:
            row = await session.get(MonitoredPosition, position_id)
            return None if row is None else tracked_of(row)

    async def exists(self, position_id: str) -> bool:
        return await self.get(position_id) is not None

    async def recent(self, *, status: str | None, limit: int) -> list[Tracked]:
        """The most recently opened positions first, optionally of one status."""
        query = (
            select(MonitoredPosition)
            .order_by(MonitoredPosition.opened_ms.desc(), MonitoredPosition.position_id)
            .limit(limit)
        )
        if status:
            query = query.where(MonitoredPosition.status == status)
        async with self._resources.session() as session:
            return [tracked_of(row) for row in (await session.execute(query)).scalars()]


def _offset_json(offset: Offset | None) -> dict[str, str] | None:
    return None if offset is None else {"value": str(offset.value), "kind": offset.kind.value}


def _offset(value: Any) -> Offset | None:
    return None if value is None else Offset(Decimal(value["value"]), OffsetKind(value["kind"]))


def config_json(config: ExitConfig) -> dict[str, Any]:
    """The stops as the `stops` column holds them (decimals as text, never floats)."""
    return {
        "stop_loss": _offset_json(config.stop_loss),
        "take_profit": _offset_json(config.take_profit),
        "trailing_stop": _offset_json(config.trailing_stop),
        "trailing_activation": _offset_json(config.trailing_activation),
        "time_limit_ms": config.time_limit_ms,
        "stop_loss_price": config.stop_loss_price.value,
        "take_profit_price": config.take_profit_price.value,
        "trailing_price": config.trailing_price.value,
    }


def config_of(value: dict[str, Any]) -> ExitConfig:
    return ExitConfig(
        stop_loss=_offset(value.get("stop_loss")),
        take_profit=_offset(value.get("take_profit")),
        trailing_stop=_offset(value.get("trailing_stop")),
        trailing_activation=_offset(value.get("trailing_activation")),
        time_limit_ms=value.get("time_limit_ms"),
        stop_loss_price=PriceSource(value.get("stop_loss_price", "BID_ASK")),
        take_profit_price=PriceSource(value.get("take_profit_price", "BID_ASK")),
        trailing_price=PriceSource(value.get("trailing_price", "BID_ASK")),
    )


def columns_of(p: Tracked) -> dict[str, Any]:
    """The row of `p`: one column per field."""
    trailing, exit_ = p.trailing, p.exit
    return {
        "position_id": p.position_id,
        "symbol": p.symbol,
        "status": p.status.value,
        "quantity": p.quantity,
        "entry_price": p.entry_price,
        "opened_ms": p.opened_ms,
        "sequence": p.sequence,
        "stops": config_json(p.config),
        "entry_client_order_id": p.entry_client_order_id,
        "entry_traceparent": p.entry_traceparent,
        "best_price": trailing.best_price if trailing else None,
        "trailing_active": trailing.active if trailing else False,
        "trailing_level": trailing.level if trailing else None,
        "exit_round": p.exit_round,
        "exit_reason": exit_.reason.value if exit_ else None,
        "exit_stage": exit_.stage.value if exit_ else None,
        "exit_client_order_id": exit_.client_order_id if exit_ else None,
        "exit_trigger_price": exit_.trigger_price if exit_ else None,
        "exit_observed_price": exit_.observed_price if exit_ else None,
        "exit_quantity": exit_.quantity if exit_ else None,
        "exit_started_ms": exit_.started_ms if exit_ else None,
        "exit_outcome": exit_.outcome.value if exit_ and exit_.outcome else None,
        "exit_detail": exit_.detail[:DETAIL_MAX_LEN] if exit_ else "",
        "trace_id": p.trace_id,
        "closed_ms": p.closed_ms,
    }


def tracked_of(row: MonitoredPosition) -> Tracked:
    """The position a row holds."""
    trailing = None
    if row.best_price is not None:
        trailing = TrailingState(row.best_price, row.trailing_active, row.trailing_level)
    exit_ = None
    if row.exit_reason is not None and row.exit_client_order_id is not None:
        exit_ = ExitState(
            reason=ExitReason(row.exit_reason),
            stage=Stage(row.exit_stage or Stage.EXIT.value),
            client_order_id=row.exit_client_order_id,
            trigger_price=row.exit_trigger_price or Decimal(0),
            observed_price=row.exit_observed_price or Decimal(0),
            quantity=row.exit_quantity or Decimal(0),
            started_ms=row.exit_started_ms or 0,
            outcome=Outcome(row.exit_outcome) if row.exit_outcome else None,
            detail=row.exit_detail,
        )
    return Tracked(
        position_id=row.position_id,
        symbol=Symbol(row.symbol),
        status=Status(row.status),
        quantity=row.quantity,
        entry_price=row.entry_price,
        opened_ms=row.opened_ms,
        sequence=row.sequence,
        config=config_of(row.stops),
        entry_client_order_id=row.entry_client_order_id,
        entry_traceparent=row.entry_traceparent,
        trailing=trailing,
        exit_round=row.exit_round,
        exit=exit_,
        trace_id=row.trace_id,
        closed_ms=row.closed_ms,
    )
