"""Per-statement telemetry: a CLIENT span, the sqlcommenter `traceparent` comment, metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Table, event
from sqlalchemy.engine import Compiled, Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select

from backend.infra.observability import (
    SpanKind,
    get_logger,
    get_tracer,
    record_error,
    start_lean_span,
)

from ._errors import _sqlstate, is_unavailable
from ._metrics import POOLS, QUERY_DURATION, QUERY_ERRORS
from ._sqlcomment import (
    append_comment,
    format_comment,
    operation_name,
    sanitize,
)
from ._summary import query_summary

TRACER_NAME = "backend.infra.db"
_SPAN_KEY = "_qt_db_span"
_DEFAULT_PORTS = {"postgresql": 5432}
_statement_log = get_logger("backend.infra.db.statements")
_SHAPES_MAX = 1024
_CACHEABLE_LEN = 8192


@dataclass(frozen=True)
class _Target:
    """What every span of one engine shares: system, namespace, server address."""

    system: str
    namespace: str | None
    address: str | None
    port: int | None
    commenter: bool
    log_statements: bool = False

    def base_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {"db.system.name": self.system}
        if self.namespace:
            attributes["db.namespace"] = self.namespace
        if self.address:
            attributes["server.address"] = self.address
        if self.port:
            attributes["server.port"] = self.port
        return attributes


def traceparent_of(span: Any) -> tuple[str | None, str | None]:
    """The W3C `traceparent` (and `tracestate`, if any) naming `span`, or (None, None)."""
    get_context = getattr(span, "get_span_context", None)
    ctx = get_context() if get_context is not None else None
    if ctx is None or not getattr(ctx, "is_valid", False):
        return None, None
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    state = ctx.trace_state.to_header() if ctx.trace_state else None
    return traceparent, state or None


def _operation_and_collection(compiled: Any) -> tuple[str | None, str | None]:
    """`db.operation.name` and `db.collection.name` from SQLAlchemy's compiled statement.

    The SQL conventions say not to parse these out of the query text; a `text()` statement
    has neither, and is described by `db.query.summary` alone.
    """
    if compiled is None:
        return None, None
    stmt = compiled.statement
    table = getattr(stmt, "table", None)  # INSERT / UPDATE / DELETE
    if isinstance(table, Table):
        if compiled.isinsert:
            return "INSERT", table.name
        if compiled.isupdate:
            return "UPDATE", table.name
        if compiled.isdelete:
            return "DELETE", table.name
    if isinstance(stmt, Select):
        froms = stmt.get_final_froms()
        # semconv: name the collection only when the statement targets exactly one.
        single = froms[0].name if len(froms) == 1 and isinstance(froms[0], Table) else None
        return "SELECT", single
    return None, None


def _batch_size(parameters: Any, executemany: bool) -> int | None:
    """Rows in a real batch (two or more parameter sets), else None.

    An ORM insert can reach the driver as an "executemany" of one flat row; counting that
    tuple would report its columns as the batch size.
    """
    if not executemany or not isinstance(parameters, (list, tuple)) or len(parameters) < 2:
        return None
    first = parameters[0]
    if isinstance(first, (list, tuple, dict)) or hasattr(first, "keys"):
        return len(parameters)
    return None


def _error_kind(error: BaseException) -> str:
    if is_unavailable(error):
        return "unavailable"
    if isinstance(error, IntegrityError):
        return "integrity"
    return "query"


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a statement's span takes from its text and kind alone (not from its values)."""

    operation: str
    """The metric's label: the leading keyword, bounded to a known set."""
    name: str
    summary: str | None
    attributes: dict[str, Any]


Started = tuple[Any, str, float]
"""An open statement span: the span, the metric's operation label, its start (perf_counter)."""


class StatementTelemetry:
    """The engine event listeners; one instance per engine."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.tracer = get_tracer(TRACER_NAME)
        self._base = target.base_attributes()
        self._shapes: dict[tuple[str, type | None], _Shape] = {}

    def _shape_of(self, statement: str, compiled: Compiled | None) -> _Shape:
        """The statement's shape, worked out once per SQL text and statement kind: a service
        runs the same few statements over and over, and walking the compiled statement and
        scanning its text cost more than the rest of the span."""
        key = (statement, type(compiled.statement) if compiled is not None else None)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._work_out_shape(statement, compiled)
            if len(statement) <= _CACHEABLE_LEN:
                if len(self._shapes) >= _SHAPES_MAX:
                    self._shapes.clear()  # rare: more distinct statements than any service has
                self._shapes[key] = shape
        return shape

    def _work_out_shape(self, statement: str, compiled: Compiled | None) -> _Shape:
        api_operation, collection = _operation_and_collection(compiled)
        summary = query_summary(statement)
        attributes = dict(self._base)
        if api_operation:
            attributes["db.operation.name"] = api_operation
        if collection:
            attributes["db.collection.name"] = collection
        attributes["db.query.text"] = sanitize(statement)
        if summary:
            attributes["db.query.summary"] = summary
        # Span name: the summary; else the operation and target; else the system.
        if summary:
            name = summary
        elif api_operation:
            name = f"{api_operation} {collection}" if collection else api_operation
        else:
            name = self.target.system
        return _Shape(operation_name(statement), name, summary, attributes)

    def start(
        self, statement: str, compiled: Compiled | None, parameters: Any, executemany: bool
    ) -> tuple[str, Started]:
        """Open the statement's span; the text to send (with its comment) and what `finish`
        or `fail` closes. Both ways to the driver (SQLAlchemy's events and `direct`) use it."""
        shape = self._shape_of(statement, compiled)
        attributes = dict(shape.attributes)
        name = shape.name
        batch = _batch_size(parameters, executemany)
        if batch is not None:
            attributes["db.operation.batch.size"] = batch
            name = f"BATCH {shape.summary}" if shape.summary else "BATCH"
            attributes["db.query.summary"] = name
        # A lean span: an SDK span costs about 100 µs to start and end, and every statement of
        # every request takes one (the exporters see the same span).
        span = start_lean_span(self.tracer, name, SpanKind.CLIENT, attributes)
        if self.target.commenter:
            traceparent, tracestate = traceparent_of(span)
            if traceparent is not None:
                tags = {"traceparent": traceparent}
                if tracestate:
                    tags["tracestate"] = tracestate
                statement = append_comment(statement, format_comment(tags))
        if self.target.log_statements:
            # The text exactly as the driver receives it, so its traceparent can be checked.
            _statement_log.info("sql statement", statement=statement, db_system=self.target.system)
        return statement, (span, shape.operation, time.perf_counter())

    def finish(self, started: Started) -> None:
        span, operation, t0 = started
        QUERY_DURATION.labels(self.target.system, operation).observe(time.perf_counter() - t0)
        span.end()

    def fail(self, started: Started, original: BaseException, error: BaseException) -> None:
        """Close the span of a statement that raised `original` (`error` as SQLAlchemy
        wraps it, which names the error's kind)."""
        span, operation, t0 = started
        QUERY_DURATION.labels(self.target.system, operation).observe(time.perf_counter() - t0)
        QUERY_ERRORS.labels(self.target.system, operation, _error_kind(error)).inc()
        code = _sqlstate(original)
        if code:
            span.set_attribute("db.response.status_code", code)
        record_error(span, original, type(original).__name__)
        span.end()

    def before_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        statement, started = self.start(
            statement, getattr(context, "compiled", None), parameters, executemany
        )
        if context is not None:
            setattr(context, _SPAN_KEY, started)
        return statement, parameters

    def after_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        started = getattr(context, _SPAN_KEY, None)
        if started is None:
            return
        setattr(context, _SPAN_KEY, None)
        self.finish(started)

    def on_error(self, ctx: ExceptionContext) -> None:
        started = getattr(ctx.execution_context, _SPAN_KEY, None)
        if started is None:
            return
        setattr(ctx.execution_context, _SPAN_KEY, None)
        error = ctx.sqlalchemy_exception or ctx.original_exception
        self.fail(started, ctx.original_exception, error)


_TELEMETRY: WeakKeyDictionary[Engine, StatementTelemetry] = WeakKeyDictionary()


def telemetry_of(engine: Engine) -> StatementTelemetry | None:
    """The telemetry `instrument_engine` attached to `engine`, if any."""
    return _TELEMETRY.get(engine)


def instrument_engine(
    engine: Engine, name: str, commenter: bool, *, log_statements: bool = False
) -> StatementTelemetry:
    """Attach tracing, sqlcommenter and metrics to a (sync) engine and track its pool.

    With `log_statements`, every statement is logged (INFO) as sent, comment included.
    """
    url = engine.url
    system = url.get_backend_name()
    target = _Target(
        system=system,
        namespace=url.database or None,
        address=url.host if system != "sqlite" else None,
        port=(url.port or _DEFAULT_PORTS.get(system)) if system != "sqlite" else None,
        commenter=commenter,
        log_statements=log_statements,
    )
    telemetry = StatementTelemetry(target)
    event.listen(engine, "before_cursor_execute", telemetry.before_execute, retval=True)
    event.listen(engine, "after_cursor_execute", telemetry.after_execute)
    event.listen(engine, "handle_error", telemetry.on_error)
    _TELEMETRY[engine] = telemetry
    POOLS.track(engine, name)
    return telemetry
