"""Kubernetes health probes (`/health/live`, `/health/ready`, `/health`) with readiness checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from ._redact import redact_text

READY = Gauge(
    "service_ready", "1 when the last readiness check passed, per dependency.", ["dependency"]
)


@dataclass(frozen=True)
class ReadinessCheck:
    """A named dependency check: `check()` returns normally when the dependency is usable."""

    name: str
    check: Callable[[], Awaitable[Any]]
    timeout_s: float = 2.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    duration_ms: float
    error: str | None = None


async def run_check(check: ReadinessCheck) -> CheckResult:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check.check(), timeout=check.timeout_s)
    except TimeoutError:
        error: str | None = f"timed out after {check.timeout_s:g}s"
    # Broad on purpose: any failure of a dependency check means "not ready", never a crash.
    except Exception as exc:
        # The body is public: a dependency's message may name its URL, password included.
        error = redact_text(f"{type(exc).__name__}: {exc}")
    else:
        error = None
    duration_ms = round((time.perf_counter() - started) * 1000.0, 2)
    READY.labels(check.name).set(0 if error else 1)
    return CheckResult(check.name, error is None, duration_ms, error)


async def run_checks(checks: Iterable[ReadinessCheck]) -> tuple[bool, dict[str, Any]]:
    results = await asyncio.gather(*(run_check(c) for c in checks))
    body = {
        r.name: {"ok": r.ok, "duration_ms": r.duration_ms} | ({"error": r.error} if r.error else {})
        for r in results
    }
    return all(r.ok for r in results), body


class HealthRegistry:
    """The readiness checks of one app; services and libraries add theirs."""

    def __init__(self) -> None:
        self.checks: list[ReadinessCheck] = []

    def add(self, check: ReadinessCheck) -> None:
        self.checks = [c for c in self.checks if c.name != check.name] + [check]

    async def ready(self) -> tuple[int, dict[str, Any]]:
        ok, results = await run_checks(self.checks)
        failing = sorted(name for name, r in results.items() if not r["ok"])
        body: dict[str, Any] = {
            "status": "ready" if ok else "not_ready",
            "ready": ok,
            "checks": results,
        }
        if failing:
            body["failing"] = failing
        return (200 if ok else 503), body


def add_health_endpoints(app: Any, checks: Iterable[ReadinessCheck] = ()) -> HealthRegistry:
    """Add `/health/live`, `/health/ready` and `/health` to a FastAPI app (once).

    Not ready is a 503 whose body names the failing dependencies. More checks can be added
    later with `add_readiness_check(app, check)`.
    """
    from fastapi.responses import JSONResponse

    registry: HealthRegistry | None = getattr(app.state, "health", None)
    if registry is None:
        registry = HealthRegistry()
        app.state.health = registry
        existing = {getattr(r, "path", None) for r in app.router.routes}

        async def live() -> dict[str, str]:
            return {"status": "ok"}

        async def ready() -> JSONResponse:
            status, body = await registry.ready()
            return JSONResponse(body, status_code=status)

        for path, endpoint in (
            ("/health/live", live),
            ("/health/ready", ready),
            ("/health", ready),
        ):
            if path not in existing:
                app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
    for check in checks:
        registry.add(check)
    return registry


def add_readiness_check(app: Any, check: ReadinessCheck) -> None:
    """Register one more dependency check on an app that has health endpoints."""
    add_health_endpoints(app, [check])
