"""Execution persistence: orders, their transitions and their fills, one commit per report."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from backend.infra.db import execute, translate_errors
from backend.infra.db.models import (
    ExecutionQuote,
    ExecutionRiskState,
    FillRecord,
    OrderEventRow,
    OrderRecord,
)
from backend.infra.eventbus import Event
from backend.infra.outbox import Outbox
from backend.infra.service import Resources
from backend.trading.approval import SignedState
from backend.trading.events import OrderFilled
from backend.trading.orders import Order, OrderStatus
from backend.trading.types import Fill, Quote, Symbol
from backend.trading.venue import VenueReport

OPEN_STATUSES = (OrderStatus.ACCEPTED.value, OrderStatus.PARTIALLY_FILLED.value)


def to_datetime(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as persisted, with its fills in the order they happened."""

    record: OrderRecord
    fills: tuple[FillRecord, ...]
    reason: str = ""
    """Why the order was rejected or canceled, if it was."""


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """A new order as written, in plain values: its row's columns and its fills' (each fill's
    `id` is its sequence), with the amounts as a read of the rows would give them back."""

    values: dict[str, Any]
    fills: tuple[dict[str, Any], ...]
    reason: str = ""
    """Why the order was rejected, if it was."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `OrderStore.record` wrote: the highest fill sequence (None without fills) and, for
    a new order, the order as persisted (its fills included)."""

    fill_sequence: int | None
    order: PlacedOrder | None
    last_event_id: int = 0
    """The highest order transition id written (the shared venue's version after it)."""


@dataclass(frozen=True, slots=True)
class Report:
    """One venue report to persist, with the events announcing it."""

    report: VenueReport
    events: tuple[Event[Any], ...] = ()
    reserved_cash: Decimal = Decimal(0)
    traceparent: str | None = None
    risk_decision_id: str | None = None


LockConnection = AsyncConnection
"""The connection that holds the VenueLock (PostgreSQL), for reads under it."""

VENUE_KEY = "venue"
"""The one row of `execution_risk_states`: the venue every replica shares."""

_PG_VENUE_LOCK_KEY = 7203558436190862211
"""The PostgreSQL advisory lock key of the shared venue (any fixed 64-bit number)."""


class VenueLock:
    """Serialises venue mutations across replicas of execution sharing one database.

    PostgreSQL: a session-level `pg_advisory_lock` on a connection held for the section (the
    server releases it if the process dies). SQLite: an exclusive `flock` on a lock file next
    to the database file (the kernel releases it if the process dies). Held by one task of
    a process at a time: the desk takes its own asyncio lock first.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._file: IO[bytes] | None = None
        self._conn: AsyncConnection | None = None

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[AsyncConnection | None]:
        """Hold the lock; on PostgreSQL, yields the connection holding it (in autocommit), on
        which reads under the lock save a pool check-out and a transaction."""
        engine = self._resources.engine
        if engine.url.get_backend_name() == "postgresql":
            async with self._pg_lock() as conn:
                yield conn
            return
        database = engine.url.database
        if not database or database == ":memory:":
            yield None  # one process alone can open an in-memory database
            return
        fd = self._lock_file(Path(f"{database}.venue.lock")).fileno()
        taking = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The thread may still get the lock: give it back then, or nobody ever gets it.
            taking.add_done_callback(lambda _t: fcntl.flock(fd, fcntl.LOCK_UN))
            raise
        try:
            yield None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_file(self, path: Path) -> IO[bytes]:
        if self._file is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("ab")
        return self._file

    @asynccontextmanager
    async def _pg_lock(self) -> AsyncIterator[AsyncConnection]:
        # One connection of its own, kept open and in autocommit: taking and giving back the
        # lock is one round trip each, with no transaction around it.
        key = {"key": _PG_VENUE_LOCK_KEY}
        with translate_errors("venue lock"):
            if self._conn is None:
                conn = await self._resources.engine.connect()
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            conn = self._conn
            try:
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            except BaseException:
                await self._drop()
                raise
        try:
            yield conn
        finally:
            try:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            except BaseException:
                # A connection that may still hold the lock is closed: ending its session
                # releases the lock.
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.invalidate()
            await conn.close()


@dataclass(frozen=True, slots=True)
class VenueChanges:
    """What other replicas wrote since a replica last held the venue: the fills after its
    fill sequence, and every open order with its fills; `version` is the newest transition."""

    version: int
    fills: list[FillRecord]
    open_orders: list[StoredOrder]


@dataclass(frozen=True, slots=True)
class SharedState:
    """The shared venue's latest quotes, the signed trading state enforced on it, and the
    orders and fills changed since the reader's version (None if none)."""

    quotes: list[Quote]
    risk: StoredRiskState | None
    changes: VenueChanges | None


@dataclass(frozen=True, slots=True)
class StoredRiskState:
    """The trading state a replica adopted, as it was signed, and when it was last verified."""

    signed: SignedState
    source: str
    reason: str
    verified_at_ms: int


class Placement:
    """The order path's one transaction (see `OrderStore.placing`): the lookup of the client
    order ids submitted, then the new orders, written with one statement per table."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get_many(self, client_order_ids: Sequence[str]) -> dict[str, StoredOrder]:
        """The known orders among `client_order_ids`, with their fills, in one read."""
        return await _get_many(self._session, client_order_ids)

    async def record_new(
        self,
        items: Sequence[Report],
        *,
        outbox: Outbox,
        last_fill_sequence: int | None,
        version: bool = False,
    ) -> list[Recorded]:
        """Write new orders (submissions): each one's row, transitions, fills and events, in
        `items`' order; the orders as written (nothing is read back).

        Every table takes one multi-row INSERT whatever the batch size: the children find
        their order's id by its client order id in the same statement, so no id is fetched
        back. Fills are numbered in `items`' order after `last_fill_sequence` (else the
        table's maximum). With `version`, the highest transition id is read (a shared venue's
        version after this write); else `last_event_id` is 0."""
        session = self._session
        last = last_fill_sequence
        if last is None and any(item.report.fills for item in items):
            last = await session.scalar(select(func.coalesce(func.max(FillRecord.id), 0)))
        last = int(last or 0)
        orders = [_order_values(item) for item in items]
        written: list[list[dict[str, Any]]] = []
        transitions: list[dict[str, Any]] = []
        fills: list[dict[str, Any]] = []
        events: list[Event[Any]] = []
        for item in items:
            cid = item.report.order.client_order_id
            fill_values = []
            for fill in item.report.fills:
                last += 1
                fill_values.append({**fill.columns(), "id": last, "order_cid": cid})
            written.append(fill_values)
            transitions += _transitions(item, cid)
            fills += fill_values
            if fill_values:
                sequences = {f["fill_id"]: f["id"] for f in fill_values}
                events += [_with_sequence(e, sequences) for e in item.events]
            else:
                events += item.events
        await execute(session, _INSERT_ORDERS, orders)
        await execute(session, _INSERT_TRANSITIONS, transitions)
        if fills:
            await execute(session, _INSERT_FILLS, fills)
        await outbox.add_many(session, events)
        last_event_id = 0
        if version:
            last_event_id = int(
                await session.scalar(select(func.coalesce(func.max(OrderEventRow.id), 0))) or 0
            )
        dialect = session.get_bind().dialect.name
        recorded = []
        for values, fill_values, item in zip(orders, written, items, strict=True):
            # As `get` reads it back: the last rejection's or cancellation's reason.
            reasons = [e.reason for e in item.report.events if e.kind.value in ("REJECT", "CANCEL")]
            placed = PlacedOrder(
                _order_read_back(values, dialect),
                tuple(_fill_read_back(f, dialect) for f in fill_values),
                (reasons[-1] if reasons else None) or "",
            )
            recorded.append(
                Recorded(fill_values[-1]["id"] if fill_values else None, placed, last_event_id)
            )
        return recorded


def _table(model: type[Any]) -> Table:
    """The table of a model, for Core statements (no ORM bookkeeping per row)."""
    return cast(Table, model.__table__)


def _order_id_of(param: str) -> Any:
    orders = _table(OrderRecord)
    return select(orders.c.id).where(orders.c.client_order_id == bindparam(param)).scalar_subquery()


_INSERT_ORDERS = insert(_table(OrderRecord))
_KNOWN_IDS = select(_table(OrderRecord).c.client_order_id).where(
    _table(OrderRecord).c.client_order_id.in_(bindparam("ids", expanding=True))
)
_KNOWN_ID = select(_table(OrderRecord).c.client_order_id).where(
    _table(OrderRecord).c.client_order_id == bindparam("id")
)
_INSERT_TRANSITIONS = insert(_table(OrderEventRow)).values(order_id=_order_id_of("order_cid"))
_INSERT_FILLS = insert(_table(FillRecord)).values(order_id=_order_id_of("order_cid"))


class OrderStore:
    """Reads and writes the execution tables through the service's unit of work."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def record(
        self,
        report: VenueReport,
        *,
        outbox: Outbox,
        events: Sequence[Event[Any]] = (),
        reserved_cash: Decimal = Decimal(0),
        traceparent: str | None = None,
        risk_decision_id: str | None = None,
        new: bool = False,
        last_fill_sequence: int | None = None,
    ) -> Recorded:
        """Persist what one venue call did: the order's state and reservation, its transitions
        and fills, and the events announcing them (into the outbox, in the same commit).

        `new` says the order has no row yet (a submission: nothing to look up). Fills are
        numbered after `last_fill_sequence`, the highest written, when the caller knows it (the
        desk, which alone writes fills, one report at a time), else after the table's maximum.
        Returns the order as written (nothing is read back) and the highest sequence written."""
        item = Report(report, tuple(events), reserved_cash, traceparent, risk_decision_id)
        if new:
            async with self.placing() as placement:
                written = await placement.record_new(
                    [item], outbox=outbox, last_fill_sequence=last_fill_sequence, version=True
                )
            return written[0]
        order = report.order
        async with self._resources.session() as session:
            row = await session.scalar(
                select(OrderRecord).where(OrderRecord.client_order_id == order.client_order_id)
            )
            if row is None:
                row = _new_row(item)
                session.add(row)
            _copy_progress(row, order)
            row.reserved_cash = reserved_cash
            await session.flush()
            last = last_fill_sequence
            if last is None and report.fills:
                last = await session.scalar(select(func.coalesce(func.max(FillRecord.id), 0)))
            fill_rows, _, event_rows = _write_children(session, outbox, item, row, int(last or 0))
            await session.flush()  # the transitions' ids
        sequences = [f.id for f in fill_rows]
        return Recorded(
            max(sequences, default=None), None, max((e.id for e in event_rows), default=0)
        )

    @asynccontextmanager
    async def placing(self) -> AsyncIterator[Placement]:
        """One transaction for a batch of submissions: which ids are known, then the new
        orders; committed when the block ends, rolled back if it raises."""
        async with self._resources.session() as session:
            yield Placement(session)

    async def get_many(self, client_order_ids: Sequence[str]) -> dict[str, StoredOrder]:
        """The known orders among `client_order_ids`, with their fills, in one read."""
        async with self._resources.session() as session:
            return await _get_many(session, client_order_ids)

    async def get(self, client_order_id: str) -> StoredOrder | None:
        """One order and its fills; None if unknown."""
        async with self._resources.session() as session:
            row = await session.scalar(
                select(OrderRecord).where(OrderRecord.client_order_id == client_order_id)
            )
            if row is None:
                return None
            fills = await self._fills_of(session, [row.id])
            reasons = await self._reasons_of(session, [row.id])
            return StoredOrder(row, tuple(fills.get(row.id, ())), reasons.get(row.id, ""))

    async def recent(self, *, status: str | None, limit: int) -> list[StoredOrder]:
        """Newest orders first, optionally of one status, with their fills."""
        async with self._resources.session() as session:
            query = select(OrderRecord).order_by(OrderRecord.id.desc()).limit(limit)
            if status is not None:
                query = query.where(OrderRecord.status == status)
            rows = list(await session.scalars(query))
            ids = [r.id for r in rows]
            fills = await self._fills_of(session, ids)
            reasons = await self._reasons_of(session, ids)
            return [StoredOrder(r, tuple(fills.get(r.id, ())), reasons.get(r.id, "")) for r in rows]

    async def client_order_ids_since(self, since_ms: int) -> list[str]:
        """Every client order id received (persisted, in any status) at or after `since_ms`."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(OrderRecord.client_order_id)
                .where(OrderRecord.created_at >= to_datetime(since_ms))
                .order_by(OrderRecord.id)
            )
            return list(rows)

    async def received_since(self, since_ms: int) -> list[tuple[int, str]]:
        """(received at, in ms; client order id) of every order persisted since `since_ms`."""
        async with self._resources.session() as session:
            rows = await session.execute(
                select(OrderRecord.created_at, OrderRecord.client_order_id)
                .where(OrderRecord.created_at >= to_datetime(since_ms))
                .order_by(OrderRecord.id)
            )
            return [(round(at.timestamp() * 1000), cid) for at, cid in rows]

    async def events(self, client_order_id: str) -> list[OrderEventRow]:
        """Every persisted transition of one order, in sequence."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(OrderEventRow)
                .where(OrderEventRow.client_order_id == client_order_id)
                .order_by(OrderEventRow.sequence)
            )
            return list(rows)

    async def load_for_restore(self) -> tuple[list[FillRecord], list[StoredOrder]]:
        """Every fill (to rebuild balances) and the open orders with their fills."""
        async with self._resources.session() as session:
            fills = list(await session.scalars(select(FillRecord).order_by(FillRecord.id)))
            rows = list(
                await session.scalars(
                    select(OrderRecord)
                    .where(OrderRecord.status.in_(OPEN_STATUSES))
                    .order_by(OrderRecord.id)
                )
            )
        by_order: dict[int, list[FillRecord]] = {}
        for fill in fills:
            by_order.setdefault(fill.order_id, []).append(fill)
        return fills, [StoredOrder(r, tuple(by_order.get(r.id, ()))) for r in rows]

    # The shared venue (replicas of execution on one database, under the VenueLock) -------------

    async def venue_version(self) -> int:
        """The newest order transition's id: it moves with every order, cancel and fill."""
        async with self._resources.session() as session:
            return int(
                await session.scalar(select(func.coalesce(func.max(OrderEventRow.id), 0))) or 0
            )

    async def catch_up(
        self, version: int, fill_sequence: int, conn: AsyncConnection | None = None
    ) -> SharedState:
        """In one read: every symbol's latest quote, the enforced trading state and, if any
        order changed since `version` (the newest transition id seen), what did: the fills
        after `fill_sequence` and every open order as it is now, with all its fills.

        `conn` is the connection holding the VenueLock, if any: under the lock nothing
        changes these rows, so reading them outside a transaction is one consistent view."""
        async with self._reading(conn) as session:
            now = int(
                await session.scalar(select(func.coalesce(func.max(OrderEventRow.id), 0))) or 0
            )
            quotes = [
                Quote(Symbol(q.symbol), q.bid, q.ask, q.last, q.volume, q.ts_ms)
                for q in await session.scalars(select(ExecutionQuote))
            ]
            row = await session.get(ExecutionRiskState, VENUE_KEY)
            risk = None
            if row is not None:
                risk = StoredRiskState(
                    SignedState(row.state, row.epoch, row.token),
                    row.source,
                    row.reason,
                    row.verified_at_ms,
                )
            if now == version:
                return SharedState(quotes, risk, None)
            fills = list(
                await session.scalars(
                    select(FillRecord).where(FillRecord.id > fill_sequence).order_by(FillRecord.id)
                )
            )
            rows = list(
                await session.scalars(
                    select(OrderRecord)
                    .where(OrderRecord.status.in_(OPEN_STATUSES))
                    .order_by(OrderRecord.id)
                )
            )
            by_order = await self._fills_of(session, [r.id for r in rows])
        changes = VenueChanges(
            now, fills, [StoredOrder(r, tuple(by_order.get(r.id, ()))) for r in rows]
        )
        return SharedState(quotes, risk, changes)

    @asynccontextmanager
    async def _reading(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncSession]:
        if conn is None:
            async with self._resources.session() as session:
                yield session
            return
        with translate_errors("catch-up"):
            async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                yield session

    async def save_quote(self, quote: Quote) -> bool:
        """Keep `quote` as its symbol's latest, unless the one kept is newer (False then)."""
        async with self._resources.session() as session:
            row = await session.get(ExecutionQuote, quote.symbol)
            if row is not None and row.ts_ms > quote.ts_ms:
                return False
            if row is None:
                row = ExecutionQuote(symbol=quote.symbol)
                session.add(row)
            row.bid, row.ask, row.last, row.volume = quote.bid, quote.ask, quote.last, quote.volume
            row.ts_ms = quote.ts_ms
            row.updated_at = datetime.now(UTC)
        return True

    async def save_risk_state(
        self, signed: SignedState, *, source: str, reason: str, verified_at_ms: int
    ) -> None:
        """Keep `signed` as the enforced state, unless a higher epoch is kept already."""
        async with self._resources.session() as session:
            row = await session.get(ExecutionRiskState, VENUE_KEY)
            if row is not None and row.epoch > signed.epoch:
                return
            if row is None:
                row = ExecutionRiskState(venue=VENUE_KEY)
                session.add(row)
            row.state, row.epoch, row.token = signed.state, signed.epoch, signed.token
            row.source, row.reason, row.verified_at_ms = source, reason, verified_at_ms
            row.updated_at = datetime.now(UTC)

    @staticmethod
    async def _fills_of(
        session: AsyncSession, order_ids: Sequence[int]
    ) -> dict[int, list[FillRecord]]:
        if not order_ids:
            return {}
        rows = await session.scalars(
            select(FillRecord).where(FillRecord.order_id.in_(order_ids)).order_by(FillRecord.id)
        )
        result: dict[int, list[FillRecord]] = {}
        for fill in rows:
            result.setdefault(fill.order_id, []).append(fill)
        return result

    @staticmethod
    async def _reasons_of(session: AsyncSession, order_ids: Sequence[int]) -> dict[int, str]:
        if not order_ids:
            return {}
        rows = await session.execute(
            select(OrderEventRow.order_id, OrderEventRow.reason)
            .where(
                OrderEventRow.order_id.in_(order_ids),
                OrderEventRow.kind.in_(("REJECT", "CANCEL")),
            )
            .order_by(OrderEventRow.sequence)
        )
        return {order_id: reason for order_id, reason in rows}


async def _get_many(
    session: AsyncSession, client_order_ids: Sequence[str]
) -> dict[str, StoredOrder]:
    # Nearly every id submitted is new: a Core query of the ids alone answers that at a
    # fraction of the ORM's cost, and only the known ones (retries) are loaded as rows.
    if len(client_order_ids) == 1:
        # The tick path's one order: a statement without an expanding IN runs direct.
        known = (await execute(session, _KNOWN_ID, {"id": client_order_ids[0]})).scalars().all()
    else:
        known = list(await session.scalars(_KNOWN_IDS, {"ids": client_order_ids}))
    if not known:
        return {}
    rows = list(
        await session.scalars(select(OrderRecord).where(OrderRecord.client_order_id.in_(known)))
    )
    ids = [r.id for r in rows]
    fills = await OrderStore._fills_of(session, ids)
    reasons = await OrderStore._reasons_of(session, ids)
    return {
        r.client_order_id: StoredOrder(r, tuple(fills.get(r.id, ())), reasons.get(r.id, ""))
        for r in rows
    }


_SQLITE_REAL_DIGITS = 15
"""SQLite's NUMERIC affinity stores a decimal text as REAL only if 15 digits survive."""

_PG_SCALE = Decimal(10) ** -18


def _read_back(value: Decimal | None, dialect: str) -> Decimal | None:
    """`value` as the database hands it back (`DecimalNumeric`), without reading it back."""
    if value is None:
        return None
    if dialect != "sqlite":
        return value.quantize(_PG_SCALE)  # NUMERIC(38, 18)
    if value == value.to_integral_value() and abs(value) < 2**63:
        return Decimal(int(value))  # an integral literal becomes an INTEGER
    if len(value.normalize().as_tuple().digits) <= _SQLITE_REAL_DIGITS:
        return Decimal(str(float(value)))  # a REAL, read back through str
    return value  # kept as TEXT


_ORDER_AMOUNTS = ("quantity", "limit_price", "filled_quantity", "average_fill_price")
_FILL_AMOUNTS = ("quantity", "price", "fee")


def _order_read_back(values: dict[str, Any], dialect: str) -> dict[str, Any]:
    """An order's written values with the amounts a read of its row would give, so an answer
    built from them equals the one built from a later read (the INSERT's parameters, reused
    once it ran)."""
    for name in _ORDER_AMOUNTS:
        values[name] = _read_back(values[name], dialect)
    return values


def _fill_read_back(values: dict[str, Any], dialect: str) -> dict[str, Any]:
    for name in _FILL_AMOUNTS:
        values[name] = _read_back(values[name], dialect)
    return values


def _order_values(item: Report) -> dict[str, Any]:
    """The column values of a new order's row, as the INSERT takes them."""
    order = item.report.order
    return {
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "quantity": order.quantity,
        "limit_price": order.limit_price,
        "time_in_force": order.time_in_force.value,
        "reduce_only": order.reduce_only,
        "status": order.status.value,
        "filled_quantity": order.filled_quantity,
        "average_fill_price": order.average_fill_price,
        "sequence": order.sequence,
        "risk_decision_id": item.risk_decision_id,
        "trace_context": item.traceparent,
        "reserved_cash": item.reserved_cash,
        "created_at": to_datetime(order.created_ms),
        "updated_at": to_datetime(order.updated_ms),
    }


def _new_row(item: Report) -> OrderRecord:
    order = item.report.order
    return OrderRecord(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side.value,
        order_type=order.order_type.value,
        quantity=order.quantity,
        limit_price=order.limit_price,
        time_in_force=order.time_in_force.value,
        reduce_only=order.reduce_only,
        risk_decision_id=item.risk_decision_id,
        trace_context=item.traceparent,
        created_at=to_datetime(order.created_ms),
    )


def _write_children(
    session: AsyncSession, outbox: Outbox, item: Report, row: OrderRecord, last_fill: int
) -> tuple[list[FillRecord], int, list[OrderEventRow]]:
    """Add one report's transitions, fills and events under the order `row` (flushed, so its
    id is known); the fill rows, the highest fill sequence now used, the transition rows."""
    event_rows = [OrderEventRow(order_id=row.id, **values) for values in _transitions(item)]
    session.add_all(event_rows)
    fill_rows, last_fill = _number_fills(item, last_fill, order_id=row.id)
    session.add_all(fill_rows)
    sequences = {f.fill_id: f.id for f in fill_rows}
    for announcement in item.events:
        outbox.add(session, _with_sequence(announcement, sequences))
    return fill_rows, last_fill, event_rows


def _transitions(item: Report, order_cid: str | None = None) -> list[dict[str, Any]]:
    """The column values of one report's transition rows (without `order_id`; with
    `order_cid`, the parameter by which the INSERT finds it)."""
    trace_id = item.traceparent.split("-")[1] if item.traceparent else None
    extra = {} if order_cid is None else {"order_cid": order_cid}
    return [
        {
            "client_order_id": event.client_order_id,
            "sequence": event.sequence,
            "kind": event.kind.value,
            "from_status": event.from_status.value if event.from_status else None,
            "to_status": event.to_status.value,
            "filled_quantity": event.filled_quantity,
            "fill_quantity": event.fill_quantity,
            "fill_price": event.fill_price,
            "reason": event.reason,
            "trace_id": trace_id,
            "occurred_at": to_datetime(event.ts_ms),
            **extra,
        }
        for event in item.report.events
    ]


def _number_fills(
    item: Report, last_fill: int, order_id: int | None = None
) -> tuple[list[FillRecord], int]:
    """One report's fill rows, numbered after `last_fill`; the highest number now used.

    A fill row's id is the venue's fill sequence, which its order.filled carries. It is
    numbered here, inside the transaction that writes the fills, rather than by the
    database's autoincrement: a rolled-back transaction burns sequence values on
    PostgreSQL, and the portfolio would wait forever for the fill of a hole. The desk
    writes under its lock, so the numbers cannot race."""
    fill_rows = [fill_record(fill, order_id) for fill in item.report.fills]
    for fill_row in fill_rows:
        last_fill += 1
        fill_row.id = last_fill
    return fill_rows, last_fill


def fill_record(fill: Fill, order_id: int | None) -> FillRecord:
    """The row of `fill` (its `id`, the venue sequence, is numbered when it is written;
    without `order_id`, the INSERT finds it)."""
    if order_id is None:
        return FillRecord(**fill.columns())
    return FillRecord(**fill.columns(), order_id=order_id)


def _with_sequence(event: Event[Any], sequences: Mapping[str, int]) -> Event[Any]:
    """`event`, with the venue sequence (the fill row's id) if it announces one of these fills."""
    data = event.data
    if isinstance(data, OrderFilled) and data.fill_id in sequences:
        return replace(event, data=data.model_copy(update={"sequence": sequences[data.fill_id]}))
    return event


def _copy_progress(row: OrderRecord, order: Order) -> None:
    row.status = order.status.value
    row.filled_quantity = order.filled_quantity
    row.average_fill_price = order.average_fill_price
    row.sequence = order.sequence
    row.updated_at = to_datetime(order.updated_ms)
