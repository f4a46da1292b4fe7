"""The transactional outbox: events stored with the change they announce, published after commit."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from backend.infra.db import execute, session_scope
from backend.infra.db.models import OutboxEvent
from backend.infra.eventbus import (
    Catalogue,
    Event,
    EventData,
    EventPublisher,
    default_catalogue,
    new_event_id,
)
from backend.infra.observability import get_logger, inject_trace_context

from ._metrics import OLDEST_PENDING_AGE, PENDING, PUBLISH_FAILURES, PUBLISHED
from ._settings import OutboxSettings

_log = get_logger("backend.infra.outbox")
_WATCHED = "outbox_watched"
_UNSURE = "outbox_unsure"
_OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
"""The table, for Core statements: no ORM bulk-update machinery per relay round."""
_INSERT = insert(_OUTBOX)
_MARK_EVENTS = (
    update(_OUTBOX)
    .where(_OUTBOX.c.event_id.in_(bindparam("event_ids", expanding=True)))
    .values(published_at=bindparam("published"), attempts=_OUTBOX.c.attempts + 1, last_error=None)
)
"""Marks rows published by their event ids; built once, as every order's events take it."""


def retry_delay_s(settings: OutboxSettings, failures: int) -> float:
    """The relay's pause after `failures` failed rounds in a row: doubling, never above the cap.

    The jitter only shortens the pause, so the cap is also how late the relay can notice that
    Redis is back.
    """
    base = settings.retry_backoff_s * 2.0 ** min(failures - 1, 16)
    return min(settings.retry_backoff_max_s, base) * random.uniform(0.5, 1.0)


class ReplyHold:
    """Keeps the relay from publishing this process's commits until the requests it stands
    for have sent their answers (`Outbox.hold`): released once per request, plus once by its
    taker; the last release lets the relay go."""

    __slots__ = ("_left", "_outbox", "taken_at")

    def __init__(self, outbox: Outbox, taken_at: float) -> None:
        self._outbox = outbox
        self._left = 1
        self.taken_at = taken_at

    def add(self, count: int) -> None:
        """`count` more releases to wait for (the requests answered under this hold)."""
        if self._left > 0:
            self._left += count

    def release(self) -> None:
        if self._left > 0:
            self._left -= 1
            if self._left == 0:
                self._outbox._released(self)


class Outbox:
    """Events of one producing service (`source`), written in its transactions, then published.

    `add(session, data)` writes a row in the caller's transaction. After the commit,
    `publish_pending()` publishes every pending row of this source, oldest first, each under
    the trace context that was active when it was added, and marks them published. While
    publishing fails it returns at once and leaves the rows to `run_relay()`, which retries
    with back-off (and publishes what an earlier process left, on start), so an outage delays
    events and never loses them. A row can be published twice (a crash between the publish and
    the mark); both copies carry the same event id, which consumers' idempotency drops.

    A round claims up to `batch_size` rows for this relay (`relay_id`, by default
    `{source}@{EVENTBUS_CONSUMER_NAME or hostname}`) for `claim_s`, publishes them in one
    pipelined round trip (each under its own stored context) and marks them. Replicas of a
    service share its source: a row claimed by one relay is left alone by the others until the
    claim expires (its relay died mid-round), then taken over; a restarted relay of the same
    name takes its own rows back at once. Ordering is the row id's order within one relay,
    which is commit order when the producer serialises its writes.

    Rows are written already claimed by this relay, and the events of every commit are kept in
    memory in commit order: a round after such commits publishes them straight from memory and
    marks them, one transaction, with no claim to take and no row to read back. The relay
    gathers the marks of the rounds of `mark_delay_s` into that one transaction (one order at a
    time is one round per order); the table is never read while some are unmarked, and
    `publish_pending` and a stopping relay mark at once. The table is read (claimed) on start,
    after a failed round, when an idle relay looks for a dead replica's rows, and when
    `publish_pending` finds nothing in memory.

    A request that commits and then answers takes a `hold()` first and releases it once its
    answer is sent: the relay, which a commit wakes, waits for the holds so that the
    publication does not take the event loop from the answer. It waits `reply_hold_s` at most;
    the rows are in the table meanwhile, as ever.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        *,
        source: str,
        settings: OutboxSettings | None = None,
        catalogue: Catalogue | None = None,
        relay_id: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._source = source
        self._settings = settings or OutboxSettings.from_env()
        replica = publisher.settings.consumer_name or socket.gethostname()
        self._relay_id = relay_id or f"{source}@{replica}"
        self._catalogue = catalogue if catalogue is not None else default_catalogue()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # Reasons to read the table versus reads done: the relay only claims from the table
        # when a reason is not covered yet (on start, for older rows; after a failure; when
        # idle, for a dead replica's rows). What this process commits is known in memory.
        self._committed = 1
        self._covered = 0
        self._queue: list[Event[Any]] = []
        """Events committed by this process and not published yet, in commit order."""
        self._pending_key = f"outbox_pending:{id(self)}"
        self._failing = False
        self._oldest_pending: datetime | None = None
        self._last_purge = 0.0
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._holds: set[ReplyHold] = set()
        self._owed: asyncio.TimerHandle | None = None
        """Set while a commit's wake-up waits for the holds; fires at `reply_hold_s`."""
        self._unmarked: list[str] = []
        """Event ids the relay published from memory and has not marked yet (`mark_delay_s`)."""
        self._mark_due = 0.0
        """When the oldest of `_unmarked` must be marked (monotonic seconds)."""
        self._pending = PENDING.labels(source)
        self._published = PUBLISHED.labels(source)
        self._failures = PUBLISH_FAILURES.labels(source)
        OLDEST_PENDING_AGE.labels(source).set_function(self._oldest_pending_age_s)

    @property
    def source(self) -> str:
        return self._source

    @property
    def relay_id(self) -> str:
        """Who this relay's claims name (`claimed_by`)."""
        return self._relay_id

    @property
    def failing(self) -> bool:
        """True while the last publish round failed and the relay is retrying."""
        return self._failing

    # Writing ------------------------------------------------------------------------------------

    def add(self, session: AsyncSession, item: EventData | Event[Any]) -> str:
        """Write one event in `session`'s transaction; returns its event id.

        Plain data gets a new id, the current time and the active trace context (see `event`);
        an `Event` keeps its id and time, and its trace context when it has one. The stored
        context is the published event's parent, so it continues that trace.
        """
        event = self._stamped(item)
        session.add(OutboxEvent(**self._columns(event, datetime.now(UTC))))
        self._remember(session.sync_session, [event])
        return event.id

    async def add_many(
        self, session: AsyncSession, items: Iterable[EventData | Event[Any]]
    ) -> list[str]:
        """Write events in `session`'s transaction with one INSERT; returns their event ids.

        Each item is taken as `add` takes it. The ORM writes rows with a generated key one at a
        time on SQLite (to read each key back); this writes a batch in one statement.
        """
        events = [self._stamped(item) for item in items]
        if not events:
            return []
        now = datetime.now(UTC)
        await execute(session, _INSERT, [self._columns(event, now) for event in events])
        self._remember(session.sync_session, events)
        return [event.id for event in events]

    def _stamped(self, item: EventData | Event[Any]) -> Event[Any]:
        event = item if isinstance(item, Event) else self.event(item)
        if event.traceparent is None:
            event = self.event(event.data, event_id=event.id, time=event.time)
        return event

    def _columns(self, event: Event[Any], now: datetime) -> dict[str, Any]:
        spec = self._catalogue.spec_for_model(type(event.data))
        return {
            "event_id": event.id,
            "source": self._source,
            "event_type": spec.type,
            "schema_version": spec.version,
            "event_time": event.time,
            "data": event.data.model_dump_json(),
            "traceparent": event.traceparent,
            "tracestate": event.tracestate,
            "baggage": event.baggage,
            "attempts": 0,
            # Claimed by this relay from the start: it publishes the row from memory after the
            # commit; another replica takes it over only once the claim expires.
            "claimed_by": self._relay_id,
            "claimed_until": now + timedelta(seconds=self._settings.claim_s),
            "created_at": now,
        }

    def event(
        self, data: EventData, *, event_id: str | None = None, time: datetime | None = None
    ) -> Event[Any]:
        """An event of this source carrying the trace context active now, to `add` later
        (from inside another span, or in a transaction opened after this one ended)."""
        carrier = inject_trace_context({})
        return Event(
            id=event_id or new_event_id(),
            type=self._catalogue.spec_for_model(type(data)).type,
            source=self._source,
            time=time or datetime.now(UTC),
            data=data,
            traceparent=carrier.get("traceparent"),
            tracestate=carrier.get("tracestate") or None,
            baggage=carrier.get("baggage") or None,
        )

    def events(self, items: Iterable[EventData]) -> list[Event[Any]]:
        """`event` of each item, all in the trace context active now (read once for all)."""
        carrier = inject_trace_context({})
        traceparent = carrier.get("traceparent")
        tracestate = carrier.get("tracestate") or None
        baggage = carrier.get("baggage") or None
        now = datetime.now(UTC)
        return [
            Event(
                id=new_event_id(),
                type=self._catalogue.spec_for_model(type(data)).type,
                source=self._source,
                time=now,
                data=data,
                traceparent=traceparent,
                tracestate=tracestate,
                baggage=baggage,
            )
            for data in items
        ]

    def _remember(self, session: Session, events: list[Event[Any]]) -> None:
        """Keep `events` with the session's transaction: queued for publication if it commits."""
        pending: list[Event[Any]] | None = session.info.get(self._pending_key)
        if pending is None:
            pending = session.info[self._pending_key] = []
        pending.extend(
            replace(e, schema_version=self._catalogue.spec_for_model(type(e.data)).version)
            for e in events
        )
        if session.info.get(_WATCHED) is self:
            return
        session.info[_WATCHED] = self
        sa_event.listen(session, "after_commit", self._on_commit)
        sa_event.listen(session, "after_soft_rollback", self._on_rollback)

    def _on_commit(self, session: Session) -> None:
        pending = session.info.pop(self._pending_key, None)
        if pending:
            self._queue.extend(pending)
        if session.info.pop(_UNSURE, False):
            self._committed += 1
        if self._holds:
            if self._owed is None:
                self._owed = asyncio.get_running_loop().call_later(
                    self._settings.reply_hold_s, self._overdue
                )
        else:
            self._wake.set()

    def _on_rollback(self, session: Session, _previous: object) -> None:
        if session.info.pop(self._pending_key, None):
            # Their rows are gone with the transaction; should a savepoint's rollback leave an
            # outer transaction that still holds some, the table is read after its commit.
            session.info[_UNSURE] = True

    # Holding the relay while requests answer ---------------------------------------------------

    def hold(self) -> ReplyHold:
        """Keep the relay from publishing what commits from now on until the hold is released
        (see `ReplyHold`), or `reply_hold_s` after the commit. `publish_pending` ignores it."""
        hold = ReplyHold(self, time.monotonic())
        self._holds.add(hold)
        return hold

    def _released(self, hold: ReplyHold) -> None:
        self._holds.discard(hold)
        if not self._holds and self._owed is not None:
            self._owed.cancel()
            self._owed = None
            self._wake.set()

    def _overdue(self) -> None:
        self._owed = None
        # A hold older than the limit no longer holds anything (its request failed to release
        # it, or is slow to answer): later commits are not held back by it.
        cutoff = time.monotonic() - self._settings.reply_hold_s
        self._holds = {h for h in self._holds if h.taken_at > cutoff}
        self._wake.set()

    # Publishing ---------------------------------------------------------------------------------

    async def publish_pending(self) -> int:
        """Publish what is pending now; returns how many rows were published.

        Never raises: the caller's change is committed, and a failure (logged, counted,
        recorded on the rows) is the relay's to retry. Returns 0 at once while the relay is
        retrying an outage, so callers never wait on Redis more than `publish_timeout_s`.
        """
        if self._failing:
            return 0
        try:
            return await self._drain(explicit=True)
        # Broad on purpose: whatever failed, the events are safe in the table and the relay
        # retries them; the caller's committed work must not fail because of it.
        except Exception:
            return 0

    async def publish_within(self, wait_s: float) -> bool:
        """Publish what is pending, waiting at most `wait_s`; True when it was all published.

        For a request that must answer quickly whatever Redis does (the kill switch): on False
        the events are safe in the table, and the publish attempt (bounded by
        `publish_timeout_s`) or else the relay sends them later.
        """
        task = asyncio.create_task(self.publish_pending(), name=f"outbox-publish-{self._source}")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        if not done:
            # The attempt goes on (up to `publish_timeout_s`); the pending gauge counts what is
            # queued now, not when the attempt gives up. In the background: a read of the
            # table must not hold up the answer this bounds.
            refresh = asyncio.create_task(self._refresh_stats(), name="outbox-stats")
            self._in_flight.add(refresh)
            refresh.add_done_callback(self._in_flight.discard)
        return bool(done) and not self._failing

    async def run_relay(self, _resources: object = None) -> None:
        """Publish what `publish_pending` did not, until cancelled (for `service.background`)."""
        try:
            await self._relay()
        finally:
            if self._unmarked:
                # Stopping: what was published is marked, so a restart does not send it again.
                with contextlib.suppress(Exception):
                    await self._drain(marks_only=True)

    async def _relay(self) -> None:
        failures = 0
        while True:
            marks_only = False
            if failures == 0:
                while (
                    self._covered >= self._committed and not self._queue
                ) or self._owed is not None:
                    self._wake.clear()
                    wait_s = self._settings.claim_s
                    if self._unmarked:
                        wait_s = min(wait_s, max(0.0, self._mark_due - time.monotonic()))
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait_s)
                    except TimeoutError:
                        if self._unmarked:
                            marks_only = True  # their marks are due; nothing else to do
                            break
                        # Idle for a claim's length: rows a dead relay (another replica)
                        # claimed are free again, and no commit here would wake us for them.
                        self._committed += 1
                        break
            try:
                await self._drain(marks_only=marks_only)
            except Exception:  # recorded by _drain; back off and try again
                failures += 1
                await asyncio.sleep(retry_delay_s(self._settings, failures))
                continue
            if failures:
                _log.info("outbox publishing again", source=self._source, failed_rounds=failures)
            failures = 0
            await self._purge_if_due()

    async def _drain(self, *, explicit: bool = False, marks_only: bool = False) -> int:
        """One round: the events committed here, from memory; or, when there is a reason to
        (or nothing in memory on an `explicit` call), every claimable row of the table. The
        published events' marks are written when due, at once on an `explicit` call; with
        `marks_only` nothing else is done."""
        async with self._lock:
            total = 0
            try:
                seen = self._committed
                if marks_only:
                    pass
                elif self._covered < seen or (explicit and not self._queue):
                    # The table has them all, in id order, with any older rows; none of them
                    # published but unmarked, or they would go out again.
                    await self._mark_unmarked()
                    self._queue.clear()
                    total = await self._drain_table(seen)
                elif self._queue:
                    events, self._queue = self._queue, []
                    total = await self._publish_events(events)
                if explicit or marks_only or time.monotonic() >= self._mark_due:
                    await self._mark_unmarked()
            except Exception as exc:
                self._failing = True
                self._committed += 1  # what failed is in the table, claimed: read it next
                self._queue.clear()
                self._failures.inc()
                _log.warning(
                    "outbox publish failed; the relay retries",
                    source=self._source,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self._refresh_stats()
                raise
            self._failing = False
            self._oldest_pending = None
            self._pending.set(0)
            return total

    async def _drain_table(self, seen: int) -> int:
        total = 0
        while True:
            rows = await self._claim_batch()
            if rows:
                total += await self._publish_batch(rows)
                # Committed while the table was read: already out, not to publish again.
                published = {row.event_id for row in rows}
                self._queue = [e for e in self._queue if e.id not in published]
            if len(rows) < self._settings.batch_size:
                self._covered = max(self._covered, seen)
                return total

    async def _publish_events(self, events: list[Event[Any]]) -> int:
        """Publish events committed by this process (their rows claimed by this relay since
        they were written) in one pipelined call; their rows are marked with the next marks
        due (`_mark_unmarked`)."""
        ids = [event.id for event in events]
        try:
            async with asyncio.timeout(self._settings.publish_timeout_s):
                await self._publisher.publish_many(events)
        except Exception as exc:
            await self._record_failure(_OUTBOX.c.event_id.in_(ids), exc)
            raise
        if not self._unmarked:
            self._mark_due = time.monotonic() + self._settings.mark_delay_s
        self._unmarked += ids
        self._published.inc(len(ids))
        return len(ids)

    async def _mark_unmarked(self) -> None:
        """Mark the rows of the events published from memory, in one transaction."""
        if not self._unmarked:
            return
        async with session_scope(self._sessions) as session:
            await session.execute(
                _MARK_EVENTS, {"event_ids": self._unmarked, "published": datetime.now(UTC)}
            )
        # Kept until written (always under the lock): a failed mark is retried first.
        self._unmarked = []

    async def _claim_batch(self) -> list[OutboxEvent]:
        """Claim the oldest rows no other live relay holds (up to `batch_size`), in id order."""
        now = datetime.now(UTC)
        me = self._relay_id
        claimable = and_(
            OutboxEvent.source == self._source,
            OutboxEvent.published_at.is_(None),
            or_(
                OutboxEvent.claimed_until.is_(None),
                OutboxEvent.claimed_until < now,
                OutboxEvent.claimed_by == me,
            ),
        )
        # PostgreSQL: rows another relay is claiming right now are skipped, not waited for, and
        # the outer condition is checked again on the row as committed. SQLite: the UPDATE holds
        # the database's write lock, so claims are serialised.
        oldest = (
            select(OutboxEvent.id)
            .where(claimable)
            .order_by(OutboxEvent.id)
            .limit(self._settings.batch_size)
            .with_for_update(skip_locked=True)
        )
        async with session_scope(self._sessions) as session:
            rows = await session.scalars(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(oldest.scalar_subquery()), claimable)
                .values(
                    claimed_by=me,
                    claimed_until=now + timedelta(seconds=self._settings.claim_s),
                )
                .returning(OutboxEvent)
                .execution_options(synchronize_session=False)
            )
            return sorted(rows, key=lambda row: row.id)

    async def _publish_batch(self, rows: Sequence[OutboxEvent]) -> int:
        """Publish `rows` in one pipelined call, each as a continuation of its stored trace
        context, and mark them published."""
        ids = [row.id for row in rows]
        try:
            events = [self._event_of(row) for row in rows]
            async with asyncio.timeout(self._settings.publish_timeout_s):
                await self._publisher.publish_many(events)
        except Exception as exc:
            await self._record_failure(_OUTBOX.c.id.in_(ids), exc)
            raise
        await self._mark_published(_OUTBOX.c.id.in_(ids))
        self._published.inc(len(ids))
        return len(ids)

    def _event_of(self, row: OutboxEvent) -> Event[Any]:
        spec = self._catalogue.spec_for_type(row.event_type)
        return Event(
            id=row.event_id,
            type=spec.type,
            source=row.source,
            time=row.event_time,
            data=spec.model.model_validate_json(row.data),
            schema_version=row.schema_version,
            traceparent=row.traceparent,
            tracestate=row.tracestate,
            baggage=row.baggage,
        )

    async def _mark_published(self, rows: ColumnElement[bool]) -> None:
        async with session_scope(self._sessions) as session:
            await session.execute(
                update(_OUTBOX)
                .where(rows)
                .values(
                    published_at=datetime.now(UTC),
                    attempts=_OUTBOX.c.attempts + 1,
                    last_error=None,
                )
            )

    async def _record_failure(self, rows: ColumnElement[bool], exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            async with session_scope(self._sessions) as session:
                await session.execute(
                    update(_OUTBOX)
                    .where(rows)
                    .values(attempts=_OUTBOX.c.attempts + 1, last_error=error)
                )
        # The note is diagnostic only; the rows stay pending whether or not it is written.
        except Exception as note_error:
            _log.warning("outbox failure not recorded", error=str(note_error))

    # Housekeeping and metrics -------------------------------------------------------------------

    async def _refresh_stats(self) -> None:
        try:
            async with session_scope(self._sessions) as session:
                count, oldest = (
                    await session.execute(
                        select(func.count(), func.min(OutboxEvent.created_at)).where(
                            OutboxEvent.source == self._source,
                            OutboxEvent.published_at.is_(None),
                        )
                    )
                ).one()
        # Metrics are best effort; the database may be what is failing.
        except Exception:
            return
        self._pending.set(count)
        if isinstance(oldest, str):  # SQLite returns min() of a timestamp as text
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        self._oldest_pending = oldest

    def _oldest_pending_age_s(self) -> float:
        oldest = self._oldest_pending
        if oldest is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds())

    async def _purge_if_due(self) -> None:
        now = time.monotonic()
        # Hourly at most: old published rows are only kept for audits.
        if now - self._last_purge < 3600.0:
            return
        self._last_purge = now
        cutoff = datetime.now(UTC) - timedelta(seconds=self._settings.retention_s)
        try:
            async with session_scope(self._sessions) as session:
                await session.execute(
                    delete(OutboxEvent).where(
                        OutboxEvent.source == self._source,
                        OutboxEvent.published_at.is_not(None),
                        OutboxEvent.published_at < cutoff,
                    )
                )
        except Exception as exc:  # retried at the next purge; nothing depends on it
            _log.warning("outbox purge failed", source=self._source, error=str(exc))
