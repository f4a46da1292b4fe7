"""position-monitor assembly: ticks and positions from the bus, the escalation, its routes."""

from __future__ import annotations

from backend.infra.service import Service
from backend.trading.events import MarketTick, PositionUpdated

from .api import router
from .monitor import PositionMonitor
from .settings import PositionMonitorSettings

NAME = "position-monitor"


def create_service(settings: PositionMonitorSettings | None = None) -> Service:
    """The position-monitor worker (health, metrics and its API on its side port, 8013)."""
    # From the earliest entry: a tick that crossed a stop while the monitor was down still
    # counts, and no position update is missed.
    service = Service(NAME, kind="worker", database=True, eventbus=True, consume_from="earliest")
    monitor = service.provide(
        PositionMonitor(
            settings or PositionMonitorSettings(), service.resources, service.logger, service.tracer
        )
    )
    service.on_startup(monitor.restore)
    service.subscribe_batch(PositionUpdated, monitor.on_positions)
    service.subscribe(MarketTick, monitor.on_tick, deduplicate=False)
    service.background("outbox-relay", monitor.run_outbox_relay)
    service.background("reconcile", monitor.run_reconcile)
    service.background("supervise", monitor.supervise)
    service.app.include_router(router)
    return service
