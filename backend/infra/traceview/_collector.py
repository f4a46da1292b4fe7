"""The embedded collector's OTLP receivers: gRPC (4317) and HTTP/protobuf (4318) into the store.

Both take what any OpenTelemetry SDK or Collector exporter sends: `TraceService/Export` and
`LogsService/Export` over gRPC (gzip is grpcio's business), `POST /v1/traces` and
`POST /v1/logs` over HTTP with `Content-Type: application/x-protobuf` or `application/json`
(the OTLP JSON encoding, hex trace and span ids) and an optional `Content-Encoding: gzip`
(or `deflate`).
A body that does not decode gets HTTP 400 / gRPC INVALID_ARGUMENT with the reason; another
content type gets 415. When the store's queue is full the batch is refused, never waited for:
HTTP 503 with `Retry-After`, gRPC RESOURCE_EXHAUSTED, as the OTLP specification asks of an
overloaded server, and the spans are counted as dropped.

`ingest_routes(store)` gives the Starlette routes, so the viewer on 16686 accepts
`POST /v1/traces` too (the services' `OTLP_ENDPOINT` may name either port).
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from typing import Any, Protocol

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._sqlstore import MalformedPayload

__all__ = ["GrpcReceiver", "HttpServer", "ingest_app", "ingest_routes"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
RETRY_AFTER_S = 1
MAX_BODY_BYTES = 64 * 1024 * 1024
_TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


class Ingest(Protocol):
    """What the receivers need of a store (`SqliteSpanStore` has it)."""

    def ingest_otlp(self, payload: bytes) -> tuple[int, int]: ...

    def ingest_otlp_logs(self, payload: bytes) -> tuple[int, int]: ...


class _Signal:
    """One OTLP signal: its request/response messages and the store's call for it."""

    def __init__(self, name: str, unit: str, request: Any, response: Any) -> None:
        self.name = name
        self.unit = unit
        self.request = request
        self.response = response

    def ok(self) -> bytes:
        return bytes(self.response().SerializeToString())


def _signals() -> tuple[_Signal, _Signal]:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace

    return (
        _Signal(
            "traces", "spans", trace.ExportTraceServiceRequest, trace.ExportTraceServiceResponse
        ),
        _Signal(
            "logs", "log records", logs.ExportLogsServiceRequest, logs.ExportLogsServiceResponse
        ),
    )


# OTLP/JSON ------------------------------------------------------------------------------------

_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id"})


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex; protobuf's JSON mapping wants base64."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError as exc:
                    raise MalformedPayload(f"{key} {value!r} is not hex") from exc
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def _json_to_protobuf(body: bytes, message: Any) -> bytes:
    from google.protobuf import json_format

    try:
        document = json.loads(body)
    except ValueError as exc:
        raise MalformedPayload(f"the body is not JSON: {exc}") from exc
    try:
        parsed = json_format.ParseDict(_hex_ids_to_base64(document), message())
    except json_format.ParseError as exc:
        raise MalformedPayload(f"not an OTLP/JSON {message.__name__}: {exc}") from exc
    return bytes(parsed.SerializeToString())


# HTTP -----------------------------------------------------------------------------------------


def _problem(status: int, message: str, *, headers: dict[str, str] | None = None) -> Response:
    """The OTLP/HTTP error body is a `google.rpc.Status`; its JSON form reads well as text."""
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def ingest_routes(store: Ingest) -> list[BaseRoute]:
    """`POST /v1/traces` and `POST /v1/logs` into `store`."""
    traces, logs = _signals()

    def receiver(signal: _Signal, ingest: Callable[[bytes], tuple[int, int]]) -> Any:
        async def receive(request: Request) -> Response:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in (PROTOBUF, JSON):
                return _problem(
                    415,
                    f"Content-Type {media or '(none)'!r} is not supported: send "
                    f"{PROTOBUF} (or {JSON}) to /v1/{signal.name}",
                )
            body = await request.body()
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding == "gzip":
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError, zlib.error) as exc:
                    return _problem(400, f"the body is not valid gzip: {exc}")
            elif encoding == "deflate":
                try:
                    body = zlib.decompress(body)
                except zlib.error as exc:
                    return _problem(400, f"the body is not valid deflate data: {exc}")
            elif encoding not in ("identity", ""):
                return _problem(
                    415,
                    f"Content-Encoding {encoding!r} is not supported: use gzip, deflate or none",
                )
            if len(body) > MAX_BODY_BYTES:
                return _problem(413, f"the body exceeds {MAX_BODY_BYTES} bytes")
            try:
                if media == JSON:
                    body = _json_to_protobuf(body, signal.request)
                _, refused = ingest(body)
            except MalformedPayload as exc:
                return _problem(400, str(exc))
            if refused:
                return _problem(
                    503,
                    f"the collector's queue is full: {refused} {signal.unit} refused; retry later",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            if media == JSON:
                return JSONResponse({})
            return Response(signal.ok(), media_type=PROTOBUF)

        return receive

    return [
        Route("/v1/traces", receiver(traces, store.ingest_otlp), methods=["POST"]),
        Route("/v1/logs", receiver(logs, store.ingest_otlp_logs), methods=["POST"]),
    ]


def ingest_app(store: Ingest) -> Starlette:
    """The OTLP/HTTP receiver on its own (port 4318)."""
    return Starlette(routes=ingest_routes(store))


# gRPC -----------------------------------------------------------------------------------------


class GrpcReceiver:
    """OTLP/gRPC `TraceService/Export` and `LogsService/Export` into `store`.

    Requests reach the store as the bytes that came, decoded once, by the same code as HTTP.
    """

    def __init__(self, store: Ingest, *, host: str = "127.0.0.1", port: int = 4317) -> None:
        self.store = store
        self.host = host
        self._requested_port = port
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _handler(self, signal: _Signal, ingest: Callable[[bytes], tuple[int, int]]) -> Any:
        ok = signal.ok()

        def export(payload: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                _, refused = ingest(payload)
            except MalformedPayload as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if refused:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the collector's queue is full: {refused} {signal.unit} refused",
                )
            return ok

        return grpc.unary_unary_rpc_method_handler(export)

    def start(self) -> GrpcReceiver:
        traces, logs = _signals()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"),
            options=[("grpc.max_receive_message_length", MAX_BODY_BYTES)],
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _TRACE_SERVICE, {"Export": self._handler(traces, self.store.ingest_otlp)}
                ),
                grpc.method_handlers_generic_handler(
                    _LOGS_SERVICE, {"Export": self._handler(logs, self.store.ingest_otlp_logs)}
                ),
            )
        )
        port = server.add_insecure_port(f"{self.host}:{self._requested_port}")
        if not port:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.host}:{self._requested_port}")
        server.start()
        self.port = port
        self._server = server
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None

    def __enter__(self) -> GrpcReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Running an ASGI app in a thread ----------------------------------------------------------------


class HttpServer:
    """An ASGI app served by uvicorn on a background thread (port 0: a free one)."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> HttpServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"http-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise OSError(f"the HTTP server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout_s)
            self._server = None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
