"""Per-statement telemetry: a CLIENT span, the sqlcommenter `traceparent` comment, metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select

from backend.infra.observability import SpanKind, get_logger, get_tracer, record_error

from ._errors import _sqlstate, is_unavailable
from ._metrics import POOLS, QUERY_DURATION, QUERY_ERRORS
from ._sqlcomment import (
    append_comment,
    collection_name,
    format_comment,
    operation_name,
    sanitize,
)

TRACER_NAME = "backend.infra.db"
_SPAN_KEY = "_qt_db_span"
_DEFAULT_PORTS = {"postgresql": 5432}
_statement_log = get_logger("backend.infra.db.statements")


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


def _collection(context: ExecutionContext | None, statement: str) -> str | None:
    compiled = getattr(context, "compiled", None)
    if compiled is not None:
        stmt = compiled.statement
        table = getattr(stmt, "table", None)  # INSERT / UPDATE / DELETE
        if isinstance(table, Table):
            return table.name
        if isinstance(stmt, Select):
            froms = stmt.get_final_froms()
            # semconv: name the collection only when the statement targets exactly one.
            return froms[0].name if len(froms) == 1 and isinstance(froms[0], Table) else None
    return collection_name(statement)


def _error_kind(error: BaseException) -> str:
    if is_unavailable(error):
        return "unavailable"
    if isinstance(error, IntegrityError):
        return "integrity"
    return "query"


class StatementTelemetry:
    """The engine event listeners; one instance per engine."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.tracer = get_tracer(TRACER_NAME)
        self._base = target.base_attributes()

    def before_execute(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> tuple[str, Any]:
        operation = operation_name(statement)
        collection = _collection(context, statement)
        attributes = dict(self._base)
        attributes["db.operation.name"] = operation
        if collection:
            attributes["db.collection.name"] = collection
        attributes["db.query.text"] = sanitize(statement)
        if executemany and isinstance(parameters, (list, tuple)):
            attributes["db.operation.batch.size"] = len(parameters)
        target = collection or self.target.namespace
        name = f"{operation} {target}" if target else operation
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        if context is not None:
            setattr(context, _SPAN_KEY, (span, operation, time.perf_counter()))
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
        span, operation, t0 = started
        QUERY_DURATION.labels(self.target.system, operation).observe(time.perf_counter() - t0)
        span.end()

    def on_error(self, ctx: ExceptionContext) -> None:
        started = getattr(ctx.execution_context, _SPAN_KEY, None)
        if started is None:
            return
        setattr(ctx.execution_context, _SPAN_KEY, None)
        span, operation, t0 = started
        error = ctx.sqlalchemy_exception or ctx.original_exception
        QUERY_DURATION.labels(self.target.system, operation).observe(time.perf_counter() - t0)
        QUERY_ERRORS.labels(self.target.system, operation, _error_kind(error)).inc()
        code = _sqlstate(ctx.original_exception)
        if code:
            span.set_attribute("db.response.status_code", code)
        record_error(span, ctx.original_exception, type(ctx.original_exception).__name__)
        span.end()


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
    POOLS.track(engine, name)
    return telemetry
