"""risk-safety assembly: the guard, its market data, its routes and its start-up restore."""

from __future__ import annotations

from backend.infra.service import Service
from backend.trading.approval import DEVELOPMENT_SECRET
from backend.trading.events import MarketTick

from .api import router
from .guard import RiskGuard
from .settings import RiskSafetySettings

NAME = "risk-safety"


def create_service(settings: RiskSafetySettings | None = None) -> Service:
    """The risk-safety service (port 8003): pre-trade checks and the kill switch."""
    # Only quotes are consumed, and only fresh ones count: a new group starts at the end.
    service = Service(NAME, database=True, eventbus=True, consume_from="latest")
    settings = settings or RiskSafetySettings()
    if settings.approval_secret.get_secret_value() == DEVELOPMENT_SECRET:
        service.logger.warning(
            "RISK_APPROVAL_SECRET is the development default; set it outside development"
        )
    guard = service.provide(RiskGuard(settings, service.resources, service.logger, service.tracer))
    service.on_startup(guard.restore)
    service.on_shutdown(guard.close)
    # Decisions and state changes reach the bus through the outbox, even after an outage.
    service.background("outbox-relay", guard.run_outbox_relay)
    service.background("read-refresh", guard.refresh_reads)
    service.background("state-recorder", guard.record_state_changes)
    # A quote replaces an older one only: a tick handled twice changes nothing.
    service.subscribe(MarketTick, guard.on_tick, deduplicate=False)
    service.app.include_router(router)
    return service
