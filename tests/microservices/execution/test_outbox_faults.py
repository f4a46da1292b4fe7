"""execution with Redis stopped after its commits: every event arrives later, once, traced."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from backend.infra.eventbus import EmbeddedRedis, EventBusSettings, default_catalogue
from tests.microservices.execution.conftest import running
from tests.microservices.execution.test_execution import order, send_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def envelopes(harness: ServiceHarness, event_type: str) -> list[dict[str, Any]]:
    """Every envelope of `event_type` on this test's stream, oldest first."""
    key = EventBusSettings(prefix=harness.prefix).stream_key(
        default_catalogue().spec_for_type(event_type).stream
    )
    client = redis.Redis.from_url(harness.redis_url)
    try:
        return [orjson.loads(fields[b"event"]) for _id, fields in client.xrange(key)]
    finally:
        client.close()


def test_orders_placed_while_redis_is_down_publish_every_event_once_with_its_trace(
    harness: ServiceHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")  # our own server: the shared one stays up
    server.start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("OUTBOX_PUBLISH_TIMEOUT_S", "0.5")
    monkeypatch.setenv("OUTBOX_RETRY_BACKOFF_S", "0.05")
    monkeypatch.setenv("OUTBOX_RETRY_BACKOFF_MAX_S", "0.5")
    own = ServiceHarness(server.url, harness.prefix, harness.database_url)
    try:
        with running(own) as client:
            send_tick(own, client)
            server.stop()  # from here every commit is followed by a failing publish

            placed = [client.post("/orders", json=order(f"f-{n}")) for n in range(3)]
            assert [r.status_code for r in placed] == [201, 201, 201]
            assert {r.json()["status"] for r in placed} == {"FILLED"}
            resting = client.post(
                "/orders", json=order("f-r", order_type="LIMIT", limit_price="90.00")
            )
            assert resting.json()["status"] == "ACCEPTED"
            assert client.post("/orders/f-r/cancel").json()["status"] == "CANCELED"
            assert client.post("/orders", json=order("f-0")).status_code == 200  # a retry
            assert 'outbox_pending_events{source="execution"}' in client.get("/metrics").text

            server.start()
            wait_until(
                lambda: (
                    len(envelopes(own, "order.filled")) == 3
                    and len(envelopes(own, "order.canceled")) == 1
                ),
                20,
                "the relay to publish what the outage held back",
            )

            traces = {
                cid: client.get(f"/orders/{cid}/events").json()["data"][0]["trace_id"]
                for cid in ("f-0", "f-1", "f-2", "f-r")
            }
            cancel_trace = client.get("/orders/f-r/events").json()["data"][-1]["trace_id"]

        published = {
            kind: envelopes(own, kind)
            for kind in ("order.submitted", "order.accepted", "order.filled", "order.canceled")
        }
        ids = Counter(e["id"] for events in published.values() for e in events)
        assert ids and set(ids.values()) == {1}  # exactly once per event id
        for kind in ("order.submitted", "order.accepted"):
            assert sorted(e["data"]["client_order_id"] for e in published[kind]) == sorted(traces)
        assert [e["data"]["fill_id"] for e in published["order.filled"]] == [
            "f-0-1",
            "f-1-1",
            "f-2-1",
        ]
        for kind in ("order.submitted", "order.accepted", "order.filled"):
            for event in published[kind]:
                trace_id = event["traceparent"].split("-")[1]
                assert trace_id == traces[event["data"]["client_order_id"]], (kind, event)
        (canceled,) = published["order.canceled"]
        assert canceled["traceparent"].split("-")[1] == cancel_trace
    finally:
        server.stop()
