"""Webhook delivery in-process against a real receiver and a real Redis: a retryable answer is
retried and then delivered, a permanent one is dead-lettered at once, and an operator sends
dead letters again."""

from __future__ import annotations

from decimal import Decimal

import orjson
import redis
from click.testing import CliRunner

from backend.trading.events import OrderFilled
from backend.trading.types import Liquidity, Side
from microservices.contracts.webhooks import ATTEMPT_HEADER, SIGNATURE_HEADER, verify_signature
from microservices.eventbus_bridge.service import create_service
from microservices.eventbus_bridge.settings import EventbusBridgeSettings
from microservices.eventbus_bridge.webhooks import dead_letter_key
from quantum_trader import cli
from tests.support.inprocess import ServiceHarness
from tests.support.metrics import metric
from tests.support.polling import wait_until
from tests.support.webhooks import receiver

SECRET = "whsec-in-process-0123456789"
FILL = OrderFilled(
    fill_id="fill-delivery-1",
    client_order_id="coid-1",
    symbol="BTCUSDT",
    side=Side.SELL,
    quantity=Decimal("0.5"),
    price=Decimal("40000.10"),
    fee=Decimal("4.00"),
    liquidity=Liquidity.MAKER,
    ts_ms=1_765_000_000_000,
)


def settings(url: str) -> EventbusBridgeSettings:
    return EventbusBridgeSettings(
        WEBHOOK_URLS=url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_EVENTS="order.filled",
        WEBHOOK_BACKOFF_MS=20,
        WEBHOOK_BACKOFF_MAX_MS=50,
        WEBHOOK_MAX_ATTEMPTS=4,
    )


def dead_letters(harness: ServiceHarness) -> list[dict[str, str]]:
    client = redis.Redis.from_url(harness.redis_url, decode_responses=True)
    try:
        return [fields for _id, fields in client.xrange(dead_letter_key(harness.prefix))]
    finally:
        client.close()


def test_a_503_is_retried_and_the_retry_is_signed_afresh(harness: ServiceHarness) -> None:
    delivered = {"event_type": "order.filled", "outcome": "delivered"}
    before = metric("webhook_deliveries_total", **delivered)
    retryable = metric("webhook_attempts_total", event_type="order.filled", result="retryable")
    with receiver(first=(503, 503)) as hooks:
        with harness.run(lambda: create_service(settings(hooks.url))):
            harness.publish(FILL)
            wait_until(
                lambda: metric("webhook_deliveries_total", **delivered) == before + 1,
                15,
                "the delivery",
            )
        assert [r.headers[ATTEMPT_HEADER.lower()] for r in hooks.requests] == ["1", "2", "3"]
        for request in hooks.requests:
            verify_signature(request.body, request.headers[SIGNATURE_HEADER.lower()], SECRET)
        assert len({r.body for r in hooks.requests}) == 1, "the same body on every attempt"
    assert (
        metric("webhook_attempts_total", event_type="order.filled", result="retryable")
        == retryable + 2
    )
    assert dead_letters(harness) == []


def test_a_permanent_refusal_is_dead_lettered_at_once(harness: ServiceHarness) -> None:
    rejected = {"event_type": "order.filled", "outcome": "rejected"}
    before = metric("webhook_deliveries_total", **rejected)
    with receiver(status=400) as hooks:
        with harness.run(lambda: create_service(settings(hooks.url))):
            harness.publish(FILL)
            (dead,) = wait_until(lambda: dead_letters(harness), 15, "the dead letter")
        assert len(hooks.requests) == 1, "a 400 is not retried"
    assert (dead["outcome"], dead["attempts"], dead["status"]) == ("rejected", "1", "400")
    assert dead["error"] == "HTTP 400"
    assert orjson.loads(dead["body"])["data"]["fill_id"] == "fill-delivery-1"
    assert metric("webhook_deliveries_total", **rejected) == before + 1


def test_an_operator_redelivers_dead_letters_once_each(redis_url: str, prefix: str) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = orjson.dumps({"id": "evt-9", "type": "order.filled", "data": {"fill_id": "f-9"}})
    with receiver() as hooks:
        endpoint = hooks.url.split("/hooks")[0]
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            key = dead_letter_key(prefix)
            for event_id, where in (("evt-9", endpoint), ("evt-10", "https://gone.example")):
                client.xadd(
                    key,
                    {
                        "event_id": event_id,
                        "event_type": "order.filled",
                        "endpoint": where,
                        "traceparent": traceparent,
                        "body": body.decode(),
                    },
                )
            env = {
                "REDIS_URL": redis_url,
                "EVENTBUS_PREFIX": prefix,
                "WEBHOOK_URLS": hooks.url,
                "WEBHOOK_SECRET": SECRET,
            }
            result = CliRunner().invoke(cli.main, ["webhooks", "redeliver"], env=env)
            assert result.exit_code == 0, result.output
            assert result.stdout.strip().splitlines()[-1] == "delivered 1, kept 1"
            assert [e["event_id"] for _id, e in client.xrange(key)] == ["evt-10"]
        finally:
            client.close()
    (got,) = hooks.requests
    assert got.body == body
    verify_signature(got.body, got.headers[SIGNATURE_HEADER.lower()], SECRET)
    assert got.headers[ATTEMPT_HEADER.lower()] == "redelivery"
    assert got.headers["traceparent"].split("-")[1] == traceparent.split("-")[1], "its trace"


def test_deliveries_queued_or_in_flight_at_a_stop_are_dead_lettered_and_redelivered(
    harness: ServiceHarness,
) -> None:
    fills = [FILL.model_copy(update={"fill_id": f"fill-stop-{n}"}) for n in range(3)]
    with receiver(first=(503,)) as hooks:
        patient = settings(hooks.url).model_copy(
            update={"webhook_workers": 1, "webhook_backoff_ms": 60_000}
        )
        with harness.run(lambda: create_service(patient)):
            harness.publish(*fills)
            # The first is in flight (answered 503, waiting a minute to retry); two are queued.
            wait_until(lambda: hooks.requests, 15, "the first attempt")
        parked = dead_letters(harness)
        assert [(d["outcome"], d["attempts"]) for d in parked] == [("stopped", "0")] * 3
        assert sorted(orjson.loads(d["body"])["data"]["fill_id"] for d in parked) == [
            f"fill-stop-{n}" for n in range(3)
        ]
        env = {
            "REDIS_URL": harness.redis_url,
            "EVENTBUS_PREFIX": harness.prefix,
            "WEBHOOK_URLS": hooks.url,
            "WEBHOOK_SECRET": SECRET,
        }
        result = CliRunner().invoke(cli.main, ["webhooks", "redeliver"], env=env)
        assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "delivered 3, kept 0"
    redelivered = [orjson.loads(r.body)["data"]["fill_id"] for r in hooks.requests[1:]]
    assert sorted(redelivered) == [f"fill-stop-{n}" for n in range(3)]
    assert dead_letters(harness) == []
