"""Webhooks out of eventbus-bridge, with the bridge as a real process and a real receiver: the
fill arrives signed and in the fill's trace; a hung or dead receiver is retried, counted and
dead-lettered while the bus keeps flowing."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from backend.infra.eventbus import EventBusSettings, default_catalogue
from backend.infra.eventbus._envelope import encode_event
from backend.infra.traceview import OtlpSpan
from backend.trading.events import OrderFilled, RiskStateChanged
from backend.trading.risk import TradingState
from backend.trading.types import Liquidity, Side
from microservices.contracts.webhooks import (
    ATTEMPT_HEADER,
    ID_HEADER,
    SIGNATURE_HEADER,
    WebhookBody,
    verify_signature,
)
from microservices.eventbus_bridge.webhooks import dead_letter_key
from tests.acceptance.harness import base_env, json_lines, poll, service
from tests.support.otlp import OtlpReceiver
from tests.support.webhooks import receiver

SECRET = f"whsec-{secrets.token_hex(16)}"
CLIENT, CONSUMER = 3, 5
GROUP = "eventbus-bridge"


def publish(redis_url: str, prefix: str, data: Any, traceparent: str) -> tuple[str, str]:
    """Publish `data` as another service would, in the trace `traceparent`; (event id, entry)."""
    spec = default_catalogue().spec_for_model(type(data))
    event_id = secrets.token_hex(16)
    payload = encode_event(
        spec, event_id, "execution", datetime.now(UTC), data, traceparent, None, None
    )
    client = redis.Redis.from_url(redis_url)
    try:
        key = EventBusSettings(prefix=prefix).stream_key(spec.stream)
        entry_id = client.xadd(key, {b"event": payload})
    finally:
        client.close()
    return event_id, entry_id.decode()


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def a_fill(n: int = 1) -> OrderFilled:
    return OrderFilled(
        fill_id=f"fill-{n}-{secrets.token_hex(4)}",
        client_order_id=f"coid-{n}",
        symbol="BTCUSDT",
        side=Side.BUY,
        quantity=Decimal("0.125"),
        price=Decimal("40123.45"),
        fee=Decimal("2.01"),
        liquidity=Liquidity.TAKER,
        ts_ms=1_765_000_000_000,
        sequence=n,
    )


def halted() -> RiskStateChanged:
    return RiskStateChanged(
        previous_state=TradingState.ACTIVE, state=TradingState.HALTED, reason="daily_loss"
    )


def sample(url: str, name: str, **labels: str) -> float:
    """One sample of the process's `/metrics` (0 when absent)."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    )
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def count(redis_url: str, key: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(key))
    finally:
        client.close()


def group_done(redis_url: str, key: str, entry_id: str) -> bool:
    """The bridge's consumer group has read and acknowledged `entry_id` on `key`."""
    client = redis.Redis.from_url(redis_url)
    try:
        for group in client.xinfo_groups(key):
            if group["name"].decode() == GROUP:
                delivered = group["last-delivered-id"].decode()
                return bool(delivered == entry_id and group["pending"] == 0)
        return False
    finally:
        client.close()


def bridge_env(redis_url: str, otlp: str | None, url: str, **extra: str) -> dict[str, str]:
    return base_env(redis_url, otlp) | {
        "FEED_MODE": "sim",
        "FEED_RATE_HZ": "20",
        "WEBHOOK_URLS": url,
        "WEBHOOK_SECRET": SECRET,
        **extra,
    }


def test_a_fill_reaches_the_receiver_signed_and_in_the_fills_trace(
    redis_url: str, tmp_path: Path
) -> None:
    with OtlpReceiver() as otlp, receiver() as hooks:
        env = bridge_env(redis_url, otlp.http_endpoint, hooks.url)
        with service("eventbus-bridge", tmp_path, env) as (proc, url):
            traceparent, trace_id, parent_id = new_traceparent()
            fill = a_fill()
            event_id, _ = publish(redis_url, env["EVENTBUS_PREFIX"], fill, traceparent)
            (got,) = poll(lambda: hooks.requests, 20, "the fill at the receiver")

            assert got.path == "/hooks/quantum?k=abc"
            verify_signature(got.body, got.headers[SIGNATURE_HEADER.lower()], SECRET)
            body = WebhookBody.model_validate_json(got.body)
            assert (body.id, body.type, body.source) == (event_id, "order.filled", "execution")
            assert OrderFilled.model_validate(body.data) == fill
            assert body.traceparent == traceparent
            assert got.headers[ID_HEADER.lower()] == event_id
            assert got.headers[ATTEMPT_HEADER.lower()] == "1"
            _, header_trace, header_span, _ = got.headers["traceparent"].split("-")
            assert header_trace == trace_id, "the receiver is called in the fill's trace"
            poll(
                lambda: (
                    sample(
                        url,
                        "webhook_deliveries_total",
                        event_type="order.filled",
                        outcome="delivered",
                    )
                    == 1.0
                ),
                10,
                "the delivery counted",
            )
            assert sample(url, "webhook_attempts_total", event_type="order.filled", result="ok")
            assert sample(url, "webhook_delivery_seconds_count", event_type="order.filled") == 1
            output = proc.output()
            assert SECRET not in output
            assert "k=abc" not in output and "/hooks/quantum" not in output, "the URL's token"

        spans = otlp.wait_for(
            lambda spans: any(s.trace_id == trace_id and s.kind == CLIENT for s in spans)
        )
    trace = {s.span_id: s for s in spans if s.trace_id == trace_id}
    (client,) = [s for s in trace.values() if s.kind == CLIENT]
    assert client.span_id == header_span, "the header names the webhook's CLIENT span"
    assert client.resource["service.name"] == "eventbus-bridge"
    chain = ancestry(trace, client)
    assert [(s.name, s.kind) for s in chain[1:]] == [
        ("webhook deliver", 1),
        ("process order.filled", CONSUMER),
    ]
    assert chain[-1].parent_span_id == parent_id, "the consumer span continues the fill's span"


def ancestry(trace: dict[str, OtlpSpan], span: OtlpSpan) -> list[OtlpSpan]:
    chain = [span]
    while chain[-1].parent_span_id in trace:
        chain.append(trace[chain[-1].parent_span_id])
    return chain


def test_a_hung_then_dead_receiver_is_retried_counted_and_dead_lettered_without_blocking_the_bus(
    redis_url: str, tmp_path: Path
) -> None:
    with receiver() as hooks:
        hooks.hold = True
        env = bridge_env(
            redis_url,
            None,
            hooks.url,
            WEBHOOK_WORKERS="1",
            WEBHOOK_MAX_ATTEMPTS="3",
            WEBHOOK_BACKOFF_MS="50",
            WEBHOOK_BACKOFF_MAX_MS="200",
            WEBHOOK_TIMEOUT_S="30",
        )
        prefix = env["EVENTBUS_PREFIX"]
        bus = EventBusSettings(prefix=prefix)
        ticks = bus.stream_key("market.tick")
        with service("eventbus-bridge", tmp_path, env) as (proc, url):
            fill = a_fill()
            traceparent, trace_id, _ = new_traceparent()
            fill_id, _ = publish(redis_url, prefix, fill, traceparent)
            # The only delivery worker is now stuck in the receiver, which does not answer.
            assert hooks.held.wait(20), "the fill reached the receiver"
            # Tracing is off in this process, and the receiver still gets the fill's trace.
            assert hooks.requests[0].headers["traceparent"].split("-")[1] == trace_id

            ticks_then = count(redis_url, ticks)
            state_id, state_entry = publish(redis_url, prefix, halted(), new_traceparent()[0])
            poll(
                lambda: group_done(redis_url, bus.stream_key("risk.state_changed"), state_entry),
                20,
                "the bus consumer to take the next event while the delivery hangs",
            )
            poll(lambda: sample(url, "webhook_queue_depth") == 1.0, 10, "the state change queued")
            poll(lambda: count(redis_url, ticks) > ticks_then + 5, 20, "ticks to keep flowing")
            assert len(hooks.requests) == 1, "nothing else was sent while the worker was stuck"

            hooks.stop()  # answers the held request with a 503, then goes away for good
            dead = poll(
                lambda: (d := dead_letters(redis_url, prefix)) and len(d) == 2 and d,
                30,
                "both deliveries dead-lettered",
            )
            by_id = {d["event_id"]: d for d in dead}
            assert by_id[fill_id]["event_type"] == "order.filled"
            assert by_id[fill_id]["outcome"] == "failed"
            assert by_id[fill_id]["attempts"] == "3"
            assert by_id[fill_id]["endpoint"] == hooks.url.split("/hooks")[0]
            assert OrderFilled.model_validate(orjson.loads(by_id[fill_id]["body"])["data"]) == fill
            assert by_id[state_id]["event_type"] == "risk.state_changed"
            assert all("abc" not in d["endpoint"] and SECRET not in str(d) for d in dead)

            def attempts(event_type: str) -> float:
                return sample(
                    url, "webhook_attempts_total", event_type=event_type, result="retryable"
                )

            poll(lambda: attempts("order.filled") == 3.0, 10, "three attempts counted")
            assert attempts("risk.state_changed") == 3.0
            failed = {"event_type": "order.filled", "outcome": "failed"}
            assert sample(url, "webhook_deliveries_total", **failed) == 1.0
            assert sample(url, "webhook_queue_depth") == 0.0
            # Each retry logged (INFO lines are written by the log sink's thread, within 200 ms).
            poll(
                lambda: (
                    len([m for m in json_lines(proc) if m["message"].startswith("webhook attempt")])
                    == 4
                ),
                5,
                "two retries of each delivery, each logged",
            )
            output = proc.output()
            assert SECRET not in output
            assert "k=abc" not in output and "/hooks/quantum" not in output

            # Still consuming and still publishing after all of it.
            ticks_then = count(redis_url, ticks)
            _, entry = publish(redis_url, prefix, a_fill(2), new_traceparent()[0])
            poll(lambda: group_done(redis_url, bus.stream_key("order.filled"), entry), 20, "fill 2")
            poll(lambda: count(redis_url, ticks) > ticks_then, 20, "more ticks")
            assert httpx.get(f"{url}/health/ready").status_code == 200


def dead_letters(redis_url: str, prefix: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [fields for _id, fields in client.xrange(dead_letter_key(prefix))]
    finally:
        client.close()
