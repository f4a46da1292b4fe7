"""A real OTLP receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC on free local ports.

Spans are decoded by the trace viewer's `decode_spans` (with `opentelemetry-proto`), so a test
sees exactly what left the process, as the viewer would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from backend.infra.traceview import OtlpSpan, decode_spans


class OtlpReceiver:
    """Collects spans sent over OTLP/HTTP and OTLP/gRPC. Use as a context manager."""

    def __init__(self) -> None:
        self.spans: list[OtlpSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None
        self.http_port = 0
        self.grpc_port = 0

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def _add(self, payload: bytes) -> None:
        decoded = decode_spans(payload)
        with self._cond:
            self.requests += 1
            self.spans.extend(decoded)
            self._cond.notify_all()

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver._add(body)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                return None

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

        import grpc

        def export(request: bytes, context: Any) -> bytes:
            receiver._add(request)
            return ExportTraceServiceResponse().SerializeToString()

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},
        )
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._grpc.add_generic_rpc_handlers((handler,))
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(
        self, predicate: Callable[[list[OtlpSpan]], bool], timeout_s: float = 15.0
    ) -> list[OtlpSpan]:
        """Block until `predicate(spans)` holds; return the spans, or fail with what arrived."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({(s.resource.get("service.name"), s.name) for s in self.spans})
                    raise AssertionError(f"timed out waiting for spans; received {names}")
                self._cond.wait(remaining)
            return list(self.spans)
