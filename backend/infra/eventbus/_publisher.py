"""Publishing: events to their streams with XADD (pipelined), one PRODUCER span per event."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from backend.infra.observability import (
    CURRENT_SPAN,
    SpanKind,
    get_tracer,
    inject_trace_context,
    record_error,
    span_context_from_traceparent,
    start_lean_span,
)

from ._envelope import Event, encode_event, new_event_id
from ._errors import EventBusError, PublishError
from ._metrics import PUBLISH_FAILURES, PUBLISHED
from ._redis import call_with_reconnect
from ._settings import EventBusSettings
from .catalogue import Catalogue, EventData, EventSpec, default_catalogue

_XADD_SCRIPT = """
local ids = {}
for i = 2, #ARGV do
  ids[i - 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i])
end
return ids
"""

MESSAGING_SYSTEM = "redis_streams"
"""`messaging.system` of the bus's spans: semconv has no well-known value for Redis Streams."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a published event was stored: its event id, logical stream and stream entry id."""

    event_id: str
    stream: str
    entry_id: str


class EventPublisher:
    """Publishes catalogued events; a returned publish is stored in Redis.

    Durability of a returned publish is Redis's: with `appendonly yes` and
    `appendfsync always` it survives a crash of the server, with `everysec` up to one second
    of returned publishes can be lost (see docs/EVENTBUS.md). While Redis is unreachable a
    publish retries with back-off for `reconnect_timeout_s`, then raises `EventBusUnavailable`.
    A retry after a connection lost mid-reply can store an event twice; both copies carry the
    same event id, which the consumers' idempotency check drops.

    With `market_client`, market data (the catalogue's `market_data` types) is published
    there instead, with the durability of that server (the market-data Redis keeps no
    append-only file: a tick does not survive its restart, which a tick need not).
    """

    def __init__(
        self,
        client: Redis,
        source: str,
        settings: EventBusSettings | None = None,
        *,
        catalogue: Catalogue | None = None,
        market_client: Redis | None = None,
    ) -> None:
        self._client = client
        self._market_client = market_client
        self._source = source
        self._settings = settings or EventBusSettings.from_env()
        self._catalogue = catalogue if catalogue is not None else default_catalogue()
        self._tracer = get_tracer("backend.infra.eventbus")
        self._routes: dict[type[EventData], _Route] = {}

    @property
    def settings(self) -> EventBusSettings:
        """The settings this publisher uses (prefix, MAXLEN, batch size, ...)."""
        return self._settings

    async def publish(
        self,
        data: EventData,
        *,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> Receipt:
        """Publish one event whose type is given by its data model; returns where it went."""
        if event_id is None and time is None:
            return (await self.publish_many((data,)))[0]
        event = Event(
            id=event_id or new_event_id(),
            type=self._route(type(data)).spec.type,
            source=self._source,
            time=time or datetime.now(UTC),
            data=data,
        )
        return (await self.publish_many((event,)))[0]

    async def publish_many(self, items: Iterable[EventData | Event[Any]]) -> list[Receipt]:
        """Publish many events, `batch_size` per pipelined round trip, each with its own span.

        Pass an `Event` to choose the id, time or source; plain data gets fresh ones. An `Event`
        with a `traceparent` (stored earlier, as the outbox does) continues that trace, with its
        own baggage; everything else continues the caller's. Returns
        one receipt per event, in order. The events of one call may go to several streams.
        """
        receipts: list[Receipt] = []
        chunk: list[EventData | Event[Any]] = []
        size = self._settings.batch_size
        for item in items:
            chunk.append(item)
            if len(chunk) >= size:
                receipts.extend(await self._publish_chunk(chunk))
                chunk = []
        if chunk:
            receipts.extend(await self._publish_chunk(chunk))
        return receipts

    def _route(self, model: type[EventData]) -> _Route:
        route = self._routes.get(model)
        if route is None:
            route = _Route(self._catalogue.spec_for_model(model), self._settings)
            self._routes[model] = route
        return route

    async def _publish_chunk(self, items: Sequence[EventData | Event[Any]]) -> list[Receipt]:
        # Baggage belongs to the caller's context, which is the same for the whole chunk.
        baggage = inject_trace_context({}).get("baggage")
        tracer = self._tracer
        now = datetime.now(UTC)
        prepared: list[tuple[_Route, str, bytes, Any]] = []
        try:
            for item in items:
                parent: Any = CURRENT_SPAN
                item_baggage = baggage
                if isinstance(item, Event):
                    route = self._route(type(item.data))
                    event_id, source, time, data = item.id, item.source, item.time, item.data
                    if item.traceparent is not None:
                        # A stored context (an outbox row's): the event continues its trace.
                        parent = span_context_from_traceparent(item.traceparent, item.tracestate)
                        item_baggage = item.baggage
                else:
                    route = self._route(type(item))
                    event_id, source, time, data = new_event_id(), self._source, now, item
                # Not made current: nothing runs inside it, and attaching costs per event. A
                # lean span: an SDK span cost more than the XADD it describes.
                span = start_lean_span(
                    tracer,
                    route.span_name,
                    SpanKind.PRODUCER,
                    {**route.attributes, "cloudevents.event_id": event_id},
                    parent=parent,
                )
                traceparent = tracestate = None
                ctx = span.get_span_context()
                if ctx is not None and ctx.is_valid:
                    # A SpanContext is a tuple: one unpacking, not four property calls.
                    trace_id, span_id, _remote, flags, state, _valid = ctx
                    traceparent = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
                    tracestate = state.to_header() if state else None
                payload = encode_event(
                    route.spec, event_id, source, time, data, traceparent, tracestate, item_baggage
                )
                prepared.append((route, event_id, payload, span))
        except BaseException as exc:
            _end_spans_failed([p[3] for p in prepared], exc)
            raise

        max_len = self._settings.max_len

        # One command per stream and chunk: a script runs the XADDs (each with its approximate
        # MAXLEN) and returns their ids, instead of one command and one reply per event. Market
        # data goes to the market-data Redis when there is one: one pipeline per server.
        market = self._market_client
        by_server: dict[bool, dict[str, list[int]]] = {}
        for index, (route, _event_id, _payload, _span) in enumerate(prepared):
            to_market = market is not None and route.spec.market_data
            by_server.setdefault(to_market, {}).setdefault(route.key, []).append(index)

        async def send() -> list[Any]:
            ids: list[Any] = [None] * len(prepared)
            for to_market, by_key in by_server.items():
                client = market if to_market and market is not None else self._client
                pipe = client.pipeline(transaction=False)
                for key, indexes in by_key.items():
                    pipe.eval(_XADD_SCRIPT, 1, key, max_len, *(prepared[i][2] for i in indexes))
                replies = await pipe.execute()
                for indexes, reply in zip(by_key.values(), replies, strict=True):
                    for index, entry_id in zip(indexes, reply, strict=True):
                        ids[index] = entry_id
            return ids

        try:
            entry_ids = await call_with_reconnect(
                send,
                what=f"XADD x{len(prepared)}",
                role="publisher",
                timeout_s=self._settings.reconnect_timeout_s,
            )
        except BaseException as exc:
            _end_spans_failed([p[3] for p in prepared], exc)
            for route, *_ in prepared:
                PUBLISH_FAILURES.labels(route.spec.stream).inc()
            if isinstance(exc, Exception) and not isinstance(exc, EventBusError):
                raise PublishError(f"publish failed: {exc}") from exc
            raise

        receipts = []
        for (route, event_id, _payload, span), raw_id in zip(prepared, entry_ids, strict=True):
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            span.set_attribute("messaging.message.id", entry_id)
            span.end()
            route.published.inc()
            receipts.append(Receipt(event_id, route.spec.stream, entry_id))
        return receipts


class _Route:
    """What publishing one event type needs, computed once: key, span name, static attributes."""

    __slots__ = ("attributes", "key", "published", "span_name", "spec")

    def __init__(self, spec: EventSpec, settings: EventBusSettings) -> None:
        self.spec = spec
        self.key = settings.stream_key(spec.stream)
        self.span_name = f"send {spec.stream}"
        self.attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.destination.name": self.key,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "cloudevents.event_type": spec.type,
        }
        self.published: Any = PUBLISHED.labels(spec.stream)


def _end_spans_failed(spans: Sequence[Any], exc: BaseException) -> None:
    for span in spans:
        record_error(span, exc)
        span.end()
