"""Real processes for service tests: Redis, per-service environments, start/stop, log reading.

Every child gets this run's random `QT_API_TOKEN` and `RISK_APPROVAL_SECRET`; `http` is the
test's own client and sends the token, as an operator holding it would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

from backend.infra.service import BUILT_SERVICES
from backend.infra.traceview import OtlpSpan
from tests.support.polling import wait_until
from tests.support.postgres import scratch_databases
from tests.support.procs import Proc, free_port, running, wait_ready

# Every built service of the catalogue, by name; tests start them by their seed script.
SPECS = {spec.name: spec for spec in BUILT_SERVICES}

# Random per run and distinctive, so a test can search everything emitted for them.
API_TOKEN = f"qt-run-token-{secrets.token_urlsafe(24)}"
APPROVAL_SECRET = f"qt-run-approval-{secrets.token_urlsafe(32)}"

http = httpx.Client(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5.0)
"""A client for the services under test that sends the run's bearer token."""


def base_env(redis: str, otlp_endpoint: str | None) -> dict[str, str]:
    """What every child shares: the Redis, a bus prefix of this test alone, fast span export."""
    env = {
        "REDIS_URL": redis,
        "EVENTBUS_PREFIX": f"qt-test-{uuid.uuid4().hex[:10]}",
        "EVENTBUS_BLOCK_MS": "200",
        "LOG_LEVEL": "INFO",
        "SHUTDOWN_TIMEOUT_S": "5",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "QT_API_TOKEN": API_TOKEN,
        "RISK_APPROVAL_SECRET": APPROVAL_SECRET,
    }
    if otlp_endpoint:
        env.update(OTLP_ENDPOINT=otlp_endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    else:
        env["ENABLE_TRACING"] = "false"
    return env


@contextmanager
def service(
    name: str,
    tmp: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    timeout_s: float = 40.0,
) -> Iterator[tuple[Proc, str]]:
    """Run `python microservices/<pkg>/main.py` until ready; yields the process and its URL."""
    port = port or free_port()
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    child_env = {"PORT": str(port), **env}
    child_env.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{tmp / 'db' / name}.db")
    with running(
        [SPECS[name].script],
        child_env,
        logs / f"{name}.log",
        port=port,
        ready_path="/health/ready",
        timeout_s=timeout_s,
    ) as proc:
        yield proc, f"http://127.0.0.1:{port}"


@contextmanager
def services(
    names: list[str],
    tmp: Path,
    env: Mapping[str, str],
    *,
    per_service: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 60.0,
    ports: Mapping[str, int] | None = None,
) -> Iterator[dict[str, tuple[Proc, str]]]:
    """Start several services at once (each knowing the others' URLs) and wait until all are
    ready; yields name -> (process, URL). They are stopped together (SIGTERM, then waited).
    `ports` fixes some services' ports (a proxy in front of one must know it in advance)."""
    ports = {name: (ports or {}).get(name) or free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    shared = dict(env)
    for name, url in urls.items():
        shared[SPECS[name].url_variable] = url
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, Proc] = {}
    try:
        for name in names:
            child_env = {"PORT": str(ports[name]), **shared, **(per_service or {}).get(name, {})}
            child_env.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{tmp / 'db' / name}.db")
            procs[name] = Proc([SPECS[name].script], child_env, logs / f"{name}.log")
        deadline = time.monotonic() + timeout_s
        for name, proc in procs.items():
            left_s = max(0.0, deadline - time.monotonic())
            wait_ready(proc, ports[name], "/health/ready", left_s, name=name, with_output=True)
        yield {name: (proc, urls[name]) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.stop()


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    """The process's JSON log lines (anything else it printed is left out)."""
    lines = []
    for line in proc.lines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


NOT_YET = (httpx.HTTPError, AssertionError, KeyError, ValueError)
"""What a process that is still starting (or not there yet) makes a predicate raise."""


def poll(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """`wait_until` over processes: their errors while starting (`NOT_YET`) mean "not yet"."""
    return wait_until(predicate, timeout_s, what, interval_s, ignoring=NOT_YET)


class StubServer:
    """A FastAPI app served by uvicorn on a free port in a thread of the test process."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> StubServer:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the stub server to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


# Headers the proxy does not pass on: it re-frames the body it read (already decoded).
HOP_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "connection"}


class ForwardingProxy:
    """A real HTTP proxy in front of one service, in a thread of the test process.

    It forwards every request to `target` as it came (headers and body) and answers with the
    target's response, after awaiting `before` if set. While `dropping` returns True for a
    request's (method, path) the proxy answers 503 without forwarding, as a lost connection
    would end the call. Point a caller's `<NAME>_URL` at `url` to cut that caller off from
    some of the target's routes and no others.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.dropping: Callable[[str, str], bool] = lambda _method, _path: False
        self.before: Callable[[str, str, bytes], Awaitable[None]] | None = None
        """Awaited with (method, path, body) before a request is forwarded: a test holds a
        request there while it changes something the request will then meet."""
        self.dropped: list[tuple[str, str]] = []
        app = FastAPI()
        app.add_api_route(
            "/{path:path}",
            self._forward,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        )
        self._stub = StubServer(app)
        self.url = self._stub.url

    async def _forward(self, request: Request, path: str) -> Response:
        if self.dropping(request.method, "/" + path):
            self.dropped.append((request.method, "/" + path))
            return Response(status_code=503, content=b"dropped by the test proxy")
        body = await request.body()
        if self.before is not None:
            await self.before(request.method, "/" + path, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                upstream = await client.request(
                    request.method,
                    f"{self.target}/{path}",
                    params=request.query_params,
                    headers=headers,
                    content=body,
                )
        except httpx.HTTPError as exc:
            # The target is down (it stops before its callers at the end of a test).
            return Response(status_code=502, content=f"{type(exc).__name__}: {exc}".encode())
        passed = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        return Response(upstream.content, upstream.status_code, headers=passed)

    def __enter__(self) -> ForwardingProxy:
        self._stub.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stub.__exit__(*exc)


__all__ = [
    "API_TOKEN",
    "APPROVAL_SECRET",
    "SPECS",
    "ForwardingProxy",
    "StubServer",
    "base_env",
    "http",
    "json_lines",
    "poll",
    "service",
    "services",
]


PRODUCER_KIND, CONSUMER_KIND = 4, 5
"""OTLP span kinds."""


@contextmanager
def databases(tmp: Path, names: list[str], label: str) -> Iterator[dict[str, dict[str, str]]]:
    """Per-service `DATABASE_URL`s: fresh PostgreSQL databases (named after `label`) if
    `TEST_DATABASE_URL` is set, else SQLite files under `tmp/db`."""
    admin = os.environ.get("TEST_DATABASE_URL", "").strip()
    if not admin:
        yield {name: {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/db/{name}.db"} for name in names}
        return
    with scratch_databases(len(names), label, admin) as urls:
        yield {name: {"DATABASE_URL": url} for name, url in zip(names, urls, strict=True)}


def service_of(span: OtlpSpan) -> str:
    return str(span.resource.get("service.name"))


def bus_joins(spans: list[OtlpSpan]) -> set[tuple[str, str, str]]:
    """(producer service, consumer service, span name) of CONSUMER spans under a PRODUCER."""
    by_id = {s.span_id: s for s in spans}
    joins = set()
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        if span.kind == CONSUMER_KIND and parent is not None and parent.kind == PRODUCER_KIND:
            joins.add((service_of(parent), service_of(span), span.name))
    return joins
