"""One pure-ASGI middleware: the SERVER span, the HTTP metrics and the access log, in one pass."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from time import gmtime, perf_counter, strftime, time
from typing import Any

import orjson
from prometheus_client.exposition import choose_encoder

from . import _metrics, _state, _tracing
from ._logging import _MILLIS, SINK, current_span_context, tag_exception
from ._metrics import UNMATCHED_ROUTE, HttpMetrics, scrape_registry
from ._otel import HAS_SDK, StatusCode
from ._redact import scrubber

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

if HAS_SDK:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    _BAGGAGE = W3CBaggagePropagator()


@dataclass
class MiddlewareOptions:
    """Switched on by `instrument_fastapi` (tracing, access log) and `add_metrics_middleware`."""

    tracing: bool = False
    metrics: bool = False
    access_log: bool = False


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (`/orders/{order_id}`), mount prefixes included."""
    route = scope.get("route")
    if route is None:
        return None
    path: str | None = getattr(route, "path", None)
    if path is None:
        return None
    root_path = scope.get("root_path")
    if not root_path:  # not mounted, no proxy prefix: the common case
        return path
    prefix = root_path[len(scope.get("app_root_path", "")) :]
    return prefix + path if prefix and not path.startswith(prefix) else path


class ObservabilityMiddleware:
    """Traces, measures and logs each HTTP request; serves `/metrics` if the app has none.

    The request path is written for speed (it runs for every request of every service):
    no per-request allocations beyond the span, the send wrapper and one log line.
    """

    def __init__(self, app: ASGIApp, options: MiddlewareOptions) -> None:
        self.app = app
        self.options = options
        self.metrics = HttpMetrics()
        self._app_has_metrics: bool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = _flush_on_shutdown(send)
            await self.app(scope, receive, send)
            return
        options = self.options
        path = scope["path"]
        excluded = path == "/metrics" or path.startswith("/health")
        if (
            excluded
            and path == "/metrics"
            and options.metrics
            and not self._has_metrics_route(scope)
        ):
            await _serve_metrics(scope, send)
            return
        started = perf_counter()
        method = scope["method"]
        span = token = None
        if options.tracing and not excluded:
            rt = _tracing._RUNTIME
            if rt is not None:
                span, token = _start_span(rt, scope, method, path)

        status = 500
        response_started = False

        def send_wrapper(message: Message) -> Awaitable[None]:
            # A plain function handing back `send`'s awaitable: no coroutine of its own for
            # each of the response's messages.
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            return send(message)

        metrics = self.metrics
        metrics.in_flight += 1
        if _metrics.MULTIPROCESS:
            _metrics.active_requests(1)
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            error = exc
            if not response_started:
                status = 500
            if span is not None:
                # The server logs this exception after the context is gone; the formatter
                # takes the request's ids from the exception itself.
                tag_exception(exc, span.get_span_context())
            raise
        finally:
            metrics.in_flight -= 1
            if _metrics.MULTIPROCESS:
                _metrics.active_requests(-1)
            elapsed = perf_counter() - started
            # `route_template(scope)` for the common case (a route, no mount or proxy prefix).
            route = scope.get("route")
            if route is not None and not scope.get("root_path"):
                route = getattr(route, "path", None)
            else:
                route = route_template(scope)
            # A SpanContext is a tuple (trace id, span id, remote, flags, state, valid): read
            # by index, not through its properties, once for the metric and the access line.
            ctx = span._context if span is not None else None
            if options.metrics:
                if error is not None:
                    error_type = type(error).__qualname__
                else:
                    error_type = str(status) if status >= 500 else ""
                trace_id = span_id = 0
                if ctx is not None and ctx[3] & 0x01:  # an exemplar must lead to a recorded trace
                    trace_id, span_id = ctx[0], ctx[1]
                metrics.observe(
                    method,
                    route or UNMATCHED_ROUTE,
                    status,
                    elapsed,
                    scope.get("scheme", "http"),
                    error_type,
                    trace_id,
                    span_id,
                )
            if span is not None:
                if span.__class__ is not _tracing.NonRecordingSpan:  # unsampled: nothing to end
                    _end_span(span, route, status, error)
                _tracing.exit_span(token)
            if options.access_log and not excluded and _state.ACCESS_LOG[0]:
                if span is None:
                    ctx = current_span_context()
                _write_access_line(scope, method, path, route, status, elapsed, ctx)

    def _has_metrics_route(self, scope: Scope) -> bool:
        if self._app_has_metrics is None:
            app = scope.get("app")
            routes = getattr(app, "routes", ())
            self._app_has_metrics = any(getattr(r, "path", None) == "/metrics" for r in routes)
        return self._app_has_metrics


def _start_span(rt: Any, scope: Scope, method: str, path: str) -> tuple[Any, Any]:
    traceparents: list[bytes] | None = None
    tracestates: list[bytes] | None = None
    baggage = None
    host = forwarded_host = user_agent = None
    wanted = _REQUEST_HEADERS.get
    for name, value in scope["headers"]:
        # One look-up for each header the span does not need (most of a request's).
        header = wanted(name)
        if header is None:
            continue
        if header == _HOST:
            host = value
        elif header == _TRACEPARENT:
            if traceparents is None:
                traceparents = []
            traceparents.append(value)
        elif header == _TRACESTATE:
            if tracestates is None:
                tracestates = []
            tracestates.append(value)
        elif header == _BAGGAGE_HEADER:
            baggage = value
        elif header == _USER_AGENT:
            user_agent = value
        else:
            forwarded_host = value
    base = None
    if _tracing.CUSTOM_PROPAGATORS[0]:
        parent, base = _tracing.extract_with_propagators(scope["headers"])
        baggage = None  # read by the propagators, if they include baggage
    else:
        parent = _tracing.remote_parent(traceparents, tracestates) if traceparents else None
    known = method in _metrics.KNOWN_METHODS
    span = _tracing.start_server_span(
        rt,
        method if known else "HTTP",
        parent,
        _server_attributes,
        (scope, method, path, known, host, forwarded_host, user_agent),
    )
    if baggage:
        base = _BAGGAGE.extract({"baggage": baggage.decode("latin-1")})
    return span, _tracing.enter_span(span, base)


_HOST, _TRACEPARENT, _TRACESTATE, _BAGGAGE_HEADER, _USER_AGENT, _FORWARDED_HOST = range(6)
_REQUEST_HEADERS = {
    b"host": _HOST,
    b"traceparent": _TRACEPARENT,
    b"tracestate": _TRACESTATE,
    b"baggage": _BAGGAGE_HEADER,
    b"user-agent": _USER_AGENT,
    b"x-forwarded-host": _FORWARDED_HOST,
}


def _server_attributes(
    scope: Scope,
    method: str,
    path: str,
    known: bool,
    host: bytes | None,
    forwarded_host: bytes | None,
    user_agent: bytes | None,
) -> tuple[Any, tuple[Any, ...]]:
    """The SERVER span's request attributes as a hashable `(build, args)` pair (see
    `start_server_span`); made for sampled requests only."""
    client = scope.get("client")
    return _request_attributes, (
        scope.get("scheme", "http"),
        scope.get("http_version", "1.1"),
        method,
        path,
        known,
        forwarded_host or host,
        None if forwarded_host or host else scope.get("server"),
        scope.get("query_string"),
        user_agent,
        client[0] if client else None,
    )


def _request_attributes(
    scheme: str,
    version: str,
    method: str,
    path: str,
    known: bool,
    authority: bytes | None,
    server: tuple[str, int | None] | None,
    query: bytes | None,
    user_agent: bytes | None,
    client_address: str | None,
) -> dict[str, Any]:
    """The SERVER span's request attributes, from `_server_attributes`' arguments."""
    attributes: dict[str, Any] = {
        "http.request.method": method if known else "_OTHER",
        "url.path": path,
        "url.scheme": scheme,
        "network.protocol.version": version,
    }
    if not known:
        attributes["http.request.method_original"] = method
    # server.* name the server the client meant (X-Forwarded-Host, then Host), not the
    # socket this process listens on.
    if authority:
        address, port = _split_authority(authority.split(b",", 1)[0].strip(), scheme)
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    elif server:
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    if query:
        attributes["url.query"] = scrubber().query(query.decode("latin-1"))
    if user_agent:
        attributes["user_agent.original"] = user_agent.decode("latin-1")
    if client_address:
        attributes["client.address"] = client_address
    return attributes


def _response_attributes(
    request: tuple[Any, tuple[Any, ...]], route: str | None, status: int
) -> dict[str, Any]:
    """An ended SERVER span's attributes: the request's, then the route and the status."""
    attributes: dict[str, Any] = request[0](*request[1])
    if route is not None:
        attributes["http.route"] = route
    attributes["http.response.status_code"] = status
    return attributes


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_authority(authority: bytes, scheme: str) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6]:port` -> (address, port); the scheme's port when absent."""
    text = authority.decode("latin-1")
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = text.partition(":")
    if port_text.isdigit():
        return address, int(port_text)
    return address, _DEFAULT_PORTS.get(scheme)


def _end_span(span: Any, route: str | None, status: int, error: BaseException | None) -> None:
    if span._end_time is not None:  # ended by the app already (`is_recording()`, uncalled)
        return
    lazy = span._lazy
    if lazy is not None and error is None and status < 500:
        # The common case: nothing read or changed the attributes, so they stay a hashable
        # description that the exporter encodes once per distinct request and response.
        if route is not None:
            span._name = f"{span._name} {route}"
        span._lazy = (_response_attributes, (lazy, route, status))
        span.end()
        return
    if route is not None:
        # The name's method is the one the span started with: `HTTP` for an unknown method.
        span.update_name(f"{span._name} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if error is not None:
        _tracing.record_error(span, error)
    elif status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(StatusCode.ERROR)
    span.end()


def _json(value: str | None) -> str:
    """A JSON string literal; the common case (plain printable ASCII) skips the encoder."""
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return orjson.dumps(value).decode()


def _format_access_line(record: tuple[Any, ...]) -> str:
    """One JSON access line from a queued record (a dict + orjson costs twice as much).

    The parts that depend on the method, path, route and status, and the client's address,
    are formatted once and reused: a service answers the same few requests over and over."""
    ts, method, path, route, status, elapsed, trace_id, span_id, flags, client = record
    otlp = _state.OTLP_LOGS[0]
    if otlp is not None:
        otlp.add(_access_log_record(record))
    resource = _state.RESOURCE_JSON[0]
    key = (method, path, route, status)
    parts = _LINE_PARTS.get(key)
    if parts is None or parts[0] is not resource:
        if len(_LINE_PARTS) >= _LINE_PARTS_MAX:
            _LINE_PARTS.clear()
        parts = _LINE_PARTS[key] = (
            resource,
            f'","level":"INFO","logger":"access",'
            f'"message":{_json(f"{method} {path} {status}")},{resource},',
            f',"http.request.method":{_json(method)},'
            f'"url.path":{_json(path)},'
            f'"http.route":{_json(route)},'
            f'"http.response.status_code":{status},'
            f'"duration_ms":',
        )
    host = client[0] if client else None
    address = _CLIENTS.get(host)
    if address is None:
        if len(_CLIENTS) >= _LINE_PARTS_MAX:
            _CLIENTS.clear()
        address = _CLIENTS[host] = f',"client.address":{_json(host)}}}\n'
    # `utc_timestamp(ts)` inlined, and ids in hex by `to_bytes().hex()`: each line is formatted
    # on the service's own core, and these are its costliest parts (~40 % fewer instructions).
    second = int(ts)
    cached, prefix = _SECOND[0]
    if second != cached:
        prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(second))
        _SECOND[0] = (second, prefix)  # one tuple: the flusher and the loop may both format
    stamp = f"{prefix}.{_MILLIS[int((ts - second) * 1000)]}Z"
    if trace_id:
        return (
            f'{{"time":"{stamp}{parts[1]}"trace_id":"{trace_id.to_bytes(16, "big").hex()}",'
            f'"span_id":"{span_id.to_bytes(8, "big").hex()}",{_FLAGS[flags]}{parts[2]}'
            f"{elapsed * 1000.0:.3f}{address}"
        )
    return (
        f'{{"time":"{stamp}{parts[1]}"trace_id":null,"span_id":null,'
        f'"trace_flags":null{parts[2]}{elapsed * 1000.0:.3f}{address}'
    )


# (epoch second, its `YYYY-MM-DDTHH:MM:SS` text) of the access line formatted last.
_SECOND: list[tuple[int, str]] = [(-1, "")]


# Formatted access-line parts by (method, path, route, status), and the `client.address`
# field by host. Bounded: emptied when full (a path with ids in it fills it; still correct).
_LINE_PARTS: dict[tuple[str, str, str | None, int], tuple[str, str, str]] = {}
_CLIENTS: dict[str | None, str] = {}
_LINE_PARTS_MAX = 1024
_FLAGS = tuple(f'"trace_flags":"{n:02x}"' for n in range(256))


def _access_log_record(record: tuple[Any, ...]) -> tuple[int, int, str, dict[str, Any]]:
    """The access line as an OTLP log record (time ns, level, level name, line fields)."""
    ts, method, path, route, status, elapsed, trace_id, span_id, flags, client = record
    fields: dict[str, Any] = {
        "logger": "access",
        "message": f"{method} {path} {status}",
        "http.request.method": method,
        "url.path": path,
        "http.route": route,
        "http.response.status_code": status,
        "duration_ms": round(elapsed * 1000.0, 3),
        "client.address": client[0] if client else None,
    }
    if trace_id:
        fields["trace_id"] = f"{trace_id:032x}"
        fields["span_id"] = f"{span_id:016x}"
        fields["trace_flags"] = f"{flags:02x}"
    return int(ts * 1e9), logging.INFO, "INFO", fields


_ACCESS = SINK.defer(_format_access_line)
# Appended to directly (`_ACCESS.add` without its call), as `_write_access_line` runs per request.
_ACCESS_QUEUE = _ACCESS.queue


def _write_access_line(
    scope: Scope, method: str, path: str, route: str | None, status: int, elapsed: float, ctx: Any
) -> None:
    """Queue the request's access line (`ctx`: the request's span context, or None); the log
    sink formats and writes it off the hot path."""
    if ctx is not None:
        # One unpacking, not three property calls. The flags stay a `TraceFlags` (an int),
        # formatted off the request path.
        trace_id, span_id, _remote, flags, _trace_state, _valid = ctx
    else:
        trace_id = span_id = flags = 0
    _ACCESS_QUEUE.append(
        (
            time(),
            method,
            path,
            route,
            status,
            elapsed,
            trace_id,
            span_id,
            flags,
            scope.get("client"),
        )
    )
    if status >= 500 or len(_ACCESS_QUEUE) >= _ACCESS.max_pending:
        SINK.flush()


async def _serve_metrics(scope: Scope, send: Send) -> None:
    """The default registry (every worker's, in multiprocess mode), in OpenMetrics (with
    exemplars) when the scraper asks for it."""
    accept = ""
    for name, value in scope["headers"]:
        if name == b"accept":
            accept = value.decode("latin-1")
            break
    encoder, content_type = choose_encoder(accept)
    body = encoder(scrape_registry())
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _flush_on_shutdown(send: Send) -> Send:
    """Flush queued spans before the server is told the app has shut down.

    atexit is not enough: uvicorn exits right after `lifespan.shutdown.complete`, and a
    daemon export thread can be killed with the last batch still queued.
    """

    async def wrapped(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            _tracing.flush_for_shutdown(5000)
            SINK.flush()
        await send(message)

    return wrapped
