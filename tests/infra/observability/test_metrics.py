"""Prometheus metrics: route-template labels, bounded cardinality, in-flight, drop counter."""

from __future__ import annotations

import secrets
import uuid

from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backend.infra.observability import add_metrics_middleware, instrument_fastapi


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list:  # type: ignore[type-arg]
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def make_app(seed_metrics_route: bool = False) -> FastAPI:
    app = FastAPI()
    instrument_fastapi(app)
    add_metrics_middleware(app)

    @app.get("/positions/{symbol}")
    async def position(symbol: str) -> dict[str, str]:
        return {"symbol": symbol}

    @app.post("/orders")
    async def order() -> dict[str, str]:
        return {"status": "accepted"}

    if seed_metrics_route:
        # Exactly the seed's own endpoint.
        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


DURATION = "http_server_request_duration_seconds"


def request_count(text: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples(text, f"{DURATION}_count")
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_requests_are_measured_under_the_semantic_convention_names() -> None:
    client = TestClient(make_app())
    before = client.get("/metrics").text
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        client.get(f"/positions/{symbol}")
    client.post("/orders")
    text = client.get("/metrics").text
    route = {
        "http_request_method": "GET",
        "http_route": "/positions/{symbol}",
        "http_response_status_code": "200",
        "url_scheme": "http",
        "error_type": "",
    }
    assert request_count(text, **route) - request_count(before, **route) == 3
    post = {"http_request_method": "POST", "http_route": "/orders"}
    assert request_count(text, **post) - request_count(before, **post) == 1
    assert not any("BTCUSDT" in str(s.labels) for s in samples(text, f"{DURATION}_count"))
    buckets = [
        s
        for s in samples(text, f"{DURATION}_bucket")
        if s.labels.get("http_route") == "/positions/{symbol}"
    ]
    count = request_count(text, http_route="/positions/{symbol}")
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count >= 3
    assert "http_requests_total" not in text and "http_request_duration_seconds" not in text


def test_the_status_code_is_exact_and_server_errors_carry_their_type() -> None:
    app = make_app()

    @app.get("/limited")
    async def limited() -> Response:
        return Response(status_code=429)

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("x")

    client = TestClient(app, raise_server_exceptions=False)
    client.get("/limited")
    client.get("/boom")
    text = client.get("/metrics").text
    assert request_count(text, http_route="/limited", http_response_status_code="429") >= 1
    assert (
        request_count(
            text, http_route="/boom", http_response_status_code="500", error_type="KeyError"
        )
        >= 1
    )


def test_a_flood_of_random_urls_creates_no_new_series() -> None:
    client = TestClient(make_app())
    flood = [f"/{uuid.uuid4()}/{uuid.uuid4()}" for _ in range(200)]
    for path in flood:
        client.get(path)
    methods = [f"X{uuid.uuid4().hex[:6].upper()}" for _ in range(20)]
    for method in methods:
        client.request(method, "/positions/BTC")
    text = client.get("/metrics").text
    series = samples(text, f"{DURATION}_count")
    labels = [s.labels for s in series]
    assert not any(part in str(labels) for path in flood for part in path.split("/") if part)
    assert not any(method in str(labels) for method in methods)
    # A request that matched no route has no route label (empty), as the conventions say.
    # (Other apps of this test process may add series of their own; none may be random.)
    unmatched = {
        (x["http_request_method"], x["http_response_status_code"])
        for x in labels
        if x["http_route"] == ""
    }
    assert ("GET", "404") in unmatched
    assert all(method in ("GET", "HEAD", "POST", "_OTHER") for method, _ in unmatched)
    other = [
        x["http_response_status_code"]
        for x in labels
        if x["http_request_method"] == "_OTHER" and x["http_route"] == "/positions/{symbol}"
    ]
    assert other == ["405"]
    assert request_count(text, http_route="", http_response_status_code="404") >= 200
    assert request_count(text, http_request_method="_OTHER") >= 20


def test_buckets_carry_trace_exemplars_in_openmetrics(span_exporter) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(make_app())
    client.get("/positions/EXEMPLAR")
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name.startswith("GET /pos")]
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    text = response.text
    assert text.rstrip().endswith("# EOF")
    trace_id = f"{span.context.trace_id:032x}"
    exemplar_lines = [
        line
        for line in text.splitlines()
        if line.startswith(f"{DURATION}_bucket") and f'trace_id="{trace_id}"' in line
    ]
    assert len(exemplar_lines) == 1
    assert f'span_id="{span.context.span_id:016x}"' in exemplar_lines[0]
    # The classic text format stays as it was, without exemplars.
    plain = client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text


def test_unsampled_requests_leave_no_exemplar() -> None:
    client = TestClient(make_app())
    # A trace id of this test alone: the histograms are process-wide, and other tests send
    # sampled requests with the specification's example ids.
    trace_id = secrets.token_hex(16)
    client.get(
        "/positions/UNSAMPLED", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"}
    )
    text = client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    assert trace_id not in text


def test_in_flight_and_dropped_span_metrics_are_exposed() -> None:
    client = TestClient(make_app())
    text = client.get("/metrics").text
    names = families(text)
    assert "http_server_active_requests" in names
    assert "otel_spans_dropped" in names
    reasons = {s.labels["reason"] for s in samples(text, "otel_spans_dropped_total")}
    assert {"queue_full", "export_failed"} <= reasons


def test_seed_metrics_route_shows_the_library_metrics() -> None:
    client = TestClient(make_app(seed_metrics_route=True))
    client.get("/positions/BTC")
    text = client.get("/metrics").text
    assert request_count(text, http_route="/positions/{symbol}") >= 1
    # The app's own /metrics handled the scrape, and the scrape itself is counted.
    client.get("/metrics")
    assert request_count(client.get("/metrics").text, http_route="/metrics") >= 2
