"""position-monitor's HTTP API on its side port: the positions it watches, and their stops."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from backend.infra.service import provided
from microservices.contracts.position_monitor import (
    ExitPublic,
    MonitoredPositionPublic,
    MonitoredPositionsPublic,
    Stops,
)

from .monitor import NotChangeable, NotFound, PositionMonitor
from .positions import Tracked

router = APIRouter()

Monitor = Annotated[PositionMonitor, Depends(provided(PositionMonitor))]


def public(p: Tracked) -> MonitoredPositionPublic:
    trailing, exit_ = p.trailing, p.exit
    return MonitoredPositionPublic(
        position_id=p.position_id,
        symbol=p.symbol,
        status=p.status.value,
        quantity=p.quantity,
        entry_price=p.entry_price,
        opened_ms=p.opened_ms,
        stops=Stops.of(p.config),
        stop_loss_level=p.stop_loss_level(),
        take_profit_level=p.take_profit_level(),
        best_price=trailing.best_price if trailing else None,
        trailing_active=trailing.active if trailing else False,
        trailing_level=trailing.level if trailing else None,
        exit_round=p.exit_round,
        exit=None
        if exit_ is None
        else ExitPublic(
            reason=exit_.reason.value,
            stage=exit_.stage.value,
            client_order_id=exit_.client_order_id,
            trigger_price=exit_.trigger_price,
            observed_price=exit_.observed_price,
            quantity=exit_.quantity,
            started_ms=exit_.started_ms,
            outcome=exit_.outcome.value if exit_.outcome else None,
            detail=exit_.detail,
            trace_id=p.trace_id,
        ),
        closed_ms=p.closed_ms,
    )


@router.get("/positions", response_model=MonitoredPositionsPublic)
async def positions(
    monitor: Monitor,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MonitoredPositionsPublic:
    """The positions watched and closed, most recently opened first; `status` filters
    (`OPEN`, `EXITING`, `ALERTED`, `CLOSED`)."""
    rows = await monitor.store.recent(status=status.upper() if status else None, limit=limit)
    return MonitoredPositionsPublic(data=[public(p) for p in rows], count=len(rows))


@router.get("/positions/{position_id}", response_model=MonitoredPositionPublic)
async def position(monitor: Monitor, position_id: str) -> MonitoredPositionPublic:
    found = monitor.positions.get(position_id) or await monitor.store.get(position_id)
    if found is None:
        raise HTTPException(404, f"no position {position_id}")
    return public(found)


@router.put("/positions/{position_id}/stops", response_model=MonitoredPositionPublic)
async def set_stops(monitor: Monitor, position_id: str, stops: Stops) -> MonitoredPositionPublic:
    """Replace the position's stops (needs the bearer token). The trailing level already
    reached never loosens; an ALERTED position is re-armed."""
    try:
        changed = await monitor.set_stops(position_id, stops.to_config())
    except NotFound:
        raise HTTPException(404, f"no position {position_id}") from None
    except NotChangeable as exc:
        raise HTTPException(409, str(exc)) from None
    return public(changed)


@router.get("/stops/defaults", response_model=Stops)
async def default_stops(monitor: Monitor) -> Stops:
    """The stops a new position starts with (`MONITOR_*` settings)."""
    return Stops.of(monitor.defaults)
