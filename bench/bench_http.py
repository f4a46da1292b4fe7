"""HTTP observability overhead: the same trivial endpoint under five set-ups, in rounds.

Each round runs every configuration once (order rotated per round) under uvicorn with one
worker pinned to one core, loaded by `bench.loadgen` from another process on another core.
Reports median req/s, p50/p99 latency and each configuration's ratio to `bare` (the median of
per-round ratios, so slow drifts of the shared machine cancel out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

from tests.support.procs import free_port

from ._proc import cpus, run_loadgen, spawn, stop, thread_cpu_seconds, wait_http

CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "bare": ("bare", {}),
    "ours 100%": ("ours", {"TRACE_SAMPLE_RATE": "1.0"}),
    "ours 10%": ("ours", {"TRACE_SAMPLE_RATE": "0.1"}),
    "fastapi built-in": ("fastapi_native", {}),
    "usual stack": ("usual_stack", {}),
}
# Throughput ratio to bare (issue 12's targets) and p99 at most this many times bare's p99.
TARGETS = {"ours 100%": 0.80, "ours 10%": 0.90}
P99_TARGET = 1.5


def run_one(name: str, sink_port: int, seconds: float, connections: int) -> dict[str, float]:
    config, extra_env = CONFIGS[name]
    server_cores, load_cores = cpus()
    port = free_port()
    env = {
        "OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "SERVICE_NAME": "bench",
        **extra_env,
    }
    urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/reset").read()
    with tempfile.TemporaryFile() as log:
        server = spawn(
            ["-m", "bench.http_app", config, str(port)], env, server_cores, stdout=log.fileno()
        )
        try:
            wait_http(port)
            cpu_before = thread_cpu_seconds(server.pid)
            result = run_loadgen(port, seconds, connections, load_cores)
            cpu_after = thread_cpu_seconds(server.pid)
            result["cpu_main_s"] = cpu_after[0] - cpu_before[0]
            result["cpu_other_s"] = cpu_after[1] - cpu_before[1]
        finally:
            stop(server)  # SIGTERM: the server flushes its queued spans on shutdown
        log.seek(0)
        result["log_lines"] = sum(1 for line in log if b'"logger":"access"' in line)
    time.sleep(0.2)
    stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/stats").read())
    result["spans"] = stats["spans"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated configurations to run (bare is always run: it is the baseline)",
    )
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown --configs {unknown}: choose from {list(CONFIGS)}")

    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    _, load_cores = cpus()
    sink_port = free_port()
    sink = spawn(["-m", "bench.otlp_sink", "--port", str(sink_port)], cores=load_cores)
    wait_http(sink_port, "/stats")
    names = [n for n in CONFIGS if n == "bare" or n in wanted]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            round_results = {}
            for name in order:
                res = run_one(name, sink_port, args.seconds, args.connections)
                round_results[name] = res
                runs[name].append(res)
                print(f"  round {r + 1} {name:<17} {res['rps']:8.0f} req/s", file=sys.stderr)
            for name in names:
                ratios[name].append(round_results[name]["rps"] / round_results["bare"]["rps"])
    finally:
        stop(sink)

    print()
    print(
        f"HTTP: {args.rounds} rounds x {args.seconds:g} s, {args.connections} connections, "
        "uvicorn 1 worker on its own core"
    )
    print(
        f"{'configuration':<18} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} "
        f"{'p99 x':>6} {'cpu us':>7} {'thr us':>6} {'spans':>8} {'logs':>8} {'spans/req':>9} "
        f"{'logs/req':>8}  target"
    )
    ok = True
    bare_p99 = statistics.median(x["p99_ms"] for x in runs["bare"])
    for name in names:
        rps = statistics.median(x["rps"] for x in runs[name])
        p50 = statistics.median(x["p50_ms"] for x in runs[name])
        p99 = statistics.median(x["p99_ms"] for x in runs[name])
        ratio = statistics.median(ratios[name])
        p99_ratio = p99 / bare_p99
        target = TARGETS.get(name)
        mark = ""
        if target is not None:
            passed = ratio >= target
            tail_ok = p99_ratio <= P99_TARGET
            ok = ok and passed and tail_ok
            mark = (
                f"ratio >= {target:.2f} {'ok' if passed else 'MISSED'}, "
                f"p99 <= {P99_TARGET:g}x {'ok' if tail_ok else 'MISSED'}"
            )
        sent = sum(x["sent"] for x in runs[name])
        cpu_us = 1e6 * sum(x["cpu_main_s"] + x["cpu_other_s"] for x in runs[name]) / sent
        thread_us = 1e6 * sum(x["cpu_other_s"] for x in runs[name]) / sent
        spans_out = sum(x["spans"] for x in runs[name])
        logs_out = sum(x["log_lines"] for x in runs[name])
        print(
            f"{name:<18} {rps:8.0f} {p50:8.2f} {p99:8.2f} {ratio:7.2f} {p99_ratio:6.2f} "
            f"{cpu_us:7.0f} {thread_us:6.0f} {spans_out:8.0f} {logs_out:8.0f} "
            f"{spans_out / sent:9.3f} {logs_out / sent:8.3f}"
            f"  {mark}"
        )
    print(
        "cpu us: the server's CPU time per request sent (all threads); thr us: of which in "
        "threads other than the event loop's (span export, log writing)"
    )
    print(
        "p99 x: p99 over bare's p99; spans, logs: spans the OTLP receiver got and access lines "
        "the server wrote, over all rounds (per request sent: spans/req, logs/req)"
    )
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
