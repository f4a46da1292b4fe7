"""Event bus throughput: publish -> consume -> ack of small events, traced and untraced.

One producer process and one consumer process per round, against a real Redis (the embedded
one, started here with its default `appendfsync always`). Traced rounds give every message its
own trace and export every span over OTLP/HTTP to a local sink process that discards them;
untraced rounds run the same code with tracing off. Rounds alternate so that both modes see
the same machine state. Run: `.venv/bin/python -m bench.bench_eventbus [--events N] [--rounds R]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 500
TRACED_RATIO_TARGET = 0.6


def _tick(n: int) -> Any:
    from backend.trading.events import MarketTick

    return MarketTick(
        symbol="BTC-USD",
        bid=Decimal("64000.10"),
        ask=Decimal("64000.20"),
        last=Decimal("64000.15"),
        volume=Decimal("0.25"),
        ts_ms=1_700_000_000_000 + n,
    )


def _settings() -> Any:
    from backend.infra.eventbus import EventBusSettings

    return EventBusSettings.from_env(batch_size=BATCH, max_len=1_000_000, block_ms=200)


def _span_counts() -> dict[str, float]:
    from prometheus_client import REGISTRY

    exported = REGISTRY.get_sample_value("otel_spans_exported_total") or 0.0
    dropped = sum(
        REGISTRY.get_sample_value("otel_spans_dropped_total", {"reason": r}) or 0.0
        for r in ("queue_full", "export_failed", "shutdown")
    )
    return {"exported": exported, "dropped": dropped}


# --- child processes ------------------------------------------------------------------------


async def _produce(count: int) -> dict[str, float]:
    from backend.infra.eventbus import EventPublisher, create_redis_client
    from backend.infra.service import freeze_startup_heap

    client = create_redis_client(os.environ["REDIS_URL"])
    publisher = EventPublisher(client, "bench", _settings())
    events = [_tick(n) for n in range(count)]
    await client.ping()
    freeze_startup_heap()  # as a served service does (backend/infra/service/_heap.py)
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    started = time.time()
    for start in range(0, count, BATCH):
        await publisher.publish_many(events[start : start + BATCH])
    finished = time.time()
    await client.aclose()
    return {"start": started, "published": finished}


async def _consume(count: int) -> dict[str, float]:
    from backend.infra.eventbus import EventConsumer, Idempotency, create_redis_client
    from backend.infra.service import freeze_startup_heap
    from backend.trading.events import MarketTick

    client = create_redis_client(os.environ["REDIS_URL"])
    settings = _settings()
    idempotency = Idempotency(client, "bench", settings)
    consumer = EventConsumer(client, "bench", settings, idempotency=idempotency)
    done = asyncio.Event()
    seen = 0

    async def handler(event: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    consumer.subscribe(MarketTick, handler)
    await consumer.ensure_groups()
    await consumer.start()
    freeze_startup_heap()  # as a served service does (backend/infra/service/_heap.py)
    print("ready", flush=True)
    await done.wait()
    await consumer.stop()  # returns once the last batch is acknowledged
    finished = time.time()
    await client.aclose()
    return {"acked": finished, "handled": float(seen)}


def _child(role: str, count: int) -> None:
    from backend.infra.observability import init_observability, shutdown_observability

    traced = bool(os.environ.get("OTLP_ENDPOINT"))
    init_observability(f"bench-{role}", "WARNING", enable_tracing=traced)
    runner = _produce if role == "produce" else _consume
    result = asyncio.run(runner(count))
    shutdown_observability(30_000)  # not timed: delivers the spans still queued
    result.update(_span_counts())
    print(json.dumps(result), flush=True)


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def _sink() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# --- orchestration ----------------------------------------------------------------------------


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_eventbus", *args],
        cwd=ROOT,
        env={
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _round(redis_url: str, sink_port: int, count: int, traced: bool) -> dict[str, float]:
    env = {
        "REDIS_URL": redis_url,
        "EVENTBUS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        "ENABLE_TRACING": "true" if traced else "false",
        "OTEL_BSP_MAX_QUEUE_SIZE": str(4 * count),
    }
    if traced:
        env["OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    consumer = _spawn(["consume", str(count)], env)
    producer = _spawn(["produce", str(count)], env)
    for proc in (consumer, producer):
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"bench child failed to start: {line!r}")
    assert producer.stdin is not None
    producer.stdin.write("go\n")
    producer.stdin.flush()
    p_out, _ = producer.communicate(timeout=600)
    c_out, _ = consumer.communicate(timeout=600)
    produced = json.loads(p_out.strip().splitlines()[-1])
    consumed = json.loads(c_out.strip().splitlines()[-1])
    seconds = consumed["acked"] - produced["start"]
    return {
        "msg_s": count / seconds,
        "publish_msg_s": count / (produced["published"] - produced["start"]),
        "spans": produced["exported"] + consumed["exported"],
        "dropped": produced["dropped"] + consumed["dropped"],
        "handled": consumed["handled"],
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print one row per round, then the medians and their ratio; 1 when
    the ratio target is missed or a traced round did not export every span."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode")
    args = parser.parse_args(argv)

    from backend.infra.eventbus import EmbeddedRedis

    sink = _spawn(["sink"], {})
    assert sink.stdout is not None
    sink_port = int(sink.stdout.readline())
    results: dict[bool, list[float]] = {True: [], False: []}
    traced_spans: list[tuple[float, float]] = []
    fsync = os.environ.get("BENCH_APPENDFSYNC", "always")
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp) / "redis", appendfsync=fsync) as server,  # type: ignore[arg-type]
    ):
        try:
            from redis.utils import HIREDIS_AVAILABLE

            print(
                f"event bus: {args.events} events per round, one producer and one consumer "
                f"process, Redis {server.url} (appendfsync {server.appendfsync}), reply "
                f"parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python (pip install hiredis)'}"
            )
            print(f"load average at the start: {_load()}")
            print(
                f"{'round':>5}  {'mode':<8} {'e2e msg/s':>10} {'publish msg/s':>14} "
                f"{'spans':>7} {'dropped':>7}"
            )
            for n in range(args.rounds):
                for traced in (True, False):
                    r = _round(server.url, sink_port, args.events, traced)
                    if r["handled"] != args.events:
                        raise RuntimeError(f"handled {r['handled']} of {args.events}")
                    results[traced].append(r["msg_s"])
                    if traced:
                        traced_spans.append((r["spans"], r["dropped"]))
                    print(
                        f"{n + 1:>5}  {'traced' if traced else 'untraced':<8} "
                        f"{r['msg_s']:>10,.0f} {r['publish_msg_s']:>14,.0f} "
                        f"{r['spans']:>7,.0f} {r['dropped']:>7,.0f}"
                    )
        finally:
            sink.kill()
    traced_rate = statistics.median(results[True])
    untraced_rate = statistics.median(results[False])
    print(f"median  traced   {traced_rate:>10,.0f} msg/s   (target >= 5,000)")
    print(f"median  untraced {untraced_rate:>10,.0f} msg/s   (target >= 15,000)")
    ratio = traced_rate / untraced_rate
    print(
        f"ratio   traced/untraced = {ratio:.2f}   (target >= {TRACED_RATIO_TARGET:.2f} "
        f"{'ok' if ratio >= TRACED_RATIO_TARGET else 'MISSED'})"
    )
    # Every message has a send and a process span; each batch read adds one receive span.
    complete = all(dropped == 0 and spans >= 2 * args.events for spans, dropped in traced_spans)
    print(
        f"spans   exported per traced round {[int(s) for s, _ in traced_spans]}, dropped "
        f"{[int(d) for _, d in traced_spans]} (at least {2 * args.events:,} = send + process "
        f"per event, plus one receive per batch read): {'all' if complete else 'NOT ALL'} "
        "exported"
    )
    print(f"load average at the end: {_load()}")
    return 0 if ratio >= TRACED_RATIO_TARGET and complete else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("produce", "consume"):
        _child(sys.argv[1], int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "sink":
        _sink()
    else:
        raise SystemExit(main())
