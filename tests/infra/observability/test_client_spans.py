"""Outgoing httpx calls make CLIENT spans in the stable HTTP conventions, secrets redacted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind


@pytest.fixture
def server_port() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path.startswith("/items") else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def client_span(exporter):  # type: ignore[no-untyped-def]
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    return span


def test_httpx_spans_use_the_stable_http_conventions(span_exporter, server_port: int) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{server_port}/items/7?token=abc&q=1").is_success
    attributes = dict(client_span(span_exporter).attributes)
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == server_port
    assert attributes["url.full"] == f"http://127.0.0.1:{server_port}/items/7?token=REDACTED&q=1"
    assert not {"http.method", "http.url", "http.status_code"} & attributes.keys()


async def test_async_httpx_spans_too(span_exporter, server_port: int) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server_port}/missing?api_key=k")
    assert response.status_code == 404
    attributes = dict(client_span(span_exporter).attributes)
    assert attributes["error.type"] == "404"
    assert attributes["url.full"].endswith("/missing?api_key=REDACTED")
    assert "http.method" not in attributes
