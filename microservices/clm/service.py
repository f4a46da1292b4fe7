"""clm assembly: ticks and ai-engine's signals from the bus, the learning loop, its routes."""

from __future__ import annotations

from backend.infra.observability import ReadinessCheck
from backend.infra.service import Service
from backend.trading.events import MarketTick, SignalGenerated
from microservices.contracts import answer_upstream_errors

from .api import router
from .manager import LearningManager
from .settings import ClmSettings

NAME = "clm"


def create_service(settings: ClmSettings | None = None) -> Service:
    """The clm worker (health, metrics and its API on its side port, 8011)."""
    # From the latest entry: clm learns from the market as it is now, not from a backlog.
    service = Service(NAME, kind="worker", eventbus=True, consume_from="latest")
    manager = service.provide(
        LearningManager(
            settings or ClmSettings(), service.resources, service.logger, service.tracer
        )
    )
    service.add_readiness_check(ReadinessCheck("ai-engine registry", manager.check_synced))
    # Drift only: the ticks on the way to an order go first (OFF_PATH_TICK_DEFER_MS).
    service.subscribe(
        MarketTick,
        manager.on_tick,
        deduplicate=False,
        defer_ms=service.settings.off_path_tick_defer_ms,
    )
    service.subscribe(SignalGenerated, manager.on_signal)
    service.background("learn", manager.run)
    service.app.include_router(router)
    answer_upstream_errors(service.app)
    return service
