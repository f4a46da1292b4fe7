"""eventbus-bridge assembly: the market feed, its stall watch and its readiness."""

from __future__ import annotations

from backend.infra.observability import ReadinessCheck
from backend.infra.service import Service

from .feed import MarketFeed
from .settings import EventbusBridgeSettings

NAME = "eventbus-bridge"


def create_service(settings: EventbusBridgeSettings | None = None) -> Service:
    """The eventbus-bridge worker (health and metrics on its side port, 8012)."""
    service = Service(NAME, kind="worker", eventbus=True)
    feed = MarketFeed(
        settings or EventbusBridgeSettings(), service.resources, service.logger, service.tracer
    )
    service.background("feed", feed.run)
    service.background("stall-watch", feed.watch_stalls)
    service.add_readiness_check(ReadinessCheck("feed", feed.check_ready))
    return service
