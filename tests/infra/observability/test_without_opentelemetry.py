"""Graceful degradation: a separate interpreter in which OpenTelemetry cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.support.procs import ROOT

BLOCKER = """
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + ".") for p in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocked())
"""


def run_blocked(blocked: list[str], code: str, env: dict[str, str] | None = None) -> list[str]:
    script = f"BLOCKED = {blocked!r}\n" + BLOCKER + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout.splitlines()


def test_a_worker_runs_with_no_opentelemetry_at_all() -> None:
    lines = run_blocked(
        ["opentelemetry"],
        """
        from backend.infra.observability import (
            get_logger, get_tracer, init_observability, inject_trace_context,
            extract_trace_context, SpanKind, current_traceparent, use_trace_context,
        )
        init_observability(service_name="clm", log_level="INFO",
                           enable_tracing=True, enable_metrics=True)
        logger = get_logger(__name__)
        tracer = get_tracer(__name__)
        with tracer.start_as_current_span("process_signal", kind=SpanKind.CONSUMER) as span:
            span.set_attribute("symbol", "BTCUSDT")
            logger.info("scored", drift=0.1)
        assert inject_trace_context({}) == {}
        assert extract_trace_context({"traceparent": "x"}) is None
        assert current_traceparent() is None
        with use_trace_context("00-" + "1" * 32 + "-" + "2" * 16 + "-01"):
            assert current_traceparent() is None
        from prometheus_client import REGISTRY, generate_latest
        assert b"otel_spans_dropped_total" in generate_latest(REGISTRY)
        import sys
        assert not any(m.startswith("opentelemetry") for m in sys.modules)
        """,
        env={"OTLP_ENDPOINT": "http://127.0.0.1:4317"},
    )
    records = [json.loads(x) for x in lines]
    scored = next(r for r in records if r["message"] == "scored")
    assert scored["service.name"] == "clm" and scored["drift"] == 0.1
    assert scored["trace_id"] is None


def test_an_http_service_runs_with_only_the_api_installed() -> None:
    # Current FastAPI needs opentelemetry-api; the SDK, exporters and instrumentations are the
    # optional part.
    lines = run_blocked(
        ["opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation", "grpc"],
        """
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from backend.infra.observability import (
            add_metrics_middleware, get_logger, get_tracer, init_observability,
            instrument_fastapi,
        )
        init_observability(service_name="risk-safety", log_level="INFO",
                           enable_tracing=True, enable_metrics=True)
        app = FastAPI()
        instrument_fastapi(app)
        add_metrics_middleware(app)
        tracer = get_tracer(__name__)

        @app.get("/check/{symbol}")
        async def check(symbol: str):
            with tracer.start_as_current_span("risk_decision") as span:
                span.set_attribute("symbol", symbol)
            return {"approved": True}

        client = TestClient(app)
        assert client.get("/check/BTC").json() == {"approved": True}
        text = client.get("/metrics").text
        assert any(
            line.startswith("http_server_request_duration_seconds_count{")
            and 'http_request_method="GET"' in line
            and 'http_route="/check/{symbol}"' in line
            for line in text.splitlines()
        )
        """,
        env={"OTLP_ENDPOINT": "http://127.0.0.1:4317"},
    )
    records = [json.loads(x) for x in lines if x.startswith("{")]
    warning = next(r for r in records if r["level"] == "WARNING")
    assert "quantum-trader[otel]" in warning["message"]
    access = next(r for r in records if r["logger"] == "access")
    assert access["http.route"] == "/check/{symbol}"
