"""The links a batch read's spans carry to the messages it returned."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from backend.infra.eventbus import Event
from backend.infra.eventbus._consumer import _message_links
from backend.infra.observability import get_tracer
from backend.trading.events import MarketTick


def _event(n: int) -> Event[MarketTick]:
    tick = MarketTick(
        symbol="BTC-USD",
        bid=Decimal("1"),
        ask=Decimal("2"),
        last=Decimal("1.5"),
        volume=Decimal("1"),
        ts_ms=n,
    )
    return Event(
        id=f"event-{n}",
        type="market.tick",
        source="test",
        time=datetime.now(UTC),
        data=tick,
        traceparent=f"00-{n + 1:032x}-{n + 1:016x}-01",
        entry_id=f"{n}-0",
    )


def test_a_large_read_builds_only_the_links_its_span_keeps(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("backend.infra.eventbus")
    limit = tracer._span_limits.max_links
    events = [_event(n) for n in range(limit + 200)]
    links = _message_links(events, tracer)
    # The SDK's link limit keeps the last ones: the same links, in the same order.
    kept = events[-limit:]
    assert [link.attributes["messaging.message.id"] for link in links] == [
        event.entry_id for event in kept
    ]
    assert [link.context.span_id for link in links] == [
        int(event.traceparent[36:52], 16) for event in kept if event.traceparent
    ]


def test_a_small_read_links_every_message(span_exporter) -> None:  # type: ignore[no-untyped-def]
    events = [_event(n) for n in range(5)]
    links = _message_links(events, get_tracer("backend.infra.eventbus"))
    assert [link.attributes["messaging.message.id"] for link in links] == [
        f"{n}-0" for n in range(5)
    ]
