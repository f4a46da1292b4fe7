"""Soak: the whole system for a fixed time, sampled; a verdict on boundedness and the books.

    python -m bench.soak [--seconds 1800] [--feed-hz 20] [--orders-per-s 0] [--port-offset 0]

Starts a Redis of its own (embedded, under the var directory) and `quantum-trader run` with
that `REDIS_URL`, its own var directory and port offset, the feed at `--feed-hz` ticks per
second per symbol, and optionally an order load (`--orders-per-s`: risk-safety `/check`, then
execution `/orders` with the approval, like a client). Every `--interval` seconds it records,
per process (each service, the trace viewer, the launcher, Redis): resident memory and open file
descriptors (from `/proc`); the length of every stream (`XLEN {prefix}:events:*` and the
dead-letter streams); and the ERROR/CRITICAL lines of each service's JSON log.

At the end it stops the bot and the load, waits until the portfolio has booked what execution
filled, reconciles (cash and positions of the portfolio equal a recomputation from
execution's fills; every fill booked exactly once; every order the load had accepted persisted),
prints a table over time, then the verdict: the least-squares growth over the second half of
every RSS, descriptor count and stream length must stay below its threshold. Exit status 0 when
bounded and reconciled, 1 otherwise.

The thresholds are per minute; a short run (minutes) sees the services warm up, which a long
run (the default 30 minutes) averages out. `SOAK_SECONDS` overrides the default duration.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis

from backend.infra.eventbus import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
INITIAL_CASH = Decimal("100000")
READY_LINE = "Quantum Trader is running."
# Before the offset; the catalogue's ports (backend/infra/service/_catalogue.py).
EXECUTION_PORT = 8002
RISK_PORT = 8003
PORTFOLIO_PORT = 8004
BOT_PORT = 8006


@dataclass(frozen=True)
class Thresholds:
    """Largest growth per minute over the second half that still counts as bounded."""

    rss_mb: float = 2.0
    fds: float = 2.0
    stream_entries: float = 600.0


@dataclass
class Sample:
    at_s: float
    rss_mb: dict[str, float]
    fds: dict[str, int]
    streams: dict[str, int]
    errors: dict[str, int]
    ungrouped: list[str] = field(default_factory=list)
    """Streams without a consumer group: nobody acknowledges them, only MAXLEN bounds them."""


@dataclass
class Load:
    """An optional open-loop order load: risk `/check`, then execution `/orders`."""

    offset: int
    rate: float
    token: str
    prefix: str = "soak"
    accepted: set[str] = field(default_factory=set)
    denied: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        execution = f"http://127.0.0.1:{EXECUTION_PORT + self.offset}"
        risk = f"http://127.0.0.1:{RISK_PORT + self.offset}"
        n = 0
        started = time.monotonic()
        with httpx.Client(timeout=10.0, headers=headers) as http:
            while not self.stop.is_set():
                due = started + n / self.rate
                if due > time.monotonic() and self.stop.wait(due - time.monotonic()):
                    break
                n += 1
                try:
                    self._one(
                        http, execution, risk, f"{self.prefix}-{n}", "BUY" if n % 2 else "SELL"
                    )
                except httpx.HTTPError as exc:
                    self.failed[type(exc).__name__] += 1

    def _one(self, http: httpx.Client, execution: str, risk: str, cid: str, side: str) -> None:
        quotes = {q["symbol"]: q for q in http.get(execution + "/quotes").json()}
        if "BTCUSDT" not in quotes:
            self.failed["no quote"] += 1
            return
        order = {"client_order_id": cid, "symbol": "BTCUSDT", "side": side, "quantity": "0.001"}
        price = quotes["BTCUSDT"]["ask" if side == "BUY" else "bid"]
        check = http.post(risk + "/check", json={**order, "price": price})
        if check.status_code != 200:
            self.failed[f"check {check.status_code}"] += 1
            return
        verdict = check.json()
        if not verdict["approved"]:
            self.denied[verdict["reason"]] += 1
            return
        placed = http.post(execution + "/orders", json={**order, "approval": verdict["approval"]})
        if placed.status_code in (200, 201):
            self.accepted.add(cid)
        else:
            self.failed[f"orders {placed.status_code}"] += 1


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.var_dir: Path = args.var_dir
        self.offset: int = args.port_offset
        self.token = "soak-token-" + os.urandom(8).hex()
        self.launcher: subprocess.Popen[bytes] | None = None
        self.redis = EmbeddedRedis(self.var_dir / "redis")
        self.redis_url = ""
        self.samples: list[Sample] = []
        self._log_offsets: dict[Path, int] = {}
        self._errors: Counter[str] = Counter()
        self.load: Load | None = None

    # Start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.redis_url = self.redis.start()
        env = dict(os.environ)
        env.update(
            RUN_VAR_DIR=str(self.var_dir),
            RUN_PORT_OFFSET=str(self.offset),
            REDIS_URL=self.redis_url,
            FEED_RATE_HZ=str(self.args.feed_hz),
            QT_API_TOKEN=self.token,
            RISK_APPROVAL_SECRET="soak-approval-secret-" + os.urandom(8).hex(),
            RISK_MAX_ORDERS=str(10**9),
            EVENTBUS_TRIM_INTERVAL_S=str(self.args.trim_interval),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        out = open(self.var_dir / "launcher.out", "wb")  # noqa: SIM115 - the child owns it
        self.launcher = subprocess.Popen(
            [sys.executable, "-m", "quantum_trader", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + self.args.ready_timeout
        while READY_LINE not in self._launcher_output():
            if self.launcher.poll() is not None:
                raise SystemExit(f"the launcher exited:\n{self._launcher_output()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"not ready in {self.args.ready_timeout}s:\n{self._launcher_output()[-3000:]}"
                )
            time.sleep(0.5)
        if self.args.orders_per_s > 0:
            self.load = Load(self.offset, self.args.orders_per_s, self.token)
            threading.Thread(target=self.load.run, name="soak-load", daemon=True).start()

    def _launcher_output(self) -> str:
        try:
            return (self.var_dir / "launcher.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop.set()
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.launcher.pid, signal.SIGKILL)
                self.launcher.wait()
        self.redis.stop()

    # Sampling ------------------------------------------------------------------------------

    def processes(self) -> dict[str, int]:
        """The pid of every process of the run: launcher, services, viewer, Redis."""
        pids: dict[str, int] = {}
        if self.launcher is None:
            return pids
        pids["launcher"] = self.launcher.pid
        if self.redis.pid is not None:
            pids["redis"] = self.redis.pid
        for child in _children(self.launcher.pid):
            args = _cmdline(child)
            if "serve" in args and args.index("serve") + 1 < len(args):
                pids[args[args.index("serve") + 1]] = child
            elif "traceview" in args:
                pids["traceview"] = child
            elif any(a.endswith("redis-server") for a in args):
                pids["redis"] = child
        return pids

    def sample(self, at_s: float, client: redis.Redis) -> Sample:
        rss: dict[str, float] = {}
        fds: dict[str, int] = {}
        for name, pid in self.processes().items():
            try:
                rss[name] = _rss_mb(pid)
                fds[name] = len(os.listdir(f"/proc/{pid}/fd"))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        streams: dict[str, int] = {}
        ungrouped: list[str] = []
        for pattern in ("qt:events:*", "qt:deadletter:*"):
            # The keyspace also holds a processed mark per event and group: few, big SCAN steps.
            for key in client.scan_iter(pattern, count=10_000, _type="STREAM"):
                name = key.decode().split(":", 1)[1]
                streams[name] = int(client.xlen(key))
                if name.startswith("events:") and not client.xinfo_groups(key):
                    ungrouped.append(name)
        streams["(keys in redis)"] = int(client.dbsize())
        self._read_errors()
        sample = Sample(
            at_s, rss, fds, dict(sorted(streams.items())), dict(self._errors), sorted(ungrouped)
        )
        self.samples.append(sample)
        return sample

    def _read_errors(self) -> None:
        for path in sorted((self.var_dir / "log").glob("*.log")):
            offset = self._log_offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a partial last line is read next time
            self._log_offsets[path] = offset + end
            for line in chunk[:end].splitlines():
                if _is_error(line):
                    self._errors[path.stem] += 1

    # The end -------------------------------------------------------------------------------

    def quiesce(self, timeout_s: float = 60.0) -> None:
        """Stop the bot and the load, then wait until the portfolio booked every fill."""
        if self.load is not None:
            self.load.stop.set()
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            httpx.post(f"http://127.0.0.1:{BOT_PORT + self.offset}/stop", headers=headers)
        except httpx.HTTPError as exc:
            print(f"  (the bot was not stopped: {exc})")
        deadline = time.monotonic() + timeout_s
        last = (-1, -2)
        while time.monotonic() < deadline:
            now = (
                _count(self.var_dir, "execution", "fills"),
                _count(self.var_dir, "portfolio-intelligence", "ledger_fills"),
            )
            if now[0] == now[1] and now == last:
                return
            last = now
            time.sleep(2.0)

    def reconcile(self) -> dict[str, Any]:
        execution = _connect(self.var_dir, "execution")
        fills = execution.execute(
            "select fill_id, client_order_id, symbol, side, quantity, price, fee from fills"
        ).fetchall()
        order_ids = {r[0] for r in execution.execute("select client_order_id from orders")}
        ledger_db = _connect(self.var_dir, "portfolio-intelligence")
        ledger = ledger_db.execute(
            "select fill_id, client_order_id, symbol, side, quantity, price, fee from ledger_fills"
        ).fetchall()
        cash = INITIAL_CASH
        positions: defaultdict[str, Decimal] = defaultdict(Decimal)
        for _fid, _cid, symbol, side, qty, price, fee in fills:
            q, p, f = Decimal(str(qty)), Decimal(str(price)), Decimal(str(fee))
            cash += -(q * p + f) if side == "BUY" else q * p - f
            positions[symbol] += q if side == "BUY" else -q
        headers = {"Authorization": f"Bearer {self.token}"}
        book = httpx.get(
            f"http://127.0.0.1:{PORTFOLIO_PORT + self.offset}/portfolio", headers=headers
        ).json()
        booked = {p["symbol"]: Decimal(p["quantity"]) for p in book["positions"]}
        symbols = set(booked) | set(positions)
        by_id = Counter(r[0] for r in ledger)
        exec_rows = {r[0]: tuple(str(x) for x in r) for r in fills}
        accepted = self.load.accepted if self.load is not None else set()
        result = {
            "orders": len(order_ids),
            "fills": len(fills),
            "ledger_rows": len(ledger),
            "missing_in_ledger": len(set(exec_rows) - set(by_id)),
            "extra_in_ledger": len(set(by_id) - set(exec_rows)),
            "booked_twice": sum(n - 1 for n in by_id.values() if n > 1),
            "content_mismatch": sum(
                1
                for r in ledger
                if r[0] in exec_rows and exec_rows[r[0]] != tuple(str(x) for x in r)
            ),
            "load_accepted": len(accepted),
            "load_accepted_not_persisted": len(accepted - order_ids),
            "cash_recomputed": str(cash),
            "cash_portfolio": book["cash"],
            "cash_equal": abs(Decimal(book["cash"]) - cash) < Decimal("1e-8"),
            "positions_equal": all(
                abs(booked.get(s, Decimal(0)) - positions.get(s, Decimal(0))) < Decimal("1e-12")
                for s in symbols
            ),
        }
        if self.load is not None:
            result["load_denied"] = dict(self.load.denied)
            result["load_failed"] = dict(self.load.failed)
        result["ok"] = bool(
            result["fills"] == result["ledger_rows"]
            and not result["missing_in_ledger"]
            and not result["extra_in_ledger"]
            and not result["booked_twice"]
            and not result["content_mismatch"]
            and not result["load_accepted_not_persisted"]
            and result["cash_equal"]
            and result["positions_equal"]
        )
        return result


# Verdict -------------------------------------------------------------------------------------


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 for fewer than 3 points."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return 60.0 * sum((x - mx) * (y - my) for x, y in points) / var


def verdict(samples: list[Sample], limits: Thresholds) -> list[str]:
    """The measures that grew faster than their threshold over the second half (none: bounded)."""
    if len(samples) < 6:
        return [f"only {len(samples)} samples: run longer or sample more often"]
    half = samples[len(samples) // 2 :]
    problems = []
    series: list[tuple[str, str, float, dict[str, float]]] = [
        ("rss", "MB", limits.rss_mb, {}),
        ("fds", "fds", limits.fds, {}),
        ("stream", "entries", limits.stream_entries, {}),
    ]
    ungrouped = set().union(*(s.ungrouped for s in half))
    for kind, unit, limit, _ in series:
        names = set().union(*(_values(s, kind) for s in half))
        for name in sorted(names):
            if kind == "stream" and (name in ungrouped or name.startswith("(")):
                # No group acknowledges it: MAXLEN alone bounds it. The key count (mostly the
                # idempotency marks, which expire after EVENTBUS_DEDUP_TTL_S) is shown, and
                # what it costs is in Redis's RSS.
                continue
            points = [
                (s.at_s, float(_values(s, kind)[name])) for s in half if name in _values(s, kind)
            ]
            rate = slope_per_min(points)
            if rate > limit:
                problems.append(f"{kind} {name}: +{rate:.1f} {unit}/min (limit {limit:g})")
    return problems


def _values(sample: Sample, kind: str) -> dict[str, Any]:
    values: dict[str, dict[str, Any]] = {
        "rss": sample.rss_mb,
        "fds": sample.fds,
        "stream": sample.streams,
    }
    return values[kind]


def table(samples: list[Sample]) -> Iterator[str]:
    """Lines of the table over time: RSS (MB) and fds per process, stream lengths, errors."""
    if not samples:
        return
    procs = sorted(set().union(*(s.rss_mb for s in samples)))
    streams = sorted(set().union(*(s.streams for s in samples)))
    short = {p: p.split("-")[0][:9] for p in procs}
    yield "RSS MB / open fds per process"
    yield "   t(s) " + " ".join(f"{short[p]:>13}" for p in procs)
    for s in samples:
        cells = (f"{s.rss_mb.get(p, 0):7.1f}/{s.fds.get(p, 0):<5d}" for p in procs)
        yield f"{s.at_s:7.0f} " + " ".join(f"{c:>13}" for c in cells)
    yield ""
    yield "stream lengths (XLEN)"
    yield "   t(s) " + " ".join(f"{n[-14:]:>14}" for n in streams)
    for s in samples:
        yield f"{s.at_s:7.0f} " + " ".join(f"{s.streams.get(n, 0):>14d}" for n in streams)
    yield ""
    last = samples[-1].errors
    if samples[-1].ungrouped:
        yield (
            "without a consumer group (bounded by EVENTBUS_MAX_LEN only, not trimmed): "
            + ", ".join(samples[-1].ungrouped)
        )
    yield "ERROR lines per service: " + (
        ", ".join(f"{k} {v}" for k, v in sorted(last.items())) if last else "none"
    )


# Helpers -------------------------------------------------------------------------------------


def _is_error(line: bytes) -> bool:
    """An ERROR/CRITICAL JSON line, or a traceback printed outside the JSON logging."""
    if line.startswith(b"{"):
        return b'"level":"ERROR"' in line or b'"level":"CRITICAL"' in line
    return line.startswith(b"Traceback")


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (its children read from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found += kids
            todo += kids
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def _connect(var_dir: Path, service: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{var_dir / service}.db?mode=ro", uri=True, timeout=10)


def _count(var_dir: Path, service: str, table_name: str) -> int:
    with _connect(var_dir, service) as db:
        return int(db.execute(f"select count(*) from {table_name}").fetchone()[0])


# Command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", "1800")),
        help="how long the system runs (default: SOAK_SECONDS or 1800)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between samples (default: seconds/30, at least 2)",
    )
    parser.add_argument("--feed-hz", type=float, default=20.0, help="ticks/s per symbol")
    parser.add_argument("--orders-per-s", type=float, default=0.0, help="order load; 0: none")
    parser.add_argument(
        "--trim-interval", type=float, default=1.0, help="EVENTBUS_TRIM_INTERVAL_S of the services"
    )
    parser.add_argument(
        "--port-offset", type=int, default=int(os.environ.get("RUN_PORT_OFFSET", "0"))
    )
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=None,
        help="state of the run (default: a temporary directory, removed)",
    )
    parser.add_argument("--ready-timeout", type=float, default=180.0)
    parser.add_argument("--max-rss-mb-per-min", type=float, default=Thresholds.rss_mb)
    parser.add_argument("--max-fds-per-min", type=float, default=Thresholds.fds)
    parser.add_argument("--max-stream-per-min", type=float, default=Thresholds.stream_entries)
    parser.add_argument("--json", type=Path, default=None, help="write samples and result here")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds / SOAK_SECONDS must be positive, not {args.seconds:g}")
    if args.feed_hz <= 0 or args.feed_hz > 1000:
        parser.error(f"--feed-hz must be in (0, 1000], not {args.feed_hz:g}")
    if args.orders_per_s < 0:
        parser.error("--orders-per-s must not be negative")
    if args.interval <= 0:
        args.interval = max(2.0, args.seconds / 30)
    return args


def run(args: argparse.Namespace) -> int:
    """The soak; returns the exit status (0: bounded and reconciled)."""
    temporary = None
    if args.var_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="qt-soak-")
        args.var_dir = Path(temporary.name)
    args.var_dir = args.var_dir.resolve()
    soak = Soak(args)
    # SIGTERM unwinds like Ctrl-C, so the launcher and Redis are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    limits = Thresholds(args.max_rss_mb_per_min, args.max_fds_per_min, args.max_stream_per_min)
    print(
        f"soak: {args.seconds:g}s, feed {args.feed_hz:g} Hz/symbol, "
        f"orders {args.orders_per_s:g}/s, offset {args.port_offset}, var {args.var_dir}",
        flush=True,
    )
    try:
        soak.start()
        client = redis.Redis.from_url(soak.redis_url, socket_timeout=10)
        started = time.monotonic()
        while True:
            at = time.monotonic() - started
            s = soak.sample(at, client)
            print(
                f"  t={at:6.0f}s  rss "
                + " ".join(f"{k}={v:.0f}" for k, v in sorted(s.rss_mb.items()))
                + f"  ticks={s.streams.get('events:market.tick', 0)}",
                flush=True,
            )
            if at >= args.seconds:
                break
            time.sleep(min(args.interval, max(0.0, args.seconds - at)))
        soak.quiesce()
        books = soak.reconcile()
        client.close()
    finally:
        soak.stop()
    print()
    for line in table(soak.samples):
        print(line)
    problems = verdict(soak.samples, limits)
    print()
    print("reconciliation: " + json.dumps(books))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "samples": [s.__dict__ for s in soak.samples],
                    "reconciliation": books,
                    "unbounded": problems,
                },
                indent=1,
            )
        )
    if temporary is not None:
        temporary.cleanup()
    ok = not problems and books["ok"]
    print("verdict: " + ("BOUNDED and RECONCILED" if ok else "FAILED"))
    for p in problems:
        print(f"  unbounded: {p}")
    if not books["ok"]:
        print("  the books do not reconcile (see above)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
