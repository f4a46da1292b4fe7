"""Outgoing webhooks, eventbus-bridge's second core object: selected bus events are signed and
POSTed to external receivers by background workers, retried with back-off and jitter, and
dead-lettered to a Redis stream when they cannot be delivered.

The bus consumer only enqueues (`enqueue` never awaits the network): a slow or dead receiver
fills a bounded queue, whose overflow is dropped and counted, and never holds the consumer.
Each delivery runs inside the consumer span of its event, so the `webhook deliver` span and the
httpx CLIENT span under it belong to the event's trace, and the receiver gets that trace in its
`traceparent` header.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from backend.infra.eventbus import Event, EventBusSettings
from backend.infra.observability import (
    BoundLogger,
    SpanKind,
    StatusCode,
    current_traceparent,
    inject_trace_context,
    use_trace_context,
)
from backend.infra.service import Resources
from microservices.contracts.webhooks import (
    ATTEMPT_HEADER,
    EVENT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    WebhookBody,
    sign,
)

from . import metrics
from .settings import EventbusBridgeSettings

USER_AGENT = "quantum-trader-webhooks/1"
_MAX_ERROR_CHARS = 500


def dead_letter_key(prefix: str) -> str:
    """The Redis stream of undeliverable webhooks (beside the bus's own dead-letter streams)."""
    return f"{prefix}:webhooks:deadletter"


def endpoint_of(url: str) -> str:
    """`scheme://host[:port]` of a receiver URL: what logs, spans and dead letters show, since a
    webhook URL's path or query often holds a token of its own."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def backoff_delay_s(
    retry: int, base_ms: int, cap_ms: int, rand: Callable[[], float] = random.random
) -> float:
    """Delay before retry number `retry` (1 for the first): `base x 2^(retry-1)`, capped, with
    "equal jitter" (between half and all of it), so receivers that come back are not hit by
    every sender in lock-step and no retry comes immediately."""
    ceiling_ms: int = min(cap_ms, base_ms * 2 ** min(retry - 1, 30))
    return (ceiling_ms / 2 + rand() * ceiling_ms / 2) / 1000.0


def classify(status: int) -> str:
    """`ok`, `retryable` or `permanent` for an HTTP status the receiver answered."""
    if 200 <= status < 300:
        return "ok"
    if status in (408, 425, 429) or status >= 500:
        return "retryable"
    return "permanent"


class HideWebhookUrls(logging.Filter):
    """Shows httpx's request log lines for the receivers as `scheme://host:port` only."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        super().__init__()
        self._urls = frozenset(urls)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(str(a) in self._urls for a in args):
            record.args = tuple(endpoint_of(str(a)) if str(a) in self._urls else a for a in args)
        return True


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one receiver, as queued."""

    event_id: str
    event_type: str
    body: bytes
    url: str
    traceparent: str | None
    """The context the delivery continues: the consumer span of the event."""
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    result: str
    status: int | None = None
    error: str | None = None


def encode_body(event: Event[Any]) -> bytes:
    """The JSON body of `event`'s webhook (its data as the bus carries it: money as strings)."""
    body = WebhookBody(
        id=event.id,
        type=event.type,
        source=event.source,
        time=event.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        data=event.data.model_dump(mode="json"),
        traceparent=event.traceparent,
    )
    return orjson.dumps(body.model_dump(mode="json", exclude_none=True))


async def post(
    client: httpx.AsyncClient, secret: str, delivery: Delivery, number: int | str
) -> Attempt:
    """One signed POST of `delivery` (attempt `number`), in the active trace context."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        ID_HEADER: delivery.event_id,
        EVENT_HEADER: delivery.event_type,
        ATTEMPT_HEADER: str(number),
        # Signed per attempt: a retry carries a fresh timestamp, as Stripe's do.
        SIGNATURE_HEADER: sign(secret, delivery.body),
    }
    # Without the httpx instrumentation (no OpenTelemetry SDK) the headers still carry the
    # trace; with it, its CLIENT span replaces them with its own context.
    inject_trace_context(headers)
    try:
        response = await client.post(delivery.url, content=delivery.body, headers=headers)
    except httpx.HTTPError as exc:
        text = f"{type(exc).__name__}: {exc}".replace(delivery.url, endpoint_of(delivery.url))
        return Attempt("retryable", error=text[:_MAX_ERROR_CHARS])
    result = classify(response.status_code)
    failure = None if result == "ok" else f"HTTP {response.status_code}"
    return Attempt(result, status=response.status_code, error=failure)


@dataclass(frozen=True, slots=True)
class Redelivery:
    """What `redeliver_dead_letters` did: entries delivered (and removed), and kept."""

    delivered: int
    kept: int


async def redeliver_dead_letters(
    settings: EventbusBridgeSettings,
    redis: Any,
    prefix: str,
    client: httpx.AsyncClient,
    *,
    limit: int | None = None,
) -> Redelivery:
    """Send dead-lettered webhooks again, oldest first, once each, to the configured URL with
    the record's endpoint; a delivered entry is deleted, any other stays (with a receiver URL
    no longer configured, too). Each request is signed now with the current secret and carries
    the original trace."""
    if settings.webhook_secret is None:
        raise ValueError("WEBHOOK_SECRET is required to sign webhooks")
    secret = settings.webhook_secret.get_secret_value()
    urls = {endpoint_of(url): url for url in settings.webhook_urls}
    key = dead_letter_key(prefix)
    entries = await redis.xrange(key, "-", "+", count=limit)
    delivered = kept = 0
    for entry_id, raw in entries:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        url = urls.get(fields.get("endpoint", ""))
        if url is None:
            kept += 1
            continue
        delivery = Delivery(
            fields["event_id"],
            fields["event_type"],
            fields["body"].encode(),
            url,
            fields.get("traceparent") or None,
            time.monotonic(),
        )
        with use_trace_context(delivery.traceparent):
            attempt = await post(client, secret, delivery, "redelivery")
        if attempt.result == "ok":
            await redis.xdel(key, entry_id)
            delivered += 1
        else:
            kept += 1
    return Redelivery(delivered, kept)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class WebhookRelay:
    """Queues selected events for the configured receivers and delivers them in the background."""

    def __init__(
        self,
        settings: EventbusBridgeSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
    ) -> None:
        if settings.webhook_secret is None:
            raise ValueError("WEBHOOK_SECRET is required to sign webhooks")
        self.settings = settings
        self.resources = resources
        self.log = logger
        self.tracer = tracer
        self._secret = settings.webhook_secret
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=settings.webhook_queue_size)
        self._bus = EventBusSettings.from_env()
        self.dead_letter_key = dead_letter_key(self._bus.prefix)
        self.endpoints = [endpoint_of(url) for url in settings.webhook_urls]
        self._dropped = 0
        """Deliveries dropped since the queue last accepted one."""
        self._in_flight: list[Delivery] = []
        """Deliveries a worker has taken and not finished: dead-lettered if the relay stops."""

    # The consumer side: never blocks ----------------------------------------------------------

    async def enqueue(self, event: Event[Any]) -> None:
        """Bus handler: queue one delivery per receiver, or drop it (counted) when full."""
        body = encode_body(event)
        # The consumer span of this event, so the delivery is a part of the event's trace.
        traceparent = current_traceparent() or event.traceparent
        now = time.monotonic()
        for url in self.settings.webhook_urls:
            delivery = Delivery(event.id, event.type, body, url, traceparent, now)
            try:
                self.queue.put_nowait(delivery)
            except asyncio.QueueFull:
                metrics.WEBHOOK_QUEUE_DROPS.labels(event.type).inc()
                self._dropped += 1
                if self._dropped == 1:
                    # Once per overflow, not once per event: the counter has the numbers.
                    self.log.warning(
                        "webhook queue full; dropping deliveries",
                        event_type=event.type,
                        event_id=event.id,
                        endpoint=endpoint_of(url),
                        queue_size=self.settings.webhook_queue_size,
                    )
                continue
            if self._dropped:
                self.log.warning("webhook queue accepting again", dropped=self._dropped)
                self._dropped = 0
        metrics.WEBHOOK_QUEUE_DEPTH.set(self.queue.qsize())

    # The delivery side ------------------------------------------------------------------------

    async def run(self, _resources: Resources | None = None) -> None:
        """The delivery workers (`WEBHOOK_WORKERS` of them) over one HTTP client."""
        hide = HideWebhookUrls(self.settings.webhook_urls)
        logging.getLogger("httpx").addFilter(hide)
        try:
            await self._run_workers()
        finally:
            logging.getLogger("httpx").removeFilter(hide)
            await self._park_undelivered()

    async def _park_undelivered(self) -> None:
        """On the way out, every delivery still queued or in flight is dead-lettered with the
        outcome `stopped`: the bus consumer acknowledged its event when it was queued, so
        without this a stop would lose it. `quantum-trader webhooks redeliver` sends them; one
        cut off in flight may already have reached its receiver, which is why receivers dedupe
        on the event id (deliveries are at least once)."""
        undelivered = list(self._in_flight)
        self._in_flight.clear()
        while not self.queue.empty():
            undelivered.append(self.queue.get_nowait())
            self.queue.task_done()
        metrics.WEBHOOK_QUEUE_DEPTH.set(0)
        if not undelivered:
            return
        for delivery in undelivered:
            await self._dead_letter(delivery, "stopped", 0, Attempt("stopped"))
        self.log.warning("webhooks not delivered at stop; dead-lettered", count=len(undelivered))

    async def _run_workers(self) -> None:
        async with httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s,
            follow_redirects=False,
        ) as client:
            self.log.info(
                "webhooks started",
                endpoints=self.endpoints,
                events=list(self.settings.webhook_events),
                workers=self.settings.webhook_workers,
            )
            async with asyncio.TaskGroup() as group:
                for n in range(self.settings.webhook_workers):
                    group.create_task(self._worker(client), name=f"webhook-worker-{n}")

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while True:
            delivery = await self.queue.get()
            metrics.WEBHOOK_QUEUE_DEPTH.set(self.queue.qsize())
            self._in_flight.append(delivery)
            try:
                await self.deliver(client, delivery)
            except asyncio.CancelledError:
                self.queue.task_done()
                raise  # left in `_in_flight`: `run` dead-letters it on the way out
            except Exception:
                # A bug must not stop the worker: the delivery is lost, and said so loudly.
                self.log.exception(
                    "webhook delivery crashed",
                    event_type=delivery.event_type,
                    event_id=delivery.event_id,
                )
            self._in_flight.remove(delivery)
            self.queue.task_done()

    async def deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> bool:
        """Attempt `delivery` until it succeeds, fails for good or runs out of attempts (then it
        is dead-lettered); True when delivered."""
        s = self.settings
        endpoint = endpoint_of(delivery.url)
        with (
            use_trace_context(delivery.traceparent),
            self.tracer.start_as_current_span(
                "webhook deliver",
                kind=SpanKind.INTERNAL,
                attributes={
                    "cloudevents.event_id": delivery.event_id,
                    "cloudevents.event_type": delivery.event_type,
                    "server.address": urlsplit(delivery.url).hostname or "",
                },
            ) as span,
        ):
            attempt = Attempt("retryable")
            number = 0
            for number in range(1, s.webhook_max_attempts + 1):
                attempt = await self._attempt(client, delivery, number)
                metrics.WEBHOOK_ATTEMPTS.labels(delivery.event_type, attempt.result).inc()
                if attempt.result != "retryable" or number == s.webhook_max_attempts:
                    break
                delay_s = backoff_delay_s(number, s.webhook_backoff_ms, s.webhook_backoff_max_ms)
                span.add_event(
                    "webhook.retry",
                    {"attempt": number, "delay_s": delay_s, "error": attempt.error or ""},
                )
                self.log.info(
                    "webhook attempt failed; retrying",
                    event_type=delivery.event_type,
                    event_id=delivery.event_id,
                    endpoint=endpoint,
                    attempt=number,
                    status=attempt.status,
                    error=attempt.error,
                    retry_in_s=round(delay_s, 3),
                )
                await asyncio.sleep(delay_s)
            span.set_attribute("webhook.attempts", number)
            if attempt.status is not None:
                span.set_attribute("http.response.status_code", attempt.status)
            if attempt.result == "ok":
                metrics.WEBHOOK_DELIVERIES.labels(delivery.event_type, "delivered").inc()
                metrics.WEBHOOK_DELIVERY_SECONDS.labels(delivery.event_type).observe(
                    time.monotonic() - delivery.enqueued_at
                )
                return True
            outcome = "rejected" if attempt.result == "permanent" else "failed"
            metrics.WEBHOOK_DELIVERIES.labels(delivery.event_type, outcome).inc()
            span.set_status(StatusCode.ERROR, f"webhook {outcome}: {attempt.error}")
            self.log.warning(
                "webhook not delivered; dead-lettered",
                event_type=delivery.event_type,
                event_id=delivery.event_id,
                endpoint=endpoint,
                outcome=outcome,
                attempts=number,
                status=attempt.status,
                error=attempt.error,
            )
            await self._dead_letter(delivery, outcome, number, attempt)
            return False

    async def _attempt(self, client: httpx.AsyncClient, delivery: Delivery, number: int) -> Attempt:
        started = time.perf_counter()
        try:
            return await post(client, self._secret.get_secret_value(), delivery, number)
        finally:
            metrics.WEBHOOK_ATTEMPT_SECONDS.labels(delivery.event_type).observe(
                time.perf_counter() - started
            )

    async def _dead_letter(
        self, delivery: Delivery, outcome: str, attempts: int, last: Attempt
    ) -> None:
        record: dict[str, str] = {
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "endpoint": endpoint_of(delivery.url),
            "outcome": outcome,
            "attempts": str(attempts),
            "status": "" if last.status is None else str(last.status),
            "error": last.error or "",
            "traceparent": delivery.traceparent or "",
            "body": delivery.body.decode(),
            "dead_lettered_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        try:
            await self.resources.redis.xadd(
                self.dead_letter_key,
                record,  # type: ignore[arg-type]
                maxlen=self._bus.max_len,
                approximate=True,
            )
        except Exception as exc:
            # Redis is down as well: the record is lost; say so, count it, keep delivering.
            metrics.WEBHOOK_DEAD_LETTER_ERRORS.inc()
            self.log.error(
                "webhook dead letter not written",
                event_type=delivery.event_type,
                event_id=delivery.event_id,
                error=f"{type(exc).__name__}: {exc}",
            )
