"""The embedded collector and viewer as one process: the span store, OTLP/gRPC on 4317,
OTLP/HTTP on 4318 and the viewer (which takes OTLP/HTTP too) on 16686."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.routing import BaseRoute

from ._collector import GrpcReceiver, ingest_app, ingest_routes
from ._sqlstore import SqliteSpanStore

log = logging.getLogger("quantum_trader.traceview")

VIEWER_PORT = 16686
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318


@dataclass(frozen=True)
class Retention:
    """How long and how much the store keeps, and how much of the plain traffic."""

    max_age_h: float = 168.0
    max_mb: float = 1024.0
    tick_sample_rate: float = 0.1
    noise_sample_rate: float = 0.01


class _Follower(uvicorn.Server):
    """A second server in the same loop: the first one owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def open_store(path: Path, retention: Retention) -> SqliteSpanStore:
    return SqliteSpanStore(
        path.resolve(),
        max_age_s=retention.max_age_h * 3600,
        max_bytes=int(retention.max_mb * 1024 * 1024),
        tick_sample_rate=retention.tick_sample_rate,
        noise_sample_rate=retention.noise_sample_rate,
        decode_processes=1,
        rollup_processes=1,
    )


def collect_garbage_less_often() -> None:
    """The collector process's garbage collection: what is alive by now (modules, the viewer,
    the servers) is frozen out of every collection, as the services freeze theirs
    (`GC_FREEZE_AFTER_START=false` turns that off here too), and the youngest generation is
    collected every 50,000 allocations instead of 700. Ingest allocates records, rows and
    tuples by the hundred thousand a second, nearly all freed by their reference counts;
    collecting after every 700 of them, and full collections over every loaded object now and
    then, cost the collector process about a tenth of its CPU (see docs/COLLECTOR.md)."""
    if os.environ.get("GC_FREEZE_AFTER_START", "true").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    ):
        gc.collect()
        gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def serve(
    store_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = VIEWER_PORT,
    grpc_port: int | None = OTLP_GRPC_PORT,
    otlp_http_port: int | None = OTLP_HTTP_PORT,
    retention: Retention = Retention(),
    make_app: Callable[[SqliteSpanStore, list[BaseRoute]], Any] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM; then stop taking spans, write what is held, close the file.

    `make_app(store, ingest_routes)` builds the viewer (default: `create_app`; the command line
    adds the dashboard)."""
    from ._app import create_app

    if make_app is None:

        def make_app(store: SqliteSpanStore, routes: list[BaseRoute]) -> Any:
            return create_app(store, ingest_routes=routes)

    store = open_store(store_path, retention)
    receiver = None
    try:
        if grpc_port is not None:
            receiver = GrpcReceiver(store, host=host, port=grpc_port).start()
        viewer = make_app(store, ingest_routes(store))
        servers: list[uvicorn.Server] = [
            uvicorn.Server(
                uvicorn.Config(viewer, host=host, port=port, log_level="warning", access_log=False)
            )
        ]
        if otlp_http_port is not None:
            servers.append(
                _Follower(
                    uvicorn.Config(
                        ingest_app(store),
                        host=host,
                        port=otlp_http_port,
                        log_level="warning",
                        access_log=False,
                    )
                )
            )
        log.warning(
            "trace viewer on http://%s:%d; OTLP/HTTP on %s, OTLP/gRPC on %s; spans in %s",
            host,
            port,
            otlp_http_port or "the viewer's port only",
            grpc_port or "off",
            store.path,
        )
        collect_garbage_less_often()
        _event_loop_run(_run(servers))
    finally:
        if receiver is not None:
            receiver.stop()
        store.close()


def _event_loop_run(coroutine: Any) -> None:
    """Run the servers on uvloop when it is installed (uvicorn's `loop="auto"` choice for one
    server; with two, the loop is ours to pick): every span and log line of the platform
    arrives here over HTTP, and asyncio's own loop costs more CPU per request."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def _run(servers: list[uvicorn.Server]) -> None:
    main, *followers = servers
    tasks = [asyncio.create_task(s.serve(), name=f"http-{s.config.port}") for s in followers]
    try:
        await main.serve()
    finally:
        for follower in followers:
            follower.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
