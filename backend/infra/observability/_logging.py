"""JSON log lines on stdout: one object per line, carrying the active trace id.

Lines go through one buffered, thread-safe sink. A request's access line is written straight to
the sink by the HTTP middleware (the stdlib `logging` machinery costs ~15 % of a trivial
request's throughput); everything else goes through stdlib `logging` with `JsonFormatter`, so
uvicorn's and third-party loggers come out in the same format.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import IO, Any

import orjson

from ._otel import HAS_API, otel_baggage, otel_trace
from ._redact import redact_bytes, scrubber

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName", "_fields"}

_FLUSH_INTERVAL_S = 0.2
_FLUSH_BYTES = 64 * 1024
_DRAIN_SLICE = 64


class DeferredLines:
    """Log records queued as plain tuples and formatted in bulk when the sink flushes.

    Used for access lines: the request path pays for one tuple and one deque append; the
    formatting (several µs per line when interleaved with request handling, less than half
    of that in a tight loop) happens on the flusher thread. At most `max_pending` records wait;
    past that the caller formats them itself.
    """

    def __init__(self, format_line: Callable[[tuple[Any, ...]], str], max_pending: int = 4096):
        self._format = format_line
        # Public for callers on a hot path, which append and check the length themselves.
        self.queue: deque[tuple[Any, ...]] = deque()
        self.max_pending = max_pending

    def add(self, record: tuple[Any, ...]) -> None:
        queue = self.queue
        queue.append(record)
        if len(queue) >= self.max_pending:
            SINK.flush()

    def drain(self) -> bytes:
        queue = self.queue
        pop = queue.popleft
        fmt = self._format
        lines = []
        try:
            for n in range(1, len(queue) + 1):
                lines.append(fmt(pop()))
                if not n % _DRAIN_SLICE:
                    # Let the event loop thread have the GIL between slices: formatting a
                    # 200 ms backlog in one go held it for milliseconds, a request's p99.
                    time.sleep(0)
        except IndexError:  # another thread drained concurrently
            pass
        return "".join(lines).encode()


class LineSink:
    """Buffers encoded lines and writes them to a stream.

    Urgent lines (every stdlib log record) and any line once the buffer holds 64 KiB are
    written at once; the rest (access lines) within 200 ms by a daemon thread, at app
    shutdown and at exit.
    """

    def __init__(self, stream_getter: Callable[[], IO[str]] = lambda: sys.stdout) -> None:
        self._stream_getter = stream_getter
        self._lock = threading.Lock()
        # One growing bytearray, not a list of lines: keeping hundreds of small bytes objects
        # alive between flushes made each log call ~4 µs slower (allocator churn, measured).
        self._buffer = bytearray()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._deferred: list[DeferredLines] = []

    def defer(self, format_line: Callable[[tuple[Any, ...]], str]) -> DeferredLines:
        """A queue of records this sink formats and writes on each flush."""
        deferred = DeferredLines(format_line)
        self._deferred.append(deferred)
        if self._thread is None:
            self._start()
        return deferred

    def forget(self, deferred: DeferredLines) -> None:
        """Stop flushing `deferred` (its handler was retired: `SinkHandler.retire`)."""
        with contextlib.suppress(ValueError):
            self._deferred.remove(deferred)

    def write(self, line: bytes, urgent: bool = False) -> None:
        with self._lock:
            self._buffer += line
            if urgent or len(self._buffer) >= _FLUSH_BYTES:
                self._flush_locked()
        if self._thread is None:
            self._start()

    def flush(self) -> None:
        pending = [d.drain() for d in self._deferred]
        with self._lock:
            for chunk in pending:
                self._buffer += chunk
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        stream = self._stream_getter()
        try:
            raw = getattr(stream, "buffer", None)
            if raw is not None:
                stream.flush()  # keep order with text already written by print()
                raw.write(data)
                raw.flush()
            else:
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()
        except (OSError, ValueError):
            # stdout closed or gone (e.g. a broken pipe at shutdown): logging must not crash.
            pass

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="observability-log-flusher", daemon=True
            )
            self._thread.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while not self._stop.wait(_FLUSH_INTERVAL_S):
            self.flush()


SINK = LineSink()


class _UtcClock:
    """Formats epoch seconds as ISO-8601 UTC with milliseconds, caching the seconds part."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{_MILLIS[int((ts - second) * 1000)]}Z"


_MILLIS = [f"{n:03d}" for n in range(1001)]


_CLOCK = _UtcClock()


def utc_timestamp(ts: float) -> str:
    """`2026-11-24T01:02:03.456Z` for epoch seconds `ts`."""
    return _CLOCK.format(ts)


def current_span_context() -> Any | None:
    """The active span's `SpanContext` when it is valid, else None."""
    if not HAS_API:
        return None
    ctx = otel_trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


_EXCEPTION_CONTEXT = "__observability_span_context__"


def tag_exception(exc: BaseException, span_context: Any) -> None:
    """Remember on `exc` the span it escaped from, for lines logged after its context ended."""
    if getattr(exc, _EXCEPTION_CONTEXT, None) is None:
        with contextlib.suppress(AttributeError, TypeError):  # a type with __slots__
            setattr(exc, _EXCEPTION_CONTEXT, span_context)


def exception_span_context(exc: BaseException | None) -> Any | None:
    """The span context `tag_exception` stored on `exc`, or None."""
    return getattr(exc, _EXCEPTION_CONTEXT, None) if exc is not None else None


def current_trace_ids() -> tuple[str | None, str | None]:
    """Hex trace id and span id of the active span, or (None, None)."""
    ids = _current_ids()
    return ids[0], ids[1]


_NO_IDS: tuple[str | None, str | None, str | None] = (None, None, None)
_FLAGS_HEX = [f"{n:02x}" for n in range(256)]


def _current_ids() -> tuple[str | None, str | None, str | None]:
    """Hex trace id, span id and trace flags of the active span, or three Nones."""
    if not HAS_API:
        return _NO_IDS
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return _NO_IDS
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", _FLAGS_HEX[int(ctx.trace_flags)]


def _default(value: object) -> str:
    return str(value)


def encode_line(fields: Mapping[str, Any]) -> bytes:
    """One JSON object and a newline; values JSON cannot hold are written as `str(value)`."""
    return orjson.dumps(fields, default=_default, option=orjson.OPT_APPEND_NEWLINE)


# `extra` keys that are not fields: uvicorn's copy of its message with ANSI colour codes.
_DROPPED_EXTRA = frozenset({"color_message"})


class JsonFormatter(logging.Formatter):
    """Formats a `LogRecord` as the project's JSON log object.

    The message and every field are scrubbed (`Scrubber`): a field whose name looks like a
    secret's is `REDACTED`, and `secret=value` pairs and URL passwords in text are removed.
    Baggage is only written for the keys in `baggage_keys` (as `baggage.<key>`).
    """

    def __init__(
        self, resource: Mapping[str, str], baggage_keys: frozenset[str] = frozenset()
    ) -> None:
        super().__init__()
        self.resource = dict(resource)
        self.baggage_keys = baggage_keys

    def to_fields(
        self,
        record: logging.LogRecord,
        ids: tuple[str | None, str | None, str | None] | None = None,
        baggage: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The line's fields; `ids` and `baggage`, when given, are the trace ids and baggage
        captured when the record was made (it is formatted later, off the caller's context)."""
        trace_id, span_id, trace_flags = _current_ids() if ids is None else ids
        if trace_id is None and record.exc_info:
            # An error logged outside its span (uvicorn's "Exception in ASGI application").
            tagged = exception_span_context(record.exc_info[1])
            if tagged is not None:
                trace_id, span_id = f"{tagged.trace_id:032x}", f"{tagged.span_id:016x}"
                trace_flags = _FLAGS_HEX[int(tagged.trace_flags)]
        scrub = scrubber()
        fields: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub.text(record.getMessage()),
            **self.resource,
            "trace_id": trace_id,
            "span_id": span_id,
            # The W3C flags: "00" says the trace was not sampled, so there is none to look up.
            "trace_flags": trace_flags,
        }
        bound = record.__dict__.get("_fields")
        if bound:
            for key, value in bound.items():
                fields[key] = scrub.value(key, value)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in _DROPPED_EXTRA:
                fields[key] = scrub.value(key, value)
        if self.baggage_keys and HAS_API:
            if baggage is None:
                baggage = otel_baggage.get_all()
            for key, value in baggage.items():
                if key in self.baggage_keys:
                    fields[f"baggage.{key}"] = scrub.value(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            fields["exception"] = {
                "type": exc_type.__qualname__,
                "module": exc_type.__module__,
                "message": scrub.text(str(exc)),
                "stacktrace": scrub.text("".join(traceback.format_exception(exc_type, exc, tb))),
            }
        if record.stack_info:
            fields["stack"] = record.stack_info
        return fields

    def format(self, record: logging.LogRecord) -> str:
        return encode_line(self.to_fields(record)).decode("utf-8").rstrip("\n")


_AT_ONCE = "uvicorn"
"""Loggers whose every line is written at once: uvicorn's start-up and shutdown lines. After a
SIGTERM uvicorn logs "Finished server process" and re-raises the signal, which ends the process
before any flusher or atexit hook runs."""


class SinkHandler(logging.Handler):
    """Writes records through `JsonFormatter` to the shared line sink.

    Records below WARNING are queued with the trace ids and baggage active when they were
    made, and formatted and written by the sink's flusher (within 200 ms, at app shutdown
    and at exit), as access lines are: a service's INFO lines on a trade's path (the decision,
    the order placed, each client call's `HTTP Request` line) cost the caller a tuple and an
    append instead of their formatting, redaction and a write. WARNING and above, any record
    with an exception or a stack, and uvicorn's lines (`_AT_ONCE`) are written at once, after
    whatever is queued (the file keeps the order the lines were logged in): those are the
    lines wanted when a process dies. A SIGKILL loses the INFO lines of its last flush
    interval, as it loses the spans of its last export interval.
    """

    def __init__(self, formatter: JsonFormatter, sink: LineSink = SINK) -> None:
        super().__init__()
        self.json_formatter = formatter
        self.sink = sink
        # The OTLP log export queue (`add`), when logs also go to a collector.
        self.otlp: Any | None = None
        self._deferred = sink.defer(self._format_deferred)
        self._queue = self._deferred.queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if (
                record.levelno < logging.WARNING
                and not record.exc_info
                and not record.stack_info
                and not record.name.startswith(_AT_ONCE)
            ):
                # The message is made now: its arguments may change once the caller goes on.
                record.msg = record.getMessage()
                record.args = None
                formatter = self.json_formatter
                baggage = (
                    dict(otel_baggage.get_all()) if formatter.baggage_keys and HAS_API else None
                )
                self._queue.append((record, _current_ids(), baggage))
                if len(self._queue) >= self._deferred.max_pending:
                    self.sink.flush()
                return
            if self._queue:
                self.sink.flush()  # what was logged before this line comes before it
            # Written at once: uvicorn ends a SIGTERM by re-raising the signal, so atexit never
            # runs and a buffered line would be lost.
            self.sink.write(self._line(record, None, None), urgent=True)
        except Exception:  # a log call must never raise into the caller
            self.handleError(record)

    def _line(
        self,
        record: logging.LogRecord,
        ids: tuple[str | None, str | None, str | None] | None,
        baggage: Mapping[str, Any] | None,
    ) -> bytes:
        fields = self.json_formatter.to_fields(record, ids, baggage)
        otlp = self.otlp
        if otlp is not None:
            otlp.add((int(record.created * 1e9), record.levelno, record.levelname, fields))
        # Redacted as a whole line: a password can arrive in any field, an exception message
        # or a third-party traceback alike.
        return redact_bytes(encode_line(fields))

    def _format_deferred(self, queued: tuple[Any, ...]) -> str:
        record, ids, baggage = queued
        try:
            return self._line(record, ids, baggage).decode("utf-8")
        except Exception:  # formatting one record must not lose the others
            self.handleError(record)
            return ""

    def flush(self) -> None:
        self.sink.flush()

    def retire(self) -> None:
        """Write what is queued and stop the sink's flushing of this handler's queue (once it
        is replaced). Not `close`: `logging.config.dictConfig` (uvicorn's, for one) closes
        every handler and leaves the root logger's in place, still in use."""
        self.sink.flush()
        self.sink.forget(self._deferred)


class BoundLogger:
    """A stdlib logger with bound fields: `log.bind(order_id=...).info("filled", qty=3)`.

    Keyword arguments of a log call become fields of the JSON line; `extra=` works as usual.
    """

    __slots__ = ("_fields", "_logger")

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._fields = dict(fields or {})

    @property
    def name(self) -> str:
        return self._logger.name

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def bind(self, **fields: Any) -> BoundLogger:
        return BoundLogger(self._logger, {**self._fields, **fields})

    def isEnabledFor(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def setLevel(self, level: int | str) -> None:
        self._logger.setLevel(level)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._logger.isEnabledFor(level):
            return
        exc_info = kwargs.pop("exc_info", None)
        stack_info = kwargs.pop("stack_info", False)
        stacklevel = kwargs.pop("stacklevel", 1)
        extra = kwargs.pop("extra", None) or {}
        fields = {**self._fields, **kwargs} if kwargs else self._fields
        self._logger.log(
            level,
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel + 2,
            extra={**extra, "_fields": fields},
        )

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    warn = warning

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self.log(logging.ERROR, msg, *args, **kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.CRITICAL, msg, *args, **kwargs)


def get_logger(name: str | None = None) -> BoundLogger:
    """A logger whose records come out as JSON lines once `init_observability` has run."""
    return BoundLogger(logging.getLogger(name))


_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def configure_logging(
    resource: Mapping[str, str],
    level: str,
    client_access_log: bool = True,
    baggage_keys: frozenset[str] = frozenset(),
) -> SinkHandler:
    """Route the root logger (and uvicorn's loggers) through one JSON handler on stdout.

    One access line per request per side: the middleware's line on the server side (so
    uvicorn's own `uvicorn.access` line is silenced, also under `uvicorn module:app`, where
    uvicorn configured it before the app was imported), httpx's `HTTP Request` line on the
    client side, at INFO, switched off with `CLIENT_ACCESS_LOG=false`.
    """
    handler = SinkHandler(JsonFormatter(resource, baggage_keys))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, SinkHandler) or (
            isinstance(existing, logging.StreamHandler)
            and getattr(existing, "stream", None) in (sys.stdout, sys.stderr)
        ):
            root.removeHandler(existing)
            if isinstance(existing, SinkHandler):
                existing.retire()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.propagate = False
    access.setLevel(logging.WARNING)
    access.addHandler(logging.NullHandler())
    logging.getLogger("httpx").setLevel(logging.INFO if client_access_log else logging.WARNING)
    _adopt_uvicorn_default(level)
    return handler


def _adopt_uvicorn_default(level: str) -> None:
    """Make a plain `uvicorn.run(app)` (as the seed's services call it) log through us.

    `uvicorn.Config` takes `uvicorn.config.LOGGING_CONFIG` as its default `log_config`, bound
    when uvicorn was imported, so the dict is updated in place rather than rebound.
    """
    try:
        from uvicorn import config as uvicorn_config
    except ImportError:
        return
    uvicorn_config.LOGGING_CONFIG.clear()
    uvicorn_config.LOGGING_CONFIG.update(uvicorn_log_config(level))


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A `log_config` for `uvicorn.run` that keeps our JSON handler on the root logger.

    uvicorn's default config installs its own text handlers; this one leaves uvicorn's loggers
    without handlers so their records propagate to the root logger.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level}
            for name in ("uvicorn", "uvicorn.error")
        }
        | {"uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"}},
    }
