"""Webhooks as plain code: signatures and their verification, back-off, status classes, settings,
and a queue that drops (and counts) instead of blocking the consumer."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from backend.infra.eventbus import Event
from backend.infra.observability import get_logger, get_tracer
from backend.infra.service import Resources, ServiceSettings
from backend.trading.events import RiskStateChanged
from backend.trading.risk import TradingState
from microservices.contracts.webhooks import (
    WebhookBody,
    WebhookSignatureError,
    compute_signature,
    sign,
    verify_signature,
)
from microservices.eventbus_bridge.settings import EventbusBridgeSettings
from microservices.eventbus_bridge.webhooks import (
    WebhookRelay,
    backoff_delay_s,
    classify,
    encode_body,
    endpoint_of,
)
from tests.support.metrics import metric

SECRET = "whsec-0123456789abcdef"
BODY = b'{"id":"e1","type":"order.filled","data":{"price":"100.5"}}'


def test_a_signed_body_verifies_and_returns_its_timestamp() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    assert header == f"t=1700000000,v1={compute_signature(SECRET, 1_700_000_000, BODY)}"
    assert verify_signature(BODY, header, SECRET, now=1_700_000_010) == 1_700_000_000


@pytest.mark.parametrize(
    ("body", "header", "secret", "reason"),
    [
        (BODY + b" ", sign(SECRET, BODY, 1_000), SECRET, "no signature matches"),
        (BODY, sign(SECRET, BODY, 1_000), "another-secret-of-16", "no signature matches"),
        (BODY, sign(SECRET, BODY, 1_000 - 301), SECRET, "tolerance"),
        (BODY, sign(SECRET, BODY, 1_000 + 301), SECRET, "tolerance"),
        (BODY, None, SECRET, "no QT-Webhook-Signature"),
        (BODY, "v1=abc", SECRET, "no timestamp"),
        (BODY, "t=1000", SECRET, "no v1"),
        (BODY, "t=soon,v1=abc", SECRET, "not an integer"),
    ],
)
def test_a_tampered_replayed_or_malformed_signature_is_refused(
    body: bytes, header: str | None, secret: str, reason: str
) -> None:
    with pytest.raises(WebhookSignatureError, match=reason):
        verify_signature(body, header, secret, now=1_000)


def test_a_receiver_rotating_its_secret_accepts_either() -> None:
    header = sign("old-secret-0123456789", BODY, 1_000)
    assert verify_signature(
        BODY, header, ["new-secret-0123456789", "old-secret-0123456789"], now=1_000
    )


def test_backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all() -> None:
    lows = [backoff_delay_s(n, 500, 4_000, rand=lambda: 0.0) for n in range(1, 7)]
    highs = [backoff_delay_s(n, 500, 4_000, rand=lambda: 1.0) for n in range(1, 7)]
    assert lows == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert highs == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (200, "ok"),
        (204, "ok"),
        (301, "permanent"),
        (400, "permanent"),
        (404, "permanent"),
        (408, "retryable"),
        (429, "retryable"),
        (500, "retryable"),
        (503, "retryable"),
    ],
)
def test_statuses_are_ok_retryable_or_permanent(status: int, result: str) -> None:
    assert classify(status) == result


def test_logs_and_dead_letters_show_the_endpoint_without_its_path_or_query() -> None:
    assert endpoint_of("https://hooks.example.com/T000/B000/XXXX?token=s3") == (
        "https://hooks.example.com"
    )
    assert endpoint_of("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000"


def test_webhooks_need_a_secret_and_the_error_never_echoes_it() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET") as caught:
        EventbusBridgeSettings(WEBHOOK_URLS="http://127.0.0.1:9/hook", WEBHOOK_SECRET="short")
    assert "short" not in str(caught.value).replace("WEBHOOK_SECRET", "")


def test_an_unknown_event_type_is_refused_naming_the_variable_and_the_known_ones() -> None:
    with pytest.raises(
        ValidationError, match=r"WEBHOOK_EVENTS: unknown event type.*stop\.triggered"
    ):
        EventbusBridgeSettings(WEBHOOK_EVENTS="order.filled,stop.trigered")


def test_the_forwarded_events_are_configurable_by_name() -> None:
    default = EventbusBridgeSettings()
    assert default.webhook_events == (
        "order.filled",
        "risk.state_changed",
        "stop.triggered",
        "model.promoted",
    )
    chosen = EventbusBridgeSettings(WEBHOOK_EVENTS=" order.filled , feed.stalled ")
    assert chosen.webhook_events == ("order.filled", "feed.stalled")
    assert "whsec" not in repr(EventbusBridgeSettings(WEBHOOK_SECRET=SECRET))


def state_change(n: int) -> Event[RiskStateChanged]:
    return Event(
        id=f"evt-{n}",
        type="risk.state_changed",
        source="risk-safety",
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        data=RiskStateChanged(
            previous_state=TradingState.ACTIVE, state=TradingState.HALTED, reason="drawdown"
        ),
    )


def test_the_body_is_the_event_with_its_data_as_the_bus_carries_it() -> None:
    body = WebhookBody.model_validate_json(encode_body(state_change(1)))
    assert (body.id, body.type, body.source, body.time) == (
        "evt-1",
        "risk.state_changed",
        "risk-safety",
        "2026-01-02T03:04:05Z",
    )
    assert body.data == {"previous_state": "ACTIVE", "state": "HALTED", "reason": "drawdown"}


async def test_a_full_queue_drops_and_counts_instead_of_blocking_the_consumer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = EventbusBridgeSettings(
        WEBHOOK_URLS="http://127.0.0.1:9/a,http://127.0.0.1:9/b",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_QUEUE_SIZE=3,
    )
    relay = WebhookRelay(
        settings,
        Resources("eventbus-bridge", ServiceSettings()),
        get_logger("test.webhooks"),
        get_tracer("test"),
    )
    before = metric("webhook_queue_dropped_total", event_type="risk.state_changed")
    with caplog.at_level(logging.WARNING, logger="test.webhooks"):
        for n in range(4):  # no worker runs: nothing leaves the queue
            await relay.enqueue(state_change(n))
    assert [r.getMessage() for r in caplog.records] == ["webhook queue full; dropping deliveries"]
    caplog.clear()
    assert relay.queue.qsize() == 3
    assert metric("webhook_queue_dropped_total", event_type="risk.state_changed") - before == 5
    assert metric("webhook_queue_depth") == 3
    relay.queue.get_nowait()
    with caplog.at_level(logging.WARNING, logger="test.webhooks"):
        await relay.enqueue(state_change(5))  # one place, two receivers: one in, one dropped
    assert [r.getMessage() for r in caplog.records] == [
        "webhook queue accepting again",
        "webhook queue full; dropping deliveries",
    ]
    assert caplog.records[0]._fields["dropped"] == 5  # type: ignore[attr-defined]
