"""execution assembly: the order desk, its routes, its tick handler and its start-up restore."""

from __future__ import annotations

from backend.infra.service import Service
from backend.trading.approval import DEVELOPMENT_SECRET
from backend.trading.events import MarketTick

from .api import router
from .desk import OrderDesk
from .settings import ExecutionSettings

NAME = "execution"


def create_service(settings: ExecutionSettings | None = None) -> Service:
    """The execution service (port 8002): orders on a paper venue, fills on the bus, the
    trading state risk-safety pushes (POST /risk/state) and execution polls (GET /state)."""
    service = Service(NAME, database=True, eventbus=True)
    settings = settings or ExecutionSettings()
    if settings.approval_secret.get_secret_value() == DEVELOPMENT_SECRET:
        service.logger.warning(
            "RISK_APPROVAL_SECRET is the development default; set it outside development"
        )
    desk = service.provide(OrderDesk(settings, service.resources, service.logger, service.tracer))
    service.on_startup(desk.restore)
    service.background("outbox-relay", desk.run_outbox_relay)
    service.background("risk-state-poller", desk.poll_risk_state)
    service.subscribe(MarketTick, desk.on_tick)
    service.app.include_router(router)
    return service
