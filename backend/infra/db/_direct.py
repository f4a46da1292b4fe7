"""The order path's statements below SQLAlchemy's execution machinery, on SQLite's connection.

`await execute(session, statement, parameters)` runs a Core statement in the session's
transaction, as `session.execute` would, with the same span, comment and metrics
(`StatementTelemetry`), the same bind and result conversions and the same errors
(`sqlalchemy.exc.DBAPIError` and its kinds). On the embedded SQLite connection
(`OneHopConnection`) it hands the compiled text and the converted values to the driver
connection itself.

Why: measured on this project's engine (2 cores, Python 3.11, SQLAlchemy 2.1), a transaction of
two INSERTs costs 470 us of CPU through `Session.execute` and 315 us this way; the sqlite3 work
itself is about 15 us a statement. The difference is SQLAlchemy's per-statement machinery: the
ORM's execute, an execution context, the event dispatch, a greenlet switch each way. An order's
acknowledgement waits on seven such statements (execution five, risk-safety two). SQLAlchemy
still compiles each statement (once), supplies its type conversions, owns the transaction and
its commit, and the session flushes pending ORM objects first, as its autoflush would.

Taken only where the result is the same, decided once per statement and set of keys: positional
parameters, Python-side column defaults that need no execution context (a constant, a function
of no argument), no expanding `IN`, and rows returned only by a single-row statement (SQLAlchemy
renders a multi-row `RETURNING` as one multi-row INSERT). Everything else, and every other
driver (PostgreSQL), goes through `session.execute` unchanged; so does every statement of an
engine whose cursor events someone else listens to (an instrumentation, a test counting
statements), which sees them all.

The private attributes read from the compiled statement (`_bind_processors`, `_result_columns`)
are the ones SQLAlchemy's own execution context reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from ._instrument import telemetry_of
from ._sqlite import OneHopConnection, reads_only

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None

_PLANS_MAX = 512
_CONNECTION_KEY = "_qt_direct_connection"


class Rows:
    """A direct statement's outcome: the part of SQLAlchemy's result the callers read."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[tuple[Any, ...]]:
        return self._rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)

    def scalars(self) -> Scalars:
        return Scalars(row[0] for row in self._rows)

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class Scalars(list[Any]):
    """The first column of each row; `.all()` as SQLAlchemy's `ScalarResult` has it."""

    def all(self) -> list[Any]:
        return list(self)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a statement runs on the driver's connection, worked out once; `sql` None: it
    goes through `session.execute`."""

    sql: str | None
    compiled: SQLCompiler | None = None
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...] = ()
    results: tuple[Callable[[Any], Any] | None, ...] = ()
    defaults: tuple[tuple[str, Callable[[], Any]], ...] = ()
    """Columns whose Python-side default the statement takes (not given), and their maker."""
    reads: bool = False


_FALLBACK = _Plan(None)
_plans: dict[tuple[Executable, str, tuple[str, ...], bool], _Plan] = {}


def _plan_for(statement: Executable, dialect: Dialect, keys: tuple[str, ...], many: bool) -> _Plan:
    key = (statement, dialect.name, keys, many)
    plan = _plans.get(key)
    if plan is None:
        plan = _work_out(statement, dialect, keys, many)
        if len(_plans) >= _PLANS_MAX:
            _plans.clear()  # statements are module constants; only a misuse gets here
        _plans[key] = plan
    return plan


def _work_out(statement: Executable, dialect: Dialect, keys: tuple[str, ...], many: bool) -> _Plan:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if not isinstance(compiled, SQLCompiler) or not compiled.positional:
        return _FALLBACK
    if (
        compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.has_out_parameters
    ):
        return _FALLBACK
    defaults = []
    for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
        made = _default_of(column.onupdate if compiled.isupdate else column.default)
        if made is None:
            return _FALLBACK
        defaults.append((column.key, made))
    columns = compiled._result_columns
    if columns and many:
        return _FALLBACK
    processors = compiled._bind_processors
    binds: tuple[tuple[str, Any], ...] = tuple(
        (name, processors.get(name)) for name in compiled.positiontup or ()
    )
    results = tuple(
        column.type._cached_result_processor(dialect, None)  # as SQLAlchemy's cursor result
        for column in columns
    )
    sql = compiled.string
    return _Plan(sql, compiled, binds, results, tuple(defaults), reads=not many and reads_only(sql))


def _default_of(default: Any) -> Callable[[], Any] | None:
    """How to make a column's Python-side default without an execution context: a constant,
    or a function of no argument (SQLAlchemy wraps those, keeping the function as `_fn`).
    None for anything else (a function of the context, a sequence)."""
    if default is None:
        return None
    if default.is_scalar:
        value = default.arg
        return lambda: value
    if default.is_callable and default.arg is not default._fn:
        fn: Callable[[], Any] = default._fn
        return fn
    return None


async def _open(session: AsyncSession) -> OneHopConnection | None:
    """Begin the session's transaction if need be; its driver connection if it is SQLite's."""
    connection = await session.connection()
    driver = connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    if not isinstance(driver, OneHopConnection):
        driver = None
    session.sync_session.info[_CONNECTION_KEY] = (session.sync_session.get_transaction(), driver)
    return driver


async def execute(
    session: AsyncSession, statement: Executable, parameters: Parameters = None
) -> Any:
    """Run `statement` in `session`'s transaction, as `session.execute` would; its rows.

    `parameters`: one mapping, or a list of them (one statement per mapping). The result has
    `.all()`, `.scalars()`, `.scalar()` and `.rowcount`.
    """
    sync = session.sync_session
    held = sync.info.get(_CONNECTION_KEY)
    if held is not None and held[0] is sync.get_transaction():
        driver: OneHopConnection | None = held[1]
    else:
        driver = await _open(session)
    if driver is None:
        return await session.execute(statement, parameters)
    rows: Sequence[Mapping[str, Any]]
    if isinstance(parameters, Sequence):
        rows = parameters
        if not rows:
            return await session.execute(statement, parameters)
    else:
        rows = [parameters or {}]
    # As SQLAlchemy has it: a list of one mapping is one statement, not a batch.
    many = len(rows) > 1
    bind: Any = sync.get_bind()
    telemetry = telemetry_of(bind)
    if len(bind.dispatch.before_cursor_execute) > (telemetry is not None):
        # Someone else follows the engine's statements (an instrumentation, a test): they
        # see every one, as SQLAlchemy sends it.
        return await session.execute(statement, parameters)
    dialect = bind.dialect
    plan = _plan_for(statement, dialect, tuple(rows[0]), many)
    if plan.sql is None:
        return await session.execute(statement, parameters)
    if sync.autoflush and not sync._is_clean():
        # As the session would before a statement: pending ORM objects are written first.
        await session.flush()
    compiled = plan.compiled
    assert compiled is not None
    values = []
    for row in rows:
        if plan.defaults:
            # As SQLAlchemy's execution context does: a default is made for every row, and
            # only where the row gives no value of its own.
            row = {**{key: make() for key, make in plan.defaults}, **row}
        params = compiled.construct_params(row)
        values.append(
            tuple(
                params[name] if convert is None else convert(params[name])
                for name, convert in plan.binds
            )
        )
    sql, started = plan.sql, None
    if telemetry is not None:
        sql, started = telemetry.start(sql, compiled, values, many)
    try:
        _description, rowcount, _lastrowid, raw = await driver.run(
            sql, values if many else values[0], many, reads=plan.reads
        )
    except BaseException as exc:
        error: BaseException = exc
        if isinstance(exc, sqlite3.Error):
            error = DBAPIError.instance(sql, values, exc, sqlite3.Error, dialect=dialect)
        if telemetry is not None and started is not None:
            telemetry.fail(started, exc, error)
        if error is exc:
            raise
        raise error from exc
    if telemetry is not None and started is not None:
        telemetry.finish(started)
    results = plan.results
    if any(results):
        raw = [
            tuple(
                value if convert is None or value is None else convert(value)
                for value, convert in zip(row, results, strict=True)
            )
            for row in raw
        ]
    return Rows(raw, rowcount)
