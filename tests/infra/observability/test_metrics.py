"""Prometheus metrics: route-template labels, bounded cardinality, in-flight, drop counter."""

from __future__ import annotations

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


def request_count(text: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples(text, "http_requests_total")
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_requests_are_counted_by_route_template_and_status_class() -> None:
    client = TestClient(make_app())
    before = client.get("/metrics").text
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        client.get(f"/positions/{symbol}")
    client.post("/orders")
    text = client.get("/metrics").text
    route = {"method": "GET", "route": "/positions/{symbol}", "status": "2xx"}
    assert request_count(text, **route) - request_count(before, **route) == 3
    post = {"method": "POST", "route": "/orders", "status": "2xx"}
    assert request_count(text, **post) - request_count(before, **post) == 1
    assert not any("BTCUSDT" in str(s.labels) for s in samples(text, "http_requests_total"))
    hist = [
        s
        for s in samples(text, "http_request_duration_seconds_count")
        if s.labels.get("route") == "/positions/{symbol}"
    ]
    assert hist and hist[0].value >= 3
    buckets = [
        s
        for s in samples(text, "http_request_duration_seconds_bucket")
        if s.labels.get("route") == "/positions/{symbol}"
    ]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == hist[0].value


def test_a_flood_of_random_urls_creates_no_new_series() -> None:
    client = TestClient(make_app())
    flood = [f"/{uuid.uuid4()}/{uuid.uuid4()}" for _ in range(200)]
    for path in flood:
        client.get(path)
    methods = [f"X{uuid.uuid4().hex[:6].upper()}" for _ in range(20)]
    for method in methods:
        client.request(method, "/positions/BTC")
    text = client.get("/metrics").text
    series = samples(text, "http_requests_total")
    labels = [s.labels for s in series]
    assert not any(part in str(labels) for path in flood for part in path.split("/") if part)
    assert not any(method in str(labels) for method in methods)
    unmatched = [x for x in labels if x["route"] == "__unmatched__"]
    assert unmatched == [{"method": "GET", "route": "__unmatched__", "status": "4xx"}]
    other = [x for x in labels if x["method"] == "_OTHER"]
    assert other == [{"method": "_OTHER", "route": "/positions/{symbol}", "status": "4xx"}]
    assert request_count(text, route="__unmatched__", status="4xx") >= 200
    assert request_count(text, method="_OTHER") >= 20


def test_in_flight_and_dropped_span_metrics_are_exposed() -> None:
    client = TestClient(make_app())
    text = client.get("/metrics").text
    names = families(text)
    assert "http_requests_in_flight" in names
    assert "otel_spans_dropped" in names
    reasons = {s.labels["reason"] for s in samples(text, "otel_spans_dropped_total")}
    assert {"queue_full", "export_failed"} <= reasons


def test_seed_metrics_route_shows_the_library_metrics() -> None:
    client = TestClient(make_app(seed_metrics_route=True))
    client.get("/positions/BTC")
    text = client.get("/metrics").text
    assert request_count(text, route="/positions/{symbol}") >= 1
    # The app's own /metrics handled the scrape, and the scrape itself is counted.
    client.get("/metrics")
    assert request_count(client.get("/metrics").text, route="/metrics") >= 2
