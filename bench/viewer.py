"""The trace viewer's pages over a filled SQLite span store: how long each page takes, beside
the store's own look-up it starts from (the baseline of the same run).

Trades (each a 19-span trace across six services, a third of them filled later in a linked
trace) are written to a fresh store; then every page is fetched through the app in process
(Starlette's test client: the whole HTTP handling without a socket).

    python -m bench.viewer                      # 20,000 trades, about 450,000 spans
    python -m bench.viewer --trades 2000        # a quick run
    python -m bench.viewer --trades 45000       # about 1,000,000 spans
    BENCH_VIEWER_TRADES=2000 quantum-trader bench viewer
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from backend.infra.traceview import create_app
from backend.infra.traceview._sqlstore import SqliteSpanStore
from backend.infra.traceview._store import StoredSpan
from tests.traceview import seed

MS = 1_000_000


def renumbered(spans: list[StoredSpan], rng: random.Random) -> list[StoredSpan]:
    """The spans with fresh random span ids (parents and links in the same list follow)."""
    ids = {s.span_id: f"{rng.getrandbits(64):016x}" for s in spans}
    return [
        replace(
            s,
            span_id=ids[s.span_id],
            parent_span_id=ids.get(s.parent_span_id, s.parent_span_id),
            links=[(t, ids.get(sp, sp)) for t, sp in s.links],
        )
        for s in spans
    ]


def traffic(trades: int, now_ns: int, rng: random.Random) -> tuple[list[StoredSpan], list[str]]:
    """`trades` trades over the last ten minutes; returns the spans and the client order ids."""
    spans: list[StoredSpan] = []
    orders = []
    step_ns = 600_000 * MS // max(trades, 1)
    for i in range(trades):
        t0 = now_ns - 600_000 * MS + i * step_ns
        trace_id = f"{rng.getrandbits(128):032x}"
        coid = f"qt-bench-{i:08d}"
        sql_ms = rng.lognormvariate(0.5, 0.8)
        trade = seed.trade(trace_id, t0, coid, sql_ms, None, rng.randrange(1, 2000))
        trade = renumbered(trade, rng)
        spans += trade
        orders.append(coid)
        if i % 3 == 0:
            submit = next(s for s in trade if s.name == "order.submit")
            fill_id = f"{rng.getrandbits(128):032x}"
            fill = [
                replace(
                    s, trace_id=fill_id, start_ns=s.start_ns + 80 * MS, end_ns=s.end_ns + 80 * MS
                )
                for s in seed.fill_trace(t0)
            ]
            fill = [
                replace(
                    s,
                    attributes={**s.attributes, "client_order_id": coid}
                    if "client_order_id" in s.attributes
                    else s.attributes,
                    links=[(trace_id, submit.span_id)] if s.links else [],
                )
                for s in fill
            ]
            spans += renumbered(fill, rng)
    return spans, orders


def timed(call: Callable[[], Any], runs: int) -> tuple[float, float]:
    """p50 and p99 in ms of `runs` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The trace viewer's pages, timed.")
    parser.add_argument(
        "--trades", type=int, default=int(os.environ.get("BENCH_VIEWER_TRADES", "20000"))
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.trades < 10:
        parser.error("--trades must be at least 10")
    rng = random.Random(args.seed)
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores shared; figures are noisy)")
    now = time.time_ns()
    spans, orders = traffic(args.trades, now, rng)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteSpanStore(
            Path(tmp) / "spans.db", hold_s=0.1, max_age_s=3600, rollup_processes=1
        )
        try:
            for i in range(0, len(spans), 4096):
                while store.ingest(spans[i : i + 4096]):
                    time.sleep(0.05)  # the queue is full: let the writer catch up
            store.flush(timeout=600)
            traces = sorted({s.trace_id for s in spans if s.name == "decide"})
            print(f"{len(spans)} spans in {len(set(s.trace_id for s in spans))} traces stored")
            client = TestClient(create_app(store, ingest_routes=[]))

            def pick(items: list[str]) -> str:
                return items[rng.randrange(len(items))]

            rows = [
                ("store: trace by id (baseline)", lambda: store.trace(pick(traces)), 300),
                ("GET /trace/{id}", lambda: client.get(f"/trace/{pick(traces)}"), 100),
                ("store: order's traces (baseline)", lambda: store.order_traces(pick(orders)), 300),
                ("GET /order/{coid}", lambda: client.get(f"/order/{pick(orders)}"), 100),
                (
                    "GET /compare",
                    lambda: client.get(f"/compare?a={pick(traces)}&b={pick(traces)}"),
                    100,
                ),
                (
                    "GET /?service=risk-safety&min_ms=20",
                    lambda: client.get("/?service=risk-safety&min_ms=20"),
                    50,
                ),
                (
                    "store: per-stage quantiles, 15m (baseline)",
                    lambda: store.stage_quantiles(now - 900 * 10**9, now),
                    5,
                ),
                ("GET /stages?window=1m", lambda: client.get("/stages?window=1m"), 5),
                ("GET /stages?window=15m", lambda: client.get("/stages?window=15m"), 3),
                (
                    "store: spans of the window (baseline)",
                    lambda: store.spans_between(now - 900 * 10**9, now, 50_000),
                    3,
                ),
                ("GET /decisions?window=15m", lambda: client.get("/decisions?window=15m"), 3),
                ("GET /map?window=15m", lambda: client.get("/map?window=15m"), 3),
            ]
            baseline = 0.0
            for name, call, runs in rows:
                p50, p99 = timed(call, runs)
                ratio = ""
                if name.startswith("store:"):
                    baseline = p50
                elif baseline:
                    ratio = f"  {p50 / baseline:.0f}x the baseline above"
                    baseline = 0.0
                print(f"{name:40s} p50 {p50:9.2f} ms  p99 {p99:9.2f} ms  ({runs} runs){ratio}")
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
