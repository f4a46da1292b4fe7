"""Spans leave real service processes over OTLP (HTTP and gRPC), joined across processes."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend.infra.traceview import OtlpSpan
from tests.support.otlp import OtlpReceiver
from tests.support.polling import wait_until
from tests.support.procs import free_port, running

SERVER, CLIENT = 2, 3


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def otlp_env(receiver: OtlpReceiver, protocol: str = "http/protobuf") -> dict[str, str]:
    endpoint = receiver.http_endpoint if protocol == "http/protobuf" else receiver.grpc_endpoint
    return {
        "OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SERVICE_VERSION": "7.7.7",
        "ENVIRONMENT": "test",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=trading",
    }


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def by_name(spans: list[OtlpSpan], name: str) -> OtlpSpan:
    matches = [s for s in spans if s.name == name]
    assert matches, f"no span {name!r} in {[s.name for s in spans]}"
    return matches[0]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_reach_the_collector_with_resource_attributes(
    receiver: OtlpReceiver, tmp_path: Path, protocol: str
) -> None:
    port = free_port()
    env = otlp_env(receiver, protocol)
    with running(["-m", "tests.support.echo_service", str(port)], env, tmp_path / "a.log", port):
        assert get(port, "/hop/0")[0] == 200
        spans = receiver.wait_for(lambda s: any(x.name == "GET /hop/{n}" for x in s))
    server = by_name(spans, "GET /hop/{n}")
    assert server.kind == SERVER
    assert server.resource["service.name"] == f"echo-{port}"
    assert server.resource["service.version"] == "7.7.7"
    assert server.resource["deployment.environment.name"] == "test"
    assert "deployment.environment" not in server.resource
    assert server.resource["k8s.namespace.name"] == "trading"
    assert server.attributes["http.route"] == "/hop/{n}"
    assert server.attributes["http.response.status_code"] == 200
    child = by_name(spans, "process_signal")
    assert child.parent_span_id == server.span_id and child.trace_id == server.trace_id
    assert child.attributes["symbol"] == "BTCUSDT"


def test_one_trace_across_two_processes_over_http(receiver: OtlpReceiver, tmp_path: Path) -> None:
    port_b, port_a = free_port(), free_port()
    env = otlp_env(receiver)
    b_args = ["-m", "tests.support.echo_service", str(port_b)]
    a_args = ["-m", "tests.support.echo_service", str(port_a), f"http://127.0.0.1:{port_b}"]
    with (
        running(b_args, env, tmp_path / "b.log", port_b) as proc_b,
        running(a_args, env, tmp_path / "a.log", port_a),
    ):
        status, body = get(port_a, "/hop/1")
        assert status == 200 and json.loads(body)["downstream"] == {"n": 0}

        def both_servers(spans: list[OtlpSpan]) -> bool:
            services = {s.resource["service.name"] for s in spans if s.kind == SERVER}
            return {f"echo-{port_a}", f"echo-{port_b}"} <= services

        spans = receiver.wait_for(both_servers)
        a_server = next(
            s for s in spans if s.kind == SERVER and s.resource["service.name"] == f"echo-{port_a}"
        )
        b_server = next(
            s for s in spans if s.kind == SERVER and s.resource["service.name"] == f"echo-{port_b}"
        )
        # A's outgoing httpx call is a CLIENT span under A's server span; B continues from it.
        client = next(s for s in spans if s.kind == CLIENT and s.trace_id == a_server.trace_id)
        assert b_server.trace_id == a_server.trace_id
        assert client.parent_span_id == a_server.span_id
        assert b_server.parent_span_id == client.span_id
        assert client.resource["service.name"] == f"echo-{port_a}"

        # B's own log lines for that request carry the same trace id.
        def b_logged() -> list[dict[str, object]]:
            lines = [json.loads(x) for x in proc_b.lines() if x.startswith("{")]
            return [x for x in lines if x.get("message") == "hop"]

        (hop_line,) = wait_until(b_logged, 20, "B's log line", 0.05)
        assert hop_line["trace_id"] == a_server.trace_id


def test_queued_spans_are_flushed_when_uvicorn_gets_sigterm(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    port = free_port()
    # A long schedule delay: only the shutdown flush can deliver the span.
    env = {**otlp_env(receiver), "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    with running(
        ["-m", "tests.support.echo_service", str(port)], env, tmp_path / "s.log", port
    ) as proc:
        assert get(port, "/hop/0")[0] == 200
        assert receiver.spans == []
        # uvicorn shuts down gracefully, then re-raises the signal (exit status -15).
        assert proc.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Finished server process" in proc.output()
    spans = receiver.wait_for(lambda s: any(x.name == "GET /hop/{n}" for x in s), timeout_s=5)
    assert by_name(spans, "process_signal")


def test_every_stdout_line_is_json_including_uvicorns(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    port = free_port()
    with running(
        ["-m", "tests.support.echo_service", str(port)],
        otlp_env(receiver),
        tmp_path / "j.log",
        port,
    ) as proc:
        get(port, "/hop/0")
        get(port, "/boom")
        wait_until(lambda: any('"logger":"access"' in x for x in proc.lines()), 20, "access", 0.05)
    lines = [json.loads(x) for x in proc.lines() if x.strip()]
    loggers = {x["logger"] for x in lines}
    assert {"uvicorn.error", "access"} <= loggers
    assert any("Uvicorn running on" in str(x["message"]) for x in lines)
    error = next(x for x in lines if x["logger"] == "uvicorn.error" and x["level"] == "ERROR")
    assert error["exception"]["type"] == "RuntimeError"  # type: ignore[index]
    access = [x for x in lines if x["logger"] == "access"]
    assert {x["http.route"] for x in access} >= {"/hop/{n}", "/boom"}
    assert all(len(str(x["trace_id"])) == 32 for x in access)


def test_a_dead_collector_costs_dropped_spans_not_requests(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    env = {
        "OTLP_ENDPOINT": f"http://127.0.0.1:{closed}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_BSP_MAX_QUEUE_SIZE": "64",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16",
    }
    with running(["-m", "tests.support.echo_service", str(port)], env, tmp_path / "d.log", port):
        for _ in range(300):
            assert get(port, "/hop/0")[0] == 200

        def dropped() -> float:
            text = get(port, "/metrics")[1]
            values = {
                (s.name, s.labels.get("reason")): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            queue = values[("otel_export_queue_spans", None)]
            assert queue <= 64, "the export queue must stay bounded"
            return sum(v for (n, _), v in values.items() if n == "otel_spans_dropped_total")

        # 300 requests x 2 spans each: everything that was not still queued got dropped.
        wait_until(lambda: dropped() >= 600 - 64, 20, "drops to be counted", 0.05)
