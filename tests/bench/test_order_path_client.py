"""The order-path benchmark's load client: keep-alive HTTP/1.1, shared over processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.order_path import (
    Connection,
    Part,
    _run_part,
    _shares,
    bare_server,
    bounds,
    main,
    ping,
    platform_env,
    platform_pids,
    service_pids,
)


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


def test_the_platforms_processes_include_the_viewers_worker_processes() -> None:
    """The viewer decodes and rolls up in processes of its own (grandchildren of the
    launcher): the CPU per order of the whole platform counts them, so they must be found."""
    sleeper = "import time; time.sleep(60)"
    viewer = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}]); time.sleep(60)"
    )
    launcher = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {viewer!r}, 'traceview']); "
        f"subprocess.Popen([sys.executable, '-c', {sleeper!r}, 'serve', 'execution']); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        found = platform_pids(proc.pid)
        while len(found) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            found = platform_pids(proc.pid)
        assert set(found) == {"launcher", "traceview", "execution", "traceview child 1"}
        assert set(service_pids(proc.pid)) == {"execution"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_bounds_say_what_rate_the_latency_target_needs_and_what_the_cpu_allows() -> None:
    line = bounds(64, 500.0, 0.004, 2)
    assert "64 in flight at 500.0/s wait 128 ms on average" in line
    assert "p99 <= 50 ms needs >= 1,280 orders/s" in line
    assert "2 cores at 4.00 ms of CPU per order serve at most 500 orders/s" in line
    assert "wait inf ms" in bounds(64, 0.0, 0.0, 2)
    # A tail twice the mean: the mean must be 25 ms, so twice the rate.
    spread = bounds(64, 500.0, 0.004, 2, spread=2.0)
    assert "needs >= 1,280 orders/s (>= 2,560 at this run's spread, p99 2.0x the mean)" in spread
    assert "spread" not in line


def test_tracing_off_turns_the_services_span_export_off_and_needs_no_trade_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.infra.observability._config import load_config

    def tracing(env: dict[str, str]) -> bool:
        return load_config("bench", env=env).tracing_enabled

    on = platform_env(tmp_path, 0, "t", 10, "INFO", tracing=True)
    off = platform_env(tmp_path, 0, "t", 10, "WARNING", tracing=False)
    assert tracing(on) and not tracing(off)
    assert off["LOG_LEVEL"] == "WARNING"
    # The trades' timing is read from their traces: there are none to read.
    with pytest.raises(SystemExit) as exited:
        main(["--tracing", "off"])
    assert exited.value.code == 2
    assert "--trace-seconds 0" in capsys.readouterr().err
