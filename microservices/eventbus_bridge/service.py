"""eventbus-bridge assembly: the market feed, its stall watch, the outgoing webhooks and its
readiness."""

from __future__ import annotations

from backend.infra.observability import ReadinessCheck
from backend.infra.service import Service
from backend.trading.events import EVENT_TYPES

from .feed import MarketFeed
from .settings import EventbusBridgeSettings
from .webhooks import WebhookRelay

NAME = "eventbus-bridge"


def create_service(settings: EventbusBridgeSettings | None = None) -> Service:
    """The eventbus-bridge worker (health and metrics on its side port, 8012)."""
    settings = settings or EventbusBridgeSettings()
    # The webhook consumer group starts at the streams' end the first time it is created: a new
    # receiver gets what happens from then on, not the streams' whole history. Afterwards the
    # group's position survives restarts.
    service = Service(NAME, kind="worker", eventbus=True, consume_from="latest")
    feed = MarketFeed(settings, service.resources, service.logger, service.tracer)
    service.background("feed", feed.run)
    service.background("stall-watch", feed.watch_stalls)
    service.add_readiness_check(ReadinessCheck("feed", feed.check_ready))
    if settings.webhook_urls:
        relay = service.provide(
            WebhookRelay(settings, service.resources, service.logger, service.tracer)
        )
        for event_type in settings.webhook_events:
            service.subscribe(EVENT_TYPES[event_type], relay.enqueue)
        service.background("webhooks", relay.run)
    return service
