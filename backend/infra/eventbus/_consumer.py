"""Consuming: a consumer group per service, batched reads, retries, dead letters, reclaiming."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import redis.exceptions as redis_errors
from redis.asyncio import Redis

from backend.infra.observability import (
    CURRENT_SPAN,
    SpanKind,
    activate_span,
    current_traceparent,
    extract_trace_context,
    get_logger,
    get_tracer,
    links_from_traceparent,
    new_trace_context,
    record_error,
    span_context_from_traceparent,
    start_lean_span,
    use_trace_context,
)

from ._envelope import Event, decode_entry
from ._errors import EventBusError, MalformedEvent, RedisCommandError
from ._idempotency import Idempotency
from ._metrics import TASK_FAILURES, ConsumerMetrics
from ._publisher import MESSAGING_SYSTEM
from ._redis import backoff_delay, call_with_reconnect
from ._settings import EventBusSettings
from ._trim import trim_acknowledged
from .catalogue import Catalogue, EventData, EventSpec, default_catalogue

DataT = TypeVar("DataT", bound=EventData)
Handler = Callable[[Event[Any]], Awaitable[object]]


class BatchEntry(Generic[DataT]):
    """One event of a batch handed to a batch handler (`EventConsumer.subscribe_batch`).

    Each entry has its own CONSUMER span `process {stream}` in its producer's trace, which
    the consumer ends once the handler returned (with the error, if it raised).
    `activate()` makes that span the current one (with the event's baggage) for work that
    belongs to this event alone: its business span, its log lines, an outbox row announcing
    its outcome. Work shared by the batch (its transaction) runs in the batch's span.
    """

    __slots__ = ("_traceparent", "_tracestate", "event")

    def __init__(self, event: Event[DataT], span: Any = None) -> None:
        self.event = event
        self._traceparent: str | None = None
        self._tracestate: str | None = None
        ctx = span.get_span_context() if span is not None else None
        if ctx is not None and ctx.is_valid:
            self._traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
            self._tracestate = ctx.trace_state.to_header() or None

    @property
    def data(self) -> DataT:
        return self.event.data

    @contextmanager
    def activate(self) -> Iterator[None]:
        """The block runs in this entry's trace (as often as needed). A batch of one runs in
        its entry's span already: nothing changes then."""
        with use_trace_context(self._traceparent, self._tracestate, self.event.baggage):
            yield


BatchHandler = Callable[[Sequence[BatchEntry[Any]]], Awaitable[object]]

_log = get_logger("backend.infra.eventbus")

_MAX_ERROR_CHARS = 8_000


@dataclass(eq=False)
class _Subscription:
    """One stream this consumer reads, with everything per-event work needs precomputed."""

    spec: EventSpec
    key: str
    handler: Handler
    metrics: ConsumerMetrics
    span_name: str
    attributes: dict[str, Any]
    dead_letter_key: str
    claim_cursor: str = "0-0"
    batch_handler: BatchHandler | None = None
    defer_s: float = 0.0
    """Set by `subscribe_batch`: the entries of one read go to it together."""
    deduplicate: bool = True
    """Whether processed marks are looked up before the handler and written after it."""


@dataclass(order=True)
class _Retry:
    due: float
    seq: int
    key: str = field(compare=False)
    entry_id: str = field(compare=False)
    deliveries: int = field(compare=False)


@dataclass
class _Batch:
    """What one batch leaves to commit: acks, processed marks and dead letters."""

    acks: dict[str, list[str]] = field(default_factory=dict)
    processed: dict[int | None, list[str]] = field(default_factory=dict)
    """Event ids handled, by how long their mark lives (None: the idempotency's default)."""
    dead: list[tuple[str, dict[bytes, Any]]] = field(default_factory=list)
    handled: dict[str, int] = field(default_factory=dict)

    def ack(self, key: str, entry_id: str) -> None:
        self.acks.setdefault(key, []).append(entry_id)


class EventConsumer:
    """Reads catalogued events as one consumer of a consumer group and runs their handlers.

    At-least-once: an entry is acknowledged only after its handler returned. A failing
    handler is retried with exponential back-off; the entry goes to the dead-letter stream
    (`{prefix}:deadletter:{stream}`, with the error and the original fields) once it has been
    delivered `max_deliveries` times. Entries that a dead consumer left pending longer than
    `claim_idle_ms` are taken over with XAUTOCLAIM. Malformed entries are dead-lettered at
    once with a reason code. With an `Idempotency`, an event whose id was already processed
    by the group is acknowledged without running the handler again (unless its subscription
    says its handler needs no marks: `subscribe(..., deduplicate=False)`).

    Handlers run one at a time, in stream order except for retried entries; each runs inside
    a CONSUMER span `process {stream}` that continues the producer's trace. A batch handler
    (`subscribe_batch`) gets the entries of one read together, with the same guarantees per
    entry.
    """

    def __init__(
        self,
        client: Redis,
        group: str,
        settings: EventBusSettings | None = None,
        *,
        consumer_name: str | None = None,
        idempotency: Idempotency | None = None,
        start_from: Literal["earliest", "latest"] = "earliest",
        catalogue: Catalogue | None = None,
    ) -> None:
        self._client = client
        self.group = group
        self._settings = settings or EventBusSettings.from_env()
        # Stable across restarts of the same replica (never the pid): a restarted consumer then
        # finds what its previous life left pending under its name and handles it first.
        self.name = consumer_name or self._settings.consumer_name or socket.gethostname()
        self._idempotency = idempotency
        self._start_id = "0" if start_from == "earliest" else "$"
        self._catalogue = catalogue if catalogue is not None else default_catalogue()
        self._tracer = get_tracer("backend.infra.eventbus")
        # A context is immutable: one empty one serves every message without baggage.
        self._empty_context = new_trace_context()
        self._subs: dict[str, _Subscription] = {}
        self._read_streams: dict[str, str] = {}
        self._retries: list[_Retry] = []
        self._retry_seq = itertools.count()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._stopped = asyncio.Event()
        self._busy = False
        self._unsent_acks: dict[str, list[str]] = {}
        """Acknowledgements of handled entries not sent yet: they go with the next read."""
        self._unsent_handled: dict[str, int] = {}
        self.last_error: BaseException | None = None

    # Set-up ----------------------------------------------------------------------------------

    @property
    def settings(self) -> EventBusSettings:
        """The settings this consumer uses."""
        return self._settings

    def subscribe(
        self,
        model: type[DataT],
        handler: Callable[[Event[DataT]], Awaitable[object]],
        *,
        deduplicate: bool = True,
        defer_ms: int = 0,
    ) -> None:
        """Run `handler` for every event whose data model is `model` (one handler per type).

        `deduplicate=False` is for a handler that is idempotent by nature (one that keeps the
        newest quote, say): the consumer then neither looks its events up among the processed
        marks before running it (a Redis round trip between the read and the handler) nor
        marks them after. Delivery stays at least once; an event is still acknowledged only
        after its handler returned.

        `defer_ms` is for a reader that is not on the way from a tick to an order: what a read
        returns is handled that long after it arrived, so that when one event wakes many
        readers at once (a tick wakes six), those on the order path get the CPU first. It
        applies only when every subscription of the consumer asks for it (the smallest value
        wins, so a consumer that also reads fills never waits).
        """
        if defer_ms < 0:
            raise ValueError(f"defer_ms must be >= 0, not {defer_ms}")
        self._add_subscription(
            model, handler, None, deduplicate=deduplicate, defer_s=defer_ms / 1000.0
        )

    def subscribe_batch(
        self,
        model: type[DataT],
        handler: Callable[[Sequence[BatchEntry[DataT]]], Awaitable[object]],
    ) -> None:
        """Run `handler` once per read with every new event of `model`'s type it returned.

        The guarantees of `subscribe` hold per entry: the entries are acknowledged (and marked
        processed) after the handler returns, an event id already processed never reaches it,
        and when the batch fails each entry is handled again alone, as a batch of one, so a
        poisonous entry is retried and dead-lettered without its neighbours. A handler must
        therefore leave nothing half done when it raises (one transaction for the batch).
        Retried and reclaimed entries come in batches too, of what that read returned.
        """

        async def one(event: Event[DataT]) -> None:
            await handler([BatchEntry(event)])

        self._add_subscription(model, one, handler)

    def _add_subscription(
        self,
        model: type[DataT],
        handler: Handler,
        batch_handler: BatchHandler | None,
        *,
        deduplicate: bool = True,
        defer_s: float = 0.0,
    ) -> None:
        if self._tasks:
            raise EventBusError("subscribe before start()")
        spec = self._catalogue.spec_for_model(model)
        key = self._settings.stream_key(spec.stream)
        if key in self._subs:
            raise EventBusError(f"{spec.type} already has a handler in group {self.group!r}")
        self._subs[key] = _Subscription(
            spec=spec,
            key=key,
            handler=handler,
            metrics=ConsumerMetrics(spec.stream, self.group),
            span_name=f"process {spec.stream}",
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.destination.name": key,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.consumer.group.name": self.group,
                "messaging.client.id": self.name,
                "cloudevents.event_type": spec.type,
            },
            dead_letter_key=self._settings.dead_letter_key(spec.stream),
            batch_handler=batch_handler,
            deduplicate=deduplicate,
            defer_s=defer_s,
        )
        self._read_streams[key] = ">"

    async def ensure_groups(self) -> None:
        """Create the consumer group on every subscribed stream if it is missing."""
        for key in self._subs:

            async def create(key: str = key) -> None:
                try:
                    await self._client.xgroup_create(key, self.group, self._start_id, mkstream=True)
                except redis_errors.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

            await self._call(create, f"XGROUP CREATE {key}")

    # Lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the groups and start the background tasks (consume loop, gauges)."""
        if not self._subs:
            raise EventBusError("subscribe to at least one event type before start()")
        if self._tasks:
            return
        await self.ensure_groups()
        self._stopping = False
        self._stopped.clear()
        self._spawn("consume", self._consume_loop)
        self._spawn("gauges", self._gauges_loop)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop reading; the in-flight handler finishes and its batch is acknowledged.

        A read waiting for new entries is cancelled. Entries of the current batch that were
        not handled yet stay pending and are delivered again (to this consumer name when it
        restarts, or to another consumer after `claim_idle_ms`). A handler still running
        after `timeout_s` is cancelled.
        """
        self._stopping = True
        consume = self._tasks.get("consume")
        if consume is not None and not self._busy:
            consume.cancel()
        gauges = self._tasks.get("gauges")
        if gauges is not None:
            gauges.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once `stop()` has completed."""
        await self._stopped.wait()

    async def __aenter__(self) -> EventConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """True while the consume loop is alive."""
        task = self._tasks.get("consume")
        return task is not None and not task.done()

    def _spawn(self, kind: str, loop: Callable[[], Awaitable[None]]) -> None:
        name = f"eventbus-{kind}:{self.group}:{self.name}"
        task = asyncio.create_task(self._supervise(kind, loop), name=name)
        self._tasks[kind] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        # _supervise only returns when stopping; anything else is a bug worth shouting about.
        _log.error("event bus task ended unexpectedly", task=task.get_name(), error=repr(exc))

    async def _supervise(self, kind: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run `loop`; on an unexpected failure log, count, back off and run it again."""
        failures = 0
        while not self._stopping:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                TASK_FAILURES.labels(kind).inc()
                _log.error(
                    "event bus task failed; restarting",
                    task=kind,
                    group=self.group,
                    consumer=self.name,
                    error=f"{type(exc).__name__}: {exc}",
                    failures=failures + 1,
                )
                # Capped at a second: the loop failing is most often Redis gone for longer than
                # `reconnect_timeout_s`, and its return must be noticed at once.
                await asyncio.sleep(backoff_delay(failures, base_s=0.1, cap_s=0.8))
                failures += 1

    async def _call(self, operation: Callable[[], Awaitable[Any]], what: str) -> Any:
        return await call_with_reconnect(
            operation, what=what, role="consumer", timeout_s=self._settings.reconnect_timeout_s
        )

    # The consume loop ------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        settings = self._settings
        # After a (re)start: the groups may be gone (a Redis without persistence), and entries
        # delivered to this consumer name before may never have been handled.
        await self.ensure_groups()
        try:
            await self._consume(settings)
        finally:
            if self._stopping and self._unsent_acks:
                # What was handled is acknowledged, even when the loop is being cancelled.
                await asyncio.shield(self._flush_acks())

    async def _consume(self, settings: EventBusSettings) -> None:
        await self._recover_own_pending()
        defer_s = min((sub.defer_s for sub in self._subs.values()), default=0.0)
        next_claim = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            if self._retries and self._retries[0].due <= now:
                await self._run_due_retries(now)
                continue
            if now >= next_claim:
                await self._reclaim_abandoned()
                next_claim = time.monotonic() + settings.claim_interval_ms / 1000.0
                continue
            wait_s = next_claim - now
            if self._retries:
                wait_s = min(wait_s, self._retries[0].due - now)
            block_ms = max(1, min(settings.block_ms, int(wait_s * 1000) + 1))
            read_started_ns = time.time_ns()
            response = await self._read(block_ms)
            if response:
                read_ns = time.time_ns()
                if defer_s:
                    await asyncio.sleep(defer_s)
                await self._process(
                    [
                        (self._subs[_text(stream)], _text(entry_id), fields, 1)
                        for stream, entries in response
                        for entry_id, fields in entries
                    ],
                    received=(read_started_ns, read_ns),
                )

    async def _read(self, block_ms: int) -> Any:
        """The next entries (XREADGROUP), sent in one write with the acknowledgements the last
        read left: one round trip per read, not two."""
        acks = self._unsent_acks

        async def xreadgroup() -> Any:
            if not acks:
                return await self._client.xreadgroup(
                    self.group,
                    self.name,
                    self._read_streams,  # type: ignore[arg-type]
                    count=self._settings.batch_size,
                    block=block_ms,
                )
            pipe = self._client.pipeline(transaction=False)
            for key, ids in acks.items():
                pipe.xack(key, self.group, *ids)
            pipe.xreadgroup(
                self.group,
                self.name,
                self._read_streams,  # type: ignore[arg-type]
                count=self._settings.batch_size,
                block=block_ms,
            )
            return (await pipe.execute())[-1]

        try:
            response = await self._call(xreadgroup, "XREADGROUP")
            if acks:
                self._acknowledged()
            return response
        except RedisCommandError as exc:
            if "NOGROUP" not in str(exc):
                raise
            _log.warning("consumer group missing; recreating", group=self.group)
            await self.ensure_groups()
            return None

    async def _recover_own_pending(self) -> None:
        # Entries handled before a failure of the loop are not handled again.
        await self._flush_acks()
        for sub in self._subs.values():
            start = "-"
            while not self._stopping:
                pending = await self._pending(sub, start, "+", self._settings.batch_size)
                if not pending:
                    break
                counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
                await self._claim_and_process(sub, counts, min_idle_ms=0)
                start = "(" + _text(pending[-1]["message_id"])

    async def _pending(
        self, sub: _Subscription, start: str, end: str, count: int
    ) -> list[dict[str, Any]]:
        """This consumer's pending entries of `sub` between `start` and `end`."""

        async def xpending() -> list[dict[str, Any]]:
            return await self._client.xpending_range(
                sub.key, self.group, start, end, count, consumername=self.name
            )

        return await self._call(xpending, "XPENDING")  # type: ignore[no-any-return]

    async def _autoclaim(self, sub: _Subscription) -> Any:
        async def xautoclaim() -> Any:
            return await self._client.xautoclaim(
                sub.key,
                self.group,
                self.name,
                self._settings.claim_idle_ms,
                sub.claim_cursor,
                count=self._settings.batch_size,
            )

        return await self._call(xautoclaim, "XAUTOCLAIM")

    async def _xinfo_groups(self, sub: _Subscription) -> Any:
        async def xinfo() -> Any:
            return await self._client.xinfo_groups(sub.key)

        return await self._call(xinfo, "XINFO GROUPS")

    async def _run_due_retries(self, now: float) -> None:
        await self._flush_acks()
        due: dict[str, dict[str, int]] = {}
        while self._retries and self._retries[0].due <= now:
            retry = heapq.heappop(self._retries)
            due.setdefault(retry.key, {})[retry.entry_id] = retry.deliveries
        for key, counts in due.items():
            await self._claim_and_process(self._subs[key], counts, min_idle_ms=0)

    async def _claim_and_process(
        self, sub: _Subscription, counts: Mapping[str, int], min_idle_ms: int
    ) -> None:
        """XCLAIM entries to this consumer (one more delivery each) and process them."""
        claimed = await self._call(
            lambda: self._client.xclaim(sub.key, self.group, self.name, min_idle_ms, list(counts)),
            "XCLAIM",
        )
        items = [
            (sub, _text(entry_id), fields, counts[_text(entry_id)] + 1)
            for entry_id, fields in claimed
            if entry_id is not None
        ]
        if items:
            await self._process(items)

    async def _reclaim_abandoned(self) -> None:
        """Take over entries idle longer than `claim_idle_ms` (their consumer is presumed dead)."""
        # Never this consumer's own handled entries, whose acknowledgement is not sent yet.
        await self._flush_acks()
        for sub in self._subs.values():
            if self._stopping:
                return
            result = await self._autoclaim(sub)
            sub.claim_cursor = _text(result[0])
            entries = [(_text(eid), fields) for eid, fields in result[1] if eid is not None]
            if not entries:
                continue
            sub.metrics.reclaimed.inc(len(entries))
            pending = await self._pending(sub, entries[0][0], entries[-1][0], len(entries))
            counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
            _log.info(
                "reclaimed abandoned entries",
                stream=sub.spec.stream,
                group=self.group,
                count=len(entries),
            )
            # XAUTOCLAIM already counted this delivery.
            await self._process([(sub, eid, fields, counts.get(eid, 2)) for eid, fields in entries])

    # Processing ------------------------------------------------------------------------------

    async def _process(
        self,
        items: Sequence[tuple[_Subscription, str, Mapping[bytes, bytes] | None, int]],
        received: tuple[int, int] | None = None,
    ) -> None:
        self._busy = True
        try:
            await self._process_batch(items, received)
        finally:
            self._busy = False

    def _receive_span(
        self,
        received: tuple[int, int],
        items: Sequence[tuple[_Subscription, str, Mapping[bytes, bytes] | None, int]],
        events: Sequence[tuple[_Subscription, Event[Any], Mapping[bytes, bytes]]],
    ) -> None:
        """The CLIENT span `receive {stream}` of one batch read (XREADGROUP), from its start to
        its return, linking to the creation context of every message it returned, as the
        messaging conventions ask of a batch receive."""
        keys = {sub.key for sub, *_ in items}
        key = next(iter(keys)) if len(keys) == 1 else None
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "receive",
            "messaging.operation.name": "receive",
            "messaging.consumer.group.name": self.group,
            "messaging.client.id": self.name,
            "messaging.batch.message_count": len(items),
        }
        if key is not None:
            attributes["messaging.destination.name"] = key
        links = _message_links((event for _sub, event, _fields in events), self._tracer)
        span = start_lean_span(
            self._tracer,
            f"receive {key}" if key is not None else "receive",
            SpanKind.CLIENT,
            attributes,
            parent=None,  # the poll loop is in no trace
            links=links,
            start_time=received[0],
        )
        span.end(end_time=received[1])

    async def _process_batch(
        self,
        items: Sequence[tuple[_Subscription, str, Mapping[bytes, bytes] | None, int]],
        received: tuple[int, int] | None = None,
    ) -> None:
        batch = _Batch()
        max_deliveries = self._settings.max_deliveries
        events: list[tuple[_Subscription, Event[Any], Mapping[bytes, bytes]]] = []
        for sub, entry_id, fields, deliveries in items:
            if fields is None:  # deleted (trimmed) while pending: nothing left to handle
                batch.ack(sub.key, entry_id)
                continue
            try:
                event = decode_entry(
                    fields,
                    stream=sub.spec.stream,
                    entry_id=entry_id,
                    deliveries=deliveries,
                    catalogue=self._catalogue,
                )
            except MalformedEvent as exc:
                self._dead_letter(
                    batch, sub, entry_id, fields, deliveries, exc.reason, exc.detail, None
                )
                continue
            if deliveries > max_deliveries:
                # Delivered too often without an outcome: the handler may be killing its process.
                self._dead_letter(
                    batch,
                    sub,
                    entry_id,
                    fields,
                    deliveries,
                    "max_deliveries_exceeded",
                    f"delivered {deliveries} times without being acknowledged",
                    event.id,
                    event.traceparent,
                )
                continue
            events.append((sub, event, fields))
        if received is not None:
            self._receive_span(received, items, events)

        if self._idempotency is not None and any(sub.deduplicate for sub, _e, _f in events):
            events = await self._unseen(batch, events)

        try:
            for sub, run in _runs(events):
                if self._stopping:
                    break  # the rest stays pending and is delivered again
                if len(run) > 1 and await self._handle_batch(sub, [e for e, _f in run]):
                    for event, _fields in run:
                        self._handled(batch, sub, event)
                    continue
                # One at a time: a plain subscription, or a batch that failed (each entry alone).
                for event, fields in run:
                    if self._stopping:
                        break
                    failure = await self._handle(sub, event)
                    self._settle(batch, sub, event, fields, failure)
        finally:
            # Whatever was handled is committed, even when the loop is being cancelled.
            await asyncio.shield(self._commit(batch))

    async def _unseen(
        self,
        batch: _Batch,
        events: list[tuple[_Subscription, Event[Any], Mapping[bytes, bytes]]],
    ) -> list[tuple[_Subscription, Event[Any], Mapping[bytes, bytes]]]:
        """`events` less those of deduplicated subscriptions already processed (or repeated
        within the batch), which are acknowledged without running their handler."""
        assert self._idempotency is not None
        marked = [event.id for sub, event, _f in events if sub.deduplicate]
        seen = iter(await self._idempotency.seen_many(marked))
        fresh = []
        batch_ids: set[str] = set()
        for sub, event, fields in events:
            if not sub.deduplicate:
                fresh.append((sub, event, fields))
            elif next(seen) or event.id in batch_ids:
                sub.metrics.duplicates.inc()
                batch.ack(sub.key, event.entry_id or "")
            else:
                batch_ids.add(event.id)
                fresh.append((sub, event, fields))
        return fresh

    def _handled(self, batch: _Batch, sub: _Subscription, event: Event[Any]) -> None:
        batch.ack(sub.key, event.entry_id or "")
        if sub.deduplicate:
            batch.processed.setdefault(sub.spec.dedup_ttl_s, []).append(event.id)
        batch.handled[sub.key] = batch.handled.get(sub.key, 0) + 1

    def _settle(
        self,
        batch: _Batch,
        sub: _Subscription,
        event: Event[Any],
        fields: Mapping[bytes, bytes],
        failure: tuple[str, str | None] | None,
    ) -> None:
        """Acknowledge a handled event; retry a failed one later, or dead-letter it."""
        if failure is None:
            self._handled(batch, sub, event)
            return
        entry_id = event.entry_id or ""
        if event.deliveries >= self._settings.max_deliveries:
            self._dead_letter(
                batch,
                sub,
                entry_id,
                fields,
                event.deliveries,
                "handler_error",
                failure[0],
                event.id,
                failure[1],
            )
            return
        delay_ms = min(
            self._settings.retry_backoff_max_ms,
            self._settings.retry_backoff_ms * 2 ** (event.deliveries - 1),
        )
        heapq.heappush(
            self._retries,
            _Retry(
                time.monotonic() + delay_ms / 1000.0,
                next(self._retry_seq),
                sub.key,
                entry_id,
                event.deliveries,
            ),
        )

    async def _handle_batch(self, sub: _Subscription, events: Sequence[Event[Any]]) -> bool:
        """Run the batch handler on `events`; True when it returned. The shared work runs in a
        CONSUMER span `process {stream}` linked to every message (the messaging conventions'
        batch process span); each entry also gets its own span in its producer's trace."""
        assert sub.batch_handler is not None
        spans = [self._process_span(sub, event)[0] for event in events]
        entries = [BatchEntry(event, span) for event, span in zip(events, spans, strict=True)]
        links = _message_links(events, self._tracer)
        span = start_lean_span(
            self._tracer,
            sub.span_name,
            SpanKind.CONSUMER,
            {**sub.attributes, "messaging.batch.message_count": len(events)},
            parent=None,  # many traces: linked, not continued
            links=links,
        )
        metrics = sub.metrics
        error: BaseException | None = None
        with activate_span(span, self._empty_context):
            clock = time.perf_counter()
            try:
                await sub.batch_handler(entries)
            except Exception as exc:
                error = exc
                record_error(span, exc)
                _log.warning(
                    "batch handler failed; handling its entries one by one",
                    stream=sub.spec.stream,
                    group=self.group,
                    entries=len(events),
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                metrics.handler_seconds.observe(time.perf_counter() - clock)
                for entry_span in spans:
                    if error is not None:
                        record_error(entry_span, error)
                    entry_span.end()
        return error is None

    async def _handle(self, sub: _Subscription, event: Event[Any]) -> tuple[str, str | None] | None:
        """Run the handler inside its CONSUMER span; the error text and the span's
        traceparent if it raised."""
        span, context = self._process_span(sub, event)
        metrics = sub.metrics
        with activate_span(span, context):
            clock = time.perf_counter()
            try:
                await sub.handler(event)
            except Exception as exc:
                metrics.handler_seconds.observe(time.perf_counter() - clock)
                metrics.failed.inc()
                record_error(span, exc)
                _log.warning(
                    "event handler failed",
                    stream=sub.spec.stream,
                    group=self.group,
                    event_id=event.id,
                    entry_id=event.entry_id,
                    deliveries=event.deliveries,
                    error=f"{type(exc).__name__}: {exc}",
                )
                text = "".join(traceback.format_exception(exc))
                return text[-_MAX_ERROR_CHARS:], current_traceparent()
            metrics.handler_seconds.observe(time.perf_counter() - clock)
            return None

    def _process_span(self, sub: _Subscription, event: Event[Any]) -> tuple[Any, Any]:
        """The CONSUMER span `process {stream}` of one message, and the context to run its
        handler in (the producer's baggage), or None for the current one."""
        # The conventions ask a process span to link to the message's creation context (the
        # parent is only a MAY); it is both here. The span is a lean one (see
        # `start_lean_span`): an SDK span and the propagator's parsing cost more per message
        # than the rest of the bus.
        parent: Any = CURRENT_SPAN
        context = None
        links = None
        if event.traceparent is not None:
            links = links_from_traceparent(event.traceparent)
            parent = links[0].context if links else None
            if links and event.tracestate:
                parent = span_context_from_traceparent(event.traceparent, event.tracestate)
            # The handler runs in the producer's context (and its baggage), not the poll loop's.
            context = (
                extract_trace_context({"baggage": event.baggage})
                if event.baggage
                else self._empty_context
            )
        sub.metrics.time_in_stream.observe(max(0.0, time.time() - event.time.timestamp()))
        span = start_lean_span(
            self._tracer,
            sub.span_name,
            SpanKind.CONSUMER,
            {
                **sub.attributes,
                "messaging.message.id": event.entry_id,
                "cloudevents.event_id": event.id,
                "eventbus.deliveries": event.deliveries,
            },
            parent=parent,
            links=links,
        )
        return span, context

    def _dead_letter(
        self,
        batch: _Batch,
        sub: _Subscription,
        entry_id: str,
        fields: Mapping[bytes, bytes],
        deliveries: int,
        reason: str,
        error: str,
        event_id: str | None,
        traceparent: str | None = None,
    ) -> None:
        record: dict[bytes, Any] = {
            b"stream": sub.spec.stream,
            b"entry_id": entry_id,
            b"group": self.group,
            b"consumer": self.name,
            b"reason": reason,
            b"error": error[-_MAX_ERROR_CHARS:],
            b"deliveries": str(deliveries),
            b"dead_lettered_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if event_id is not None:
            record[b"event_id"] = event_id
        for name, value in fields.items():
            record[b"original." + name] = value
        batch.dead.append((sub.dead_letter_key, record))
        batch.ack(sub.key, entry_id)
        sub.metrics.dead_letter(reason)
        # In the trace of the span that failed (or of the producer), so the line leads to it.
        with use_trace_context(traceparent):
            _log.warning(
                "entry dead-lettered",
                stream=sub.spec.stream,
                group=self.group,
                entry_id=entry_id,
                reason=reason,
                deliveries=deliveries,
                error=error.splitlines()[-1] if error else "",
            )

    async def _commit(self, batch: _Batch) -> None:
        """Dead letters, processed marks and acks of a batch, in one MULTI/EXEC (acks alone: no
        transaction, see `_acknowledge`)."""
        if not batch.acks:
            return
        idempotency = self._idempotency
        max_len = self._settings.max_len
        if not batch.dead and (idempotency is None or not batch.processed):
            # Acknowledgements alone go with the next read (`_read`), or before anything else
            # the loop does (`_flush_acks`): no transaction and no round trip of their own.
            for key, ids in batch.acks.items():
                self._unsent_acks.setdefault(key, []).extend(ids)
            for key, count in batch.handled.items():
                self._unsent_handled[key] = self._unsent_handled.get(key, 0) + count
            return

        async def commit() -> None:
            pipe = self._client.pipeline(transaction=True)
            for key, record in batch.dead:
                pipe.xadd(key, record, maxlen=max_len, approximate=True)  # type: ignore[arg-type]
            if idempotency is not None:
                for ttl_s, event_ids in batch.processed.items():
                    idempotency.add_marks(pipe, event_ids, ttl_s=ttl_s)
            for key, ids in batch.acks.items():
                pipe.xack(key, self.group, *ids)
            await pipe.execute()

        await self._call(commit, "XACK")
        for key, count in batch.handled.items():
            self._subs[key].metrics.consumed.inc(count)

    async def _flush_acks(self) -> None:
        """Send the acknowledgements not sent yet, on their own.

        Acknowledgements alone need no transaction: each XACK stands by itself (one lost with
        the connection only delivers again an entry whose handler returned, as a crash before
        the commit would). Sent again after a failure, an XACK acknowledges nothing twice.
        """
        acks = self._unsent_acks
        if not acks:
            return

        async def xack() -> None:
            pipe = self._client.pipeline(transaction=False)
            for key, ids in acks.items():
                pipe.xack(key, self.group, *ids)
            await pipe.execute()

        await self._call(xack, "XACK")
        self._acknowledged()

    def _acknowledged(self) -> None:
        self._unsent_acks = {}
        handled, self._unsent_handled = self._unsent_handled, {}
        for key, count in handled.items():
            self._subs[key].metrics.consumed.inc(count)

    # Gauges ----------------------------------------------------------------------------------

    async def _gauges_loop(self) -> None:
        interval = self._settings.trim_interval_s
        next_trim = time.monotonic()
        while not self._stopping:
            await self.refresh_gauges()
            if interval > 0 and time.monotonic() >= next_trim:
                await self.trim_streams()
                next_trim = time.monotonic() + interval
            await asyncio.sleep(min(self._settings.metrics_interval_s, interval or math.inf))

    async def trim_streams(self) -> int:
        """Trim every subscribed stream to what its groups still need; returns entries removed.

        Every consumer of a stream does it; it is idempotent, and an entry goes only once every
        group (not only this one) has acknowledged it (see `_trim.py`).
        """
        removed = 0
        for key in self._subs:

            async def trim(key: str = key) -> int:
                return await trim_acknowledged(self._client, key)

            try:
                removed += await self._call(trim, "XTRIM MINID")
            except RedisCommandError as exc:  # e.g. the stream was deleted meanwhile
                _log.warning("stream not trimmed", stream=key, error=str(exc))
        return removed

    async def refresh_gauges(self) -> None:
        """Set the pending and lag gauges of every subscribed stream from Redis."""
        for sub in self._subs.values():
            groups = await self._xinfo_groups(sub)
            info = next((g for g in groups if _text(g["name"]) == self.group), None)
            if info is None:
                continue
            sub.metrics.pending.set(int(info["pending"]))
            lag = info.get("lag")
            if lag is None:
                lag = await self._estimate_lag(sub, _text(info["last-delivered-id"]))
            sub.metrics.lag.set(int(lag))

    async def _estimate_lag(self, sub: _Subscription, last_delivered: str) -> int:
        # Redis < 7 has no per-group lag: count undelivered entries, up to a cap.
        entries = await self._call(
            lambda: self._client.xrange(sub.key, "(" + last_delivered, "+", count=1000),
            "XRANGE lag",
        )
        return len(entries)


def _message_links(events: Iterable[Event[Any]], tracer: Any) -> list[Any]:
    """Links to the creation context of each message of a batch read, each naming its entry.

    The span keeps only the last `max_links` of them (the SDK's limit, 128 by default), so only
    those are built: a read of 500 entries would otherwise make 372 links to throw away.
    """
    sdk_tracer = getattr(tracer, "_tracer", tracer)  # a proxy's, once the provider is set
    limit = getattr(getattr(sdk_tracer, "_span_limits", None), "max_links", None)
    links: list[Any] = []
    for event in reversed(list(events)):
        if limit is not None and len(links) >= limit:
            break
        links.extend(
            links_from_traceparent(
                event.traceparent, {"messaging.message.id": event.entry_id or ""}
            )
        )
    links.reverse()
    return links


def _runs(
    events: Sequence[tuple[_Subscription, Event[Any], Mapping[bytes, bytes]]],
) -> Iterator[tuple[_Subscription, list[tuple[Event[Any], Mapping[bytes, bytes]]]]]:
    """`events` in order, as runs of one subscription: a batch subscription's consecutive
    entries form one run; every entry of a plain subscription is a run of its own."""
    run: list[tuple[Event[Any], Mapping[bytes, bytes]]] = []
    current: _Subscription | None = None
    for sub, event, fields in events:
        if run and (sub is not current or sub.batch_handler is None):
            assert current is not None
            yield current, run
            run = []
        current = sub
        run.append((event, fields))
    if run:
        assert current is not None
        yield current, run


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
