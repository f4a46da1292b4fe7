"""Process helpers for the benchmarks: CPU pinning, spawning and waiting for a server.

Free ports and polling with a deadline are the test suite's (`tests.support`).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence

from tests.support.polling import wait_until
from tests.support.procs import free_port, http_ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpus() -> tuple[set[int], set[int]]:
    """(server cores, load cores): the server on one core, everything else on the others."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[0]}, set(available[1:])


def spawn(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    cores: set[int] | None = None,
    stdout: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, *args],
        env=full_env,
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )
    if cores:
        os.sched_setaffinity(proc.pid, cores)
    return proc


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, other threads) CPU seconds of a process so far, from /proc.

    CPU per request is steadier than req/s on a shared machine: other workloads' load takes
    the core away from the server, but not the work it does per request. The other threads
    are the span exporter and the log sink's writer."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == pid:
            main += used
        else:
            other += used
    return main, other


def run_loadgen(
    port: int,
    seconds: float,
    connections: int,
    cores: set[int],
    warmup_s: float | None = None,
) -> dict[str, float]:
    """`bench.loadgen` against the server on `port`, in its own process on `cores`: what it
    printed (requests, sent, rps, p50_ms, p99_ms, errors)."""
    args = ["-m", "bench.loadgen", "--port", str(port), "--seconds", str(seconds)]
    args += ["--connections", str(connections)]
    if warmup_s is not None:
        args += ["--warmup", str(warmup_s)]
    load = spawn(args, cores=cores, stdout=subprocess.PIPE)
    out, _ = load.communicate(timeout=seconds + 60)
    result: dict[str, float] = json.loads(out)
    return result


def wait_http(port: int, path: str = "/ping", timeout_s: float = 20.0) -> None:
    wait_until(lambda: http_ok(port, path), timeout_s, f"the server on port {port}", 0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# How fast the machine runs right now ----------------------------------------------------------

PROBE_STEPS = 10_000_000
PROBE_ROWS = 200_000
PROBE_HTTP_SECONDS = 2.0


def loop_seconds(steps: int | None = None) -> float:
    """Wall time of a fixed pure-Python loop of `steps` additions (CPU alone, no memory)."""
    started = time.perf_counter()
    total = 0
    for i in range(PROBE_STEPS if steps is None else steps):
        total += i
    return time.perf_counter() - started


def rows_seconds(n: int | None = None) -> float:
    """Wall time of work shaped like a service's: `n` small dicts built, JSON-encoded and
    decoded, shuffled, sorted and indexed, a working set of tens of megabytes.

    The tight loop leaves out the memory: on 2026-12-05 the loop ran 1.3-1.8 times slower than
    on a quiet day while a bare HTTP server's CPU per request was twice its quiet figure."""
    count = PROBE_ROWS if n is None else n
    started = time.perf_counter()
    rows = [
        {"id": i, "symbol": "BTCUSDT", "price": f"{i * 0.01:.2f}", "side": ("BUY", "SELL")[i & 1]}
        for i in range(count)
    ]
    back = json.loads(json.dumps(rows))
    random.Random(1).shuffle(back)
    back.sort(key=lambda row: row["price"])
    index = {row["id"]: row for row in back}
    sum(index[i]["id"] for i in range(0, count, 3))
    return time.perf_counter() - started


def http_probe_us(seconds: float | None = None, connections: int = 8) -> float:
    """CPU microseconds per request of a bare FastAPI app under uvicorn (`bench.http_app
    bare`), loaded for `seconds` by `bench.loadgen` from another core: the services' kind of
    work, which the two probes above do not follow closely (see `rows_seconds`)."""
    server_cores, load_cores = cpus()
    port = free_port()
    server = spawn(["-m", "bench.http_app", "bare", str(port)], cores=server_cores)
    try:
        wait_http(port)
        before = sum(thread_cpu_seconds(server.pid))
        result = run_loadgen(
            port,
            PROBE_HTTP_SECONDS if seconds is None else seconds,
            connections,
            load_cores,
            warmup_s=0.5,
        )
        used = sum(thread_cpu_seconds(server.pid)) - before
    finally:
        stop(server)
    sent = result["sent"]
    return 1e6 * used / sent if sent else float("nan")


def cpu_ticks() -> tuple[int, int]:
    """(ticks the machine's CPUs were busy, ticks stolen by the host) since boot, from
    /proc/stat; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = sum(fields[3:5])  # idle, iowait
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields) - idle, steal


def machine_line(when: str, since: tuple[int, int] | None = None) -> str:
    """One line on how fast the machine is `when`, for reading a benchmark's figures.

    The benchmarks' machines are shared: the same code runs two or three times slower at one
    hour than at another, with the load average unchanged (the host, not this machine, is
    busy). Three probes, a tight loop, service-shaped work (`rows_seconds`) and a bare HTTP
    server's CPU per request (`http_probe_us`, the one that follows the services), the load average
    and, `since` an earlier `cpu_ticks()`, the share of busy time the host took back (steal).
    docs/RELIABILITY.md gives the probes' figures at quiet and busy moments."""
    line = (
        f"machine {when}: a {PROBE_STEPS:,}-step Python loop took {loop_seconds():.2f} s, "
        f"{PROBE_ROWS:,} JSON rows {rows_seconds():.2f} s, "
        f"a bare FastAPI server {http_probe_us():.0f} us of CPU per request, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if since is not None:
        busy, steal = cpu_ticks()
        busy, steal = busy - since[0], steal - since[1]
        if busy > 0:
            line += f", {100 * steal / busy:.1f} % of the busy time stolen by the host"
    return line
