"""Run real service processes with distinctive secrets, then search every byte they emitted.

The secrets: this run's `QT_API_TOKEN` and `RISK_APPROVAL_SECRET`, a PostgreSQL password in
`DATABASE_URL`, a Redis password in `REDIS_URL` (a private `redis-server --requirepass`), and
what callers presented wrongly (a wrong token, a wrong Redis password). The traffic includes
failures: refused tokens, bad input, a process whose Redis refuses its password and whose
database is down, a process that cannot start because its `DATABASE_URL` is invalid. Searched:
each process's stdout and stderr, every OTLP export request as received (raw bytes), `/metrics`,
`/openapi.json`, `/health/ready` and every response body.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis
from sqlalchemy.engine import make_url

from backend.infra.eventbus._embedded import redis_server_executable
from tests.acceptance.harness import (
    API_TOKEN,
    APPROVAL_SECRET,
    SPECS,
    base_env,
    http,
    poll,
    services,
)
from tests.support.otlp import OtlpReceiver
from tests.support.postgres import scratch_databases
from tests.support.procs import Proc, free_port

REDIS_SECRET = f"redis-pw-{secrets.token_hex(12)}"
PG_SECRET = f"pg-pw-{secrets.token_hex(12)}"
WRONG_TOKEN = f"wrong-token-{secrets.token_hex(12)}"
WRONG_REDIS_SECRET = f"wrong-redis-pw-{secrets.token_hex(12)}"
SECRETS = {
    "QT_API_TOKEN": API_TOKEN,
    "RISK_APPROVAL_SECRET": APPROVAL_SECRET,
    "PostgreSQL password": PG_SECRET,
    "Redis password": REDIS_SECRET,
    "a wrong token presented": WRONG_TOKEN,
    "a wrong Redis password": WRONG_REDIS_SECRET,
}
TRIO = ["execution", "risk-safety", "portfolio-intelligence"]


class RawOtlpReceiver(OtlpReceiver):
    """Keeps each export request's bytes as they arrived, besides the decoded spans."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    def _add(self, payload: bytes) -> None:
        self.payloads.append(payload)
        super()._add(payload)


@contextmanager
def redis_with_password(tmp: Path) -> Iterator[int]:
    """A private `redis-server` that requires `REDIS_SECRET`; yields its port."""
    port = free_port()
    config = tmp / "redis.conf"
    # In a file rather than on the command line, so `ps` does not show it either.
    config.write_text(
        f'port {port}\nbind 127.0.0.1\nrequirepass {REDIS_SECRET}\nsave ""\n'
        f"appendonly no\ndir {tmp}\n"
    )
    process = subprocess.Popen(
        [redis_server_executable(), str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=REDIS_SECRET)
    try:
        poll(client.ping, 10, "the private redis-server to answer", interval_s=0.05)
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(10)


@contextmanager
def postgres_databases(count: int) -> Iterator[list[str]]:
    """Fresh PostgreSQL databases, as URLs carrying `PG_SECRET` (trust auth accepts any)."""
    with scratch_databases(count, "qt_secrets") as urls:
        yield [
            make_url(url).set(password=PG_SECRET).render_as_string(hide_password=False)
            for url in urls
        ]


def _process(name: str, tmp: Path, env: dict[str, str], label: str) -> tuple[Proc, str]:
    port = free_port()
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    proc = Proc(
        [SPECS[name].script],
        {**env, "PORT": str(port)},
        logs / f"{label}.log",
    )
    return proc, f"http://127.0.0.1:{port}"


def _found(value: str, artifacts: dict[str, bytes]) -> list[str]:
    """Where `value` occurs, with a little context, for the failure message."""
    needle = value.encode()
    hits = []
    for where, data in artifacts.items():
        at = data.find(needle)
        if at >= 0:
            context = data[max(0, at - 120) : at + len(needle) + 40].decode(errors="replace")
            hits.append(f"{where}: ...{context}...")
    return hits


def test_no_secret_appears_in_anything_the_services_emit(tmp_path: Path) -> None:
    artifacts: dict[str, bytes] = {}

    def keep(where: str, response: httpx.Response) -> httpx.Response:
        artifacts[f"{where} -> {response.status_code}"] = response.content
        return response

    with (
        RawOtlpReceiver() as otlp,
        redis_with_password(tmp_path) as redis_port,
        postgres_databases(2) as (execution_db, risk_db),
    ):
        redis_url = f"redis://:{REDIS_SECRET}@127.0.0.1:{redis_port}/0"
        env = base_env(redis_url, otlp.http_endpoint)
        per_service = {
            "execution": {"DATABASE_URL": execution_db},
            "risk-safety": {"DATABASE_URL": risk_db},
        }
        # A process that cannot start: its DATABASE_URL names a driver we do not support.
        broken, _ = _process(
            "portfolio-intelligence",
            tmp_path,
            env | {"DATABASE_URL": f"postgresql+psycopg://postgres:{PG_SECRET}@127.0.0.1:5432/x"},
            "portfolio-bad-url",
        )
        # A process whose Redis refuses its password and whose database is not there.
        closed_port = free_port()
        refused, refused_url = _process(
            "execution",
            tmp_path,
            env
            | {
                "REDIS_URL": f"redis://:{WRONG_REDIS_SECRET}@127.0.0.1:{redis_port}/0",
                "DATABASE_URL": (
                    f"postgresql+asyncpg://postgres:{PG_SECRET}@127.0.0.1:{closed_port}/none"
                ),
            },
            "execution-refused",
        )
        try:
            with services(TRIO, tmp_path / "trio", env, per_service=per_service) as running:
                urls = {name: url for name, (_proc, url) in running.items()}
                execution, risk = urls["execution"], urls["risk-safety"]
                for name, url in urls.items():
                    for path in ("/health/ready", "/metrics", "/openapi.json", "/docs"):
                        keep(f"GET {name}{path}", httpx.get(f"{url}{path}"))
                order = {
                    "client_order_id": "qt-secrets-1",
                    "symbol": "BTCUSDT",
                    "side": "BUY",
                    "quantity": "0.01",
                }
                keep("POST /check", http.post(f"{risk}/check", json=order))
                keep("POST /check bad", http.post(f"{risk}/check", json={"quantity": "1e999999"}))
                none = httpx.post(f"{execution}/orders", json=order)
                assert keep("POST /orders, no token", none).status_code == 401
                wrong = {"Authorization": f"Bearer {WRONG_TOKEN}"}
                assert (
                    keep(
                        "POST /orders, wrong token",
                        httpx.post(f"{execution}/orders", json=order, headers=wrong),
                    ).status_code
                    == 403
                )
                # The real token, in a header of the wrong form: refused, and never logged.
                malformed = {"Authorization": f"Token {API_TOKEN}"}
                assert (
                    keep(
                        "POST /kill-switch, malformed",
                        httpx.post(f"{risk}/kill-switch", json={"reason": "x"}, headers=malformed),
                    ).status_code
                    == 401
                )
                keep("POST /orders bad", http.post(f"{execution}/orders", json={"quantity": "-1"}))
                keep(
                    "POST /kill-switch",
                    http.post(f"{risk}/kill-switch", json={"operator": "ops", "reason": "drill"}),
                )
                keep(
                    "POST /resume",
                    http.post(f"{risk}/resume", json={"operator": "ops", "reason": "drill over"}),
                )
                keep("GET /orders/unknown", httpx.get(f"{execution}/orders/unknown"))
                keep("GET /state", httpx.get(f"{risk}/state"))

                health = poll(
                    lambda: (
                        (r := httpx.get(f"{refused_url}/health/ready")).status_code == 503
                        and {"redis", "database"} <= set(r.json().get("failing", []))
                        and r
                    ),
                    30,
                    "the refused process to report Redis and its database failing",
                )
                keep("GET refused /health/ready", health)
                keep("GET refused /metrics", httpx.get(f"{refused_url}/metrics"))
                poll(lambda: broken.popen.poll() is not None, 30, "the bad-URL process to exit")
                for name, url in urls.items():
                    keep(f"GET {name}/metrics after", httpx.get(f"{url}/metrics"))
                otlp.wait_for(
                    lambda spans: (
                        any(s.name == "POST /check" for s in spans)
                        and any(s.name == "POST /kill-switch" for s in spans)
                    )
                )
                procs = {name: proc for name, (proc, _url) in running.items()}
            # Stopped: each process has flushed its logs and its last spans.
        finally:
            refused.stop()
            broken.stop()
    for name, proc in procs.items():
        artifacts[f"{name} stdout+stderr"] = proc.output().encode()
    artifacts["refused stdout+stderr"] = refused.output().encode()
    artifacts["bad-url stdout+stderr"] = broken.output().encode()
    for n, payload in enumerate(otlp.payloads):
        artifacts[f"OTLP export #{n}"] = payload

    leaks = {name: _found(value, artifacts) for name, value in SECRETS.items()}
    assert {name: hits for name, hits in leaks.items() if hits} == {}

    # Not vacuous: the URLs were emitted, redacted; refusals were counted; spans arrived.
    everything = b"\n".join(artifacts.values()).decode(errors="replace")
    assert f"redis://:***@127.0.0.1:{redis_port}/0" in artifacts["execution stdout+stderr"].decode()
    refused_health = health.text
    assert f"redis://:***@127.0.0.1:{redis_port}/0" in refused_health
    assert "postgres:***@127.0.0.1" in refused_health
    assert "postgresql+psycopg://postgres:***@127.0.0.1:5432/x" in (
        artifacts["bad-url stdout+stderr"].decode()
    )
    assert 'http_auth_failures_total{reason="invalid"} 1.0' in everything
    assert 'http_auth_failures_total{reason="malformed"} 1.0' in everything
    assert len(otlp.payloads) > 0
