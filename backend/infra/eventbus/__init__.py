"""Event bus on Redis Streams: catalogued events, traced producer to consumer, at-least-once.

    from backend.trading.events import OrderFilled   # the events live with the domain

    client = create_redis_client(resolve_redis_url())
    publisher = EventPublisher(client, source="execution")
    await publisher.publish(OrderFilled(...))

    idempotency = Idempotency(client, scope="portfolio")
    consumer = EventConsumer(client, group="portfolio", idempotency=idempotency)
    consumer.subscribe(OrderFilled, on_fill)
    async with consumer:
        ...

See docs/EVENTBUS.md for the entry format, delivery guarantees, settings and operations.
"""

from __future__ import annotations

from ._consumer import BatchEntry, BatchHandler, EventConsumer, Handler
from ._embedded import EmbeddedRedis, resolve_redis_url
from ._envelope import Event, decode_entry, new_event_id, valid_traceparent
from ._errors import (
    EmbeddedRedisError,
    EventBusConfigError,
    EventBusError,
    EventBusUnavailable,
    MalformedEvent,
    PublishError,
    RedisCommandError,
    UnknownEventType,
)
from ._idempotency import Idempotency
from ._introspection import GroupBacklog, GroupMonitor
from ._publisher import MESSAGING_SYSTEM, EventPublisher, Receipt
from ._redis import (
    MARKET_REDIS_VARIABLE,
    create_redis_client,
    describe_redis,
    redis_readiness_check,
    resolve_market_redis_url,
)
from ._settings import EventBusSettings
from .catalogue import (
    DEFAULT_CATALOGUE,
    Catalogue,
    EventData,
    EventSpec,
    default_catalogue,
    use_catalogue,
)

__all__ = [
    "DEFAULT_CATALOGUE",
    "MARKET_REDIS_VARIABLE",
    "MESSAGING_SYSTEM",
    "BatchEntry",
    "BatchHandler",
    "Catalogue",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "Event",
    "EventBusConfigError",
    "EventBusError",
    "EventBusSettings",
    "EventBusUnavailable",
    "EventConsumer",
    "EventData",
    "EventPublisher",
    "EventSpec",
    "GroupBacklog",
    "GroupMonitor",
    "Handler",
    "Idempotency",
    "MalformedEvent",
    "PublishError",
    "Receipt",
    "RedisCommandError",
    "UnknownEventType",
    "create_redis_client",
    "decode_entry",
    "default_catalogue",
    "describe_redis",
    "new_event_id",
    "redis_readiness_check",
    "resolve_market_redis_url",
    "resolve_redis_url",
    "use_catalogue",
    "valid_traceparent",
]
