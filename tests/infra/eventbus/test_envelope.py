"""The envelope and the catalogue: encoding, validation, and every kind of malformed entry."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from backend.infra.eventbus import (
    EventBusConfigError,
    EventBusSettings,
    MalformedEvent,
    UnknownEventType,
    decode_entry,
    default_catalogue,
    valid_traceparent,
)
from backend.infra.eventbus._envelope import encode_event
from backend.trading.events import OrderFilled

from .worker import fill

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

REQUIRED_TYPES = {
    "market.tick",
    "signal.generated",
    "order.submitted",
    "order.accepted",
    "order.rejected",
    "order.canceled",
    "order.filled",
    "position.updated",
    "risk.decision",
    "risk.state_changed",
    "stop.triggered",
    "stop.failed",
    "model.trained",
    "model.promoted",
    "feed.stalled",
}


def encoded(payload: OrderFilled | None = None, **overrides: object) -> dict[bytes, bytes]:
    spec = default_catalogue().spec_for_model(OrderFilled)
    raw = encode_event(
        spec,
        "e1",
        "execution",
        datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        payload or fill(1),
        TRACEPARENT,
        "vendor=1",
        "user=alice",
    )
    doc = orjson.loads(raw)
    doc.update(overrides)
    doc = {k: v for k, v in doc.items() if v is not ...}
    return {b"event": orjson.dumps(doc)}


def test_catalogue_lists_every_platform_event_once_with_its_own_stream() -> None:
    assert {spec.type for spec in default_catalogue()} >= REQUIRED_TYPES
    assert len({spec.stream for spec in default_catalogue()}) == len(default_catalogue())
    with pytest.raises(UnknownEventType):
        default_catalogue().spec_for_type("order.teleported")


def test_money_travels_as_strings_and_comes_back_as_decimal() -> None:
    fields = encoded()
    doc = orjson.loads(fields[b"event"])
    assert doc["data"]["price"] == "64000.10" and doc["data"]["fee"] == "3.20"
    assert doc["specversion"] == "1.0" and doc["schemaversion"] == 1
    assert doc["traceparent"] == TRACEPARENT and doc["time"] == "2025-01-02T03:04:05Z"
    event = decode_entry(fields, stream="order.filled", entry_id="1-0", deliveries=1)
    assert event.data == fill(1)
    assert isinstance(event.data.price, Decimal) and event.data.price == Decimal("64000.10")
    assert (event.id, event.type, event.source) == ("e1", "order.filled", "execution")
    assert (event.tracestate, event.baggage, event.entry_id) == ("vendor=1", "user=alice", "1-0")


MALFORMED = [
    ("missing_field", {b"other": b"x"}),
    ("bad_json", {b"event": b"{not json"}),
    ("bad_json", {b"event": b"[1, 2]"}),
    ("missing_field", encoded(id=...)),
    ("missing_field", encoded(data=...)),
    ("invalid_attribute", encoded(source="")),
    ("invalid_attribute", encoded(time="yesterday")),
    ("invalid_attribute", encoded(time="2025-01-02T03:04:05")),
    ("invalid_attribute", encoded(schemaversion="one")),
    ("unsupported_specversion", encoded(specversion="0.3")),
    ("unknown_type", encoded(type="order.teleported")),
    ("wrong_stream", encoded(type="market.tick")),
    ("unsupported_schema_version", encoded(schemaversion=2)),
    ("bad_traceparent", encoded(traceparent="00-xyz")),
    ("bad_traceparent", encoded(traceparent="00-" + "0" * 32 + "-b7ad6b7169203331-01")),
    ("bad_traceparent", encoded(traceparent=42)),
    ("invalid_data", encoded(data={"fill_id": "F1"})),
    ("invalid_data", encoded(data={**orjson.loads(encoded()[b"event"])["data"], "price": "abc"})),
]


@pytest.mark.parametrize(("reason", "fields"), MALFORMED)
def test_each_kind_of_malformed_entry_is_rejected_with_its_reason(
    reason: str, fields: dict[bytes, bytes]
) -> None:
    with pytest.raises(MalformedEvent) as info:
        decode_entry(fields, stream="order.filled")
    assert info.value.reason == reason


def test_traceparent_validation_follows_w3c() -> None:
    assert valid_traceparent(TRACEPARENT)
    assert not valid_traceparent(TRACEPARENT + "-extra")  # version 00 has exactly 4 parts
    assert valid_traceparent("01" + TRACEPARENT[2:] + "-future")
    assert not valid_traceparent("ff" + TRACEPARENT[2:])
    assert not valid_traceparent(TRACEPARENT.upper())


def test_settings_from_env_name_the_bad_variable() -> None:
    assert EventBusSettings.from_env({"EVENTBUS_PREFIX": "svc"}).prefix == "svc"
    assert EventBusSettings.from_env({}).prefix == "qt"
    with pytest.raises(EventBusConfigError, match="EVENTBUS_MAX_LEN"):
        EventBusSettings.from_env({"EVENTBUS_MAX_LEN": "lots"})
    with pytest.raises(EventBusConfigError, match="EVENTBUS_PREFIX"):
        EventBusSettings.from_env({"EVENTBUS_PREFIX": "has space"})
    with pytest.raises(EventBusConfigError, match="EVENTBUS_RETRY_BACKOFF_MAX_MS"):
        EventBusSettings(retry_backoff_max_ms=40_000, claim_idle_ms=30_000)
