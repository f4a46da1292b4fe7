"""The order-path benchmark's load client: keep-alive HTTP/1.1, shared over processes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.order_path import Connection, Part, _run_part, _shares, bare_server, ping


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps(
            {"got": json.loads(body), "auth": self.headers.get("Authorization")}
        ).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_connection_sends_json_with_its_headers_and_reads_each_answer(echo: str) -> None:
    async def talk() -> list[tuple[int, bytes]]:
        conn = Connection(echo, {"Authorization": "Bearer t"})
        try:
            return [await conn.request("POST", "/x", {"n": i}) for i in range(3)]
        finally:
            await conn.close()

    answers = asyncio.run(talk())
    assert [code for code, _ in answers] == [201, 201, 201]
    assert [json.loads(body) for _, body in answers] == [
        {"got": {"n": i}, "auth": "Bearer t"} for i in range(3)
    ]


def test_the_load_is_spread_over_the_client_processes() -> None:
    assert _shares(64, 2) == [32, 32]
    assert _shares(5, 2) == [3, 2]
    assert _shares(1, 4) == [1]


def test_the_client_floor_is_measured_against_a_bare_server_from_several_processes() -> None:
    with bare_server() as url:
        rate, p50, p99 = ping(url, 1.0, 4, 2)
    assert rate > 0 and 0 < p50 <= p99


class Venue(BaseHTTPRequestHandler):
    """Approves every check and accepts every order, at once."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        verdict = {"approved": True, "approval": {"token": "t"}}
        answer = json.dumps(verdict if self.path == "/check" else {"status": "FILLED"}).encode()
        self.send_response(200 if self.path == "/check" else 201)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_args: object) -> None:
        pass


def test_an_open_loop_offers_its_rate_whatever_the_answers_and_a_closed_loop_does_not() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Venue)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        part = Part(url, url, {}, 1.0, 4, "1", "100", "p")
        closed = _run_part(part)
        opened = _run_part(replace(part, rate=40.0, prefix="q"))
    finally:
        server.shutdown()
        server.server_close()
    # One order per slot due within the second (slots 0..39), however fast the answers come;
    # the closed loop sends as fast as it is answered.
    assert len(opened.accepted) == 40 and not opened.errors
    assert len(closed.accepted) > 40 and not closed.errors
    assert len(opened.order_ms) == 40
