"""HTTP observability overhead: the same trivial endpoint under five set-ups, in rounds.

Each round runs every configuration once (order rotated per round) under uvicorn with one
worker pinned to one core, loaded by `bench.loadgen` from another process on another core.
Reports median req/s, p50/p99 latency and each configuration's ratio to `bare` (the median of
per-round ratios, so slow drifts of the shared machine cancel out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from tests.support.procs import free_port

from ._proc import cpus, spawn, stop, wait_http

CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "bare": ("bare", {}),
    "ours 100%": ("ours", {"TRACE_SAMPLE_RATE": "1.0"}),
    "ours 10%": ("ours", {"TRACE_SAMPLE_RATE": "0.1"}),
    "fastapi built-in": ("fastapi_native", {}),
    "usual stack": ("usual_stack", {}),
}
TARGETS = {"ours 100%": 0.60, "ours 10%": 0.80}


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
            load = spawn(
                [
                    "-m",
                    "bench.loadgen",
                    "--port",
                    str(port),
                    "--seconds",
                    str(seconds),
                    "--connections",
                    str(connections),
                ],
                cores=load_cores,
                stdout=subprocess.PIPE,
            )
            out, _ = load.communicate(timeout=seconds + 60)
            result: dict[str, float] = json.loads(out)
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
    args = parser.parse_args(argv)

    _, load_cores = cpus()
    sink_port = free_port()
    sink = spawn(["-m", "bench.otlp_sink", "--port", str(sink_port)], cores=load_cores)
    wait_http(sink_port, "/stats")
    names = list(CONFIGS)
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
        f"{'spans/req':>9} {'logs/req':>8}  target"
    )
    ok = True
    for name in names:
        rps = statistics.median(x["rps"] for x in runs[name])
        p50 = statistics.median(x["p50_ms"] for x in runs[name])
        p99 = statistics.median(x["p99_ms"] for x in runs[name])
        ratio = statistics.median(ratios[name])
        target = TARGETS.get(name)
        mark = ""
        if target is not None:
            passed = ratio >= target
            ok = ok and passed
            mark = f">= {target:.2f} {'ok' if passed else 'MISSED'}"
        sent = sum(x["sent"] for x in runs[name])
        spans = sum(x["spans"] for x in runs[name]) / sent
        logs = sum(x["log_lines"] for x in runs[name]) / sent
        print(
            f"{name:<18} {rps:8.0f} {p50:8.2f} {p99:8.2f} {ratio:7.2f} {spans:9.3f} "
            f"{logs:8.3f}  {mark}"
        )
    print("spans/req: spans the OTLP receiver got per request sent (1.0 = every request traced)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
