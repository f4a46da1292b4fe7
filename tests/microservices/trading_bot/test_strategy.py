"""trading-bot against stubbed upstreams: orders, skip reasons, pause/stop, retries, spans."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from backend.infra.eventbus import Event, EventBusSettings, EventPublisher, create_redis_client
from backend.trading.events import MarketTick, OrderFilled
from backend.trading.features import WINDOW
from backend.trading.orders import client_order_id_for
from backend.trading.sizing import size_order
from backend.trading.types import Liquidity, Side
from microservices.trading_bot.settings import TradingBotSettings
from tests.acceptance.harness import http, poll
from tests.support.otlp import OtlpReceiver

from .conftest import Bot, Upstreams

CONSUMER, CLIENT = 5, 3


def ticks(symbol: str, count: int, start: str = "100") -> list[MarketTick]:
    price = Decimal(start)
    out = []
    for i in range(count):
        mid = price + Decimal(i % 3) / 10
        out.append(
            MarketTick(
                symbol=symbol,
                bid=mid - Decimal("0.05"),
                ask=mid + Decimal("0.05"),
                last=mid,
                volume=Decimal(10),
                ts_ms=1_700_000_000_000 + i,
            )
        )
    return out


async def publish(bot: Bot, items: list[Any]) -> list[str]:
    client = create_redis_client(bot.redis)
    try:
        publisher = EventPublisher(client, "test-feed", EventBusSettings(prefix=bot.prefix))
        return [r.event_id for r in await publisher.publish_many(items)]
    finally:
        await client.aclose()


def bought(symbol: str, quantity: Decimal, sequence: int, side: str = "BUY") -> OrderFilled:
    """A fill of `quantity` at 100 (fee 0.1), as execution announces it."""
    return OrderFilled(
        fill_id=f"fill-{uuid.uuid4().hex[:12]}",
        client_order_id=f"other-{uuid.uuid4().hex[:8]}",
        symbol=symbol,
        side=Side(side),
        quantity=quantity,
        price=Decimal(100),
        fee=Decimal("0.1"),
        liquidity=Liquidity.TAKER,
        ts_ms=1_700_000_000_000,
        sequence=sequence,
    )


def wait_book_sequence(bot: Bot, sequence: int) -> None:
    """Until the bot's fill-fed book holds every fill up to `sequence`."""
    poll(
        lambda: f"bot_book_fill_sequence {float(sequence)}" in httpx.get(f"{bot.url}/metrics").text,
        15,
        f"the book at fill sequence {sequence}",
    )


def decisions(bot: Bot, symbol: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{bot.url}/decisions", params={"symbol": symbol}).json()
    return list(body["data"])


def wait_decisions(bot: Bot, symbol: str, count: int = 1) -> list[dict[str, Any]]:
    return poll(  # type: ignore[no-any-return]
        lambda: (d := decisions(bot, symbol)) and len(d) >= count and d,
        15,
        f"{count} decision(s) for {symbol}",
    )


def signal_id(symbol: str, source_id: str) -> str:
    return "sig-" + hashlib.sha256(f"{symbol}|{source_id}".encode()).hexdigest()[:24]


async def test_an_approved_buy_becomes_one_order_with_a_deterministic_id(
    bot: Bot, upstreams: Upstreams, otlp: OtlpReceiver
) -> None:
    upstreams.signals["BTCUSDT"] = ("BUY", 0.8)
    batch = ticks("BTCUSDT", WINDOW)
    event_ids = await publish(bot, batch)

    (decision,) = wait_decisions(bot, "BTCUSDT")
    assert decision["outcome"] == "ORDERED" and decision["reason"] == "APPROVED"
    coid = client_order_id_for(signal_id("BTCUSDT", event_ids[-1]), "BTCUSDT")
    assert list(upstreams.orders) == [coid] == [decision["client_order_id"]]
    order = upstreams.orders[coid]
    expected = size_order(Decimal(10_000), batch[-1].ask, 0.8, TradingBotSettings().to_domain())
    assert Decimal(order["quantity"]) == expected.quantity > 0
    assert order["side"] == "BUY" and order["order_type"] == "MARKET"
    assert order["approval"]["decision_id"] == "d1"
    assert upstreams.checks[0]["price"] == str(batch[-1].ask)

    # Every upstream call of the decision carried the tick's trace (the portfolio is not read
    # per decision: the bot sizes from its fill-fed book, see test_book.py).
    trace_id = decision["trace_id"]
    for what in ("predict", "check", "orders"):
        assert upstreams.traceparents[what][-1].split("-")[1] == trace_id, what

    def complete(spans: list[Any]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"process market.tick", "decide", "sizing", "risk_check", "submit_order"} <= names

    spans = [s for s in otlp.wait_for(complete) if s.trace_id == trace_id]
    by_name = {s.name: s for s in spans}
    consumer = by_name["process market.tick"]
    assert consumer.kind == CONSUMER
    assert consumer.resource["service.name"] == "trading-bot"
    assert by_name["decide"].parent_span_id == consumer.span_id
    for stage in ("sizing", "risk_check", "submit_order"):
        assert by_name[stage].parent_span_id == by_name["decide"].span_id
    submit = by_name["submit_order"].attributes
    assert submit["client_order_id"] == coid
    assert submit["symbol"] == "BTCUSDT" and submit["side"] == "BUY"
    assert submit["quantity"] == str(expected.quantity)
    assert submit["model_version"] == "stub-1"
    assert by_name["risk_check"].attributes["approved"] is True
    clients = [
        s for s in spans if s.kind == CLIENT and s.parent_span_id == by_name["submit_order"].span_id
    ]
    assert clients, "the POST /orders is a CLIENT span under submit_order"

    metrics = httpx.get(f"{bot.url}/metrics").text
    assert 'bot_decisions_total{outcome="ORDERED",reason="APPROVED"}' in metrics
    assert "bot_tick_to_order_seconds_count" in metrics


def named(spans: list[Any], name: str, symbol: str) -> list[Any]:
    """The spans called `name` of decisions on `symbol`, oldest first."""
    found = [s for s in spans if s.name == name and s.attributes.get("symbol") == symbol]
    return sorted(found, key=lambda s: s.start_ns)


def decide_spans(spans: list[Any], symbols: set[str]) -> dict[str, Any]:
    """The latest `decide` span of each of `symbols`."""
    return {
        s.attributes["symbol"]: s
        for s in spans
        if s.name == "decide" and s.attributes.get("symbol") in symbols
    }


async def test_every_skip_is_recorded_with_its_reason(
    bot: Bot, upstreams: Upstreams, otlp: OtlpReceiver
) -> None:
    upstreams.signals.update(
        AAAUSDT=("HOLD", 0.52),
        BBBUSDT=("BUY", 0.55),
        CCCUSDT=("SELL", 0.9),
        DDDUSDT=("BUY", 0.9),
    )
    upstreams.deny["DDDUSDT"] = "MAX_NOTIONAL"
    await publish(bot, [t for s in upstreams.signals for t in ticks(s, WINDOW)])

    expected = {
        "AAAUSDT": ("SKIPPED", "HOLD"),
        "BBBUSDT": ("SKIPPED", "LOW_CONFIDENCE"),
        "CCCUSDT": ("SKIPPED", "NO_POSITION"),
        "DDDUSDT": ("DENIED", "MAX_NOTIONAL"),
    }
    for symbol, (outcome, reason) in expected.items():
        (decision,) = wait_decisions(bot, symbol)
        assert (decision["outcome"], decision["reason"]) == (outcome, reason), symbol
        assert decision["model_version"] == "stub-1"
    assert upstreams.orders == {}
    assert [c["symbol"] for c in upstreams.checks] == ["DDDUSDT"]

    # The reason is a column of its own, and a filter.
    low = httpx.get(f"{bot.url}/decisions", params={"reason": "low_confidence"}).json()["data"]
    assert {d["reason"] for d in low} == {"LOW_CONFIDENCE"}
    assert "BBBUSDT" in {d["symbol"] for d in low}
    (denied,) = httpx.get(
        f"{bot.url}/decisions", params={"reason": "MAX_NOTIONAL", "symbol": "DDDUSDT"}
    ).json()["data"]
    assert (denied["outcome"], denied["detail"]) == ("DENIED", "stub")
    assert httpx.get(f"{bot.url}/decisions", params={"reason": "NOPE"}).json()["count"] == 0

    # Each decision is a `decide` span carrying the same outcome, reason and inputs, so a trace
    # viewer answers "why did the bot not trade" from the spans alone.
    wanted = set(expected)
    spans = otlp.wait_for(lambda got: set(decide_spans(got, wanted)) == wanted)
    for symbol, span in decide_spans(spans, wanted).items():
        a = span.attributes
        assert (a["outcome"], a["reason"]) == expected[symbol], symbol
        assert a["model_version"] == "stub-1"
        assert a["direction"] == upstreams.signals[symbol][0]
        assert a["confidence"] == upstreams.signals[symbol][1]
    assert decide_spans(spans, {"DDDUSDT"})["DDDUSDT"].attributes["detail"] == "stub"


async def test_stale_ticks_are_recorded_as_skipped_decisions(
    bot: Bot, upstreams: Upstreams, otlp: OtlpReceiver
) -> None:
    upstreams.signals["OLDUSDT"] = ("BUY", 0.9)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    backlog = [
        Event(id=uuid.uuid4().hex, type="market.tick", source="test-feed", time=an_hour_ago, data=t)
        for t in ticks("OLDUSDT", WINDOW + 20)
    ]
    await publish(bot, backlog)
    poll(
        lambda: (
            httpx.get(f"{bot.url}/status").json()["symbols"].get("OLDUSDT", {}).get("prices")
            == WINDOW + 20
        ),
        10,
        "the backlog to be consumed",
    )

    # Throttled like any decision: the backlog of 21 due ticks gives one row, not 21.
    (stale,) = decisions(bot, "OLDUSDT")
    assert (stale["outcome"], stale["reason"]) == ("SKIPPED", "STALE_TICK")
    assert "ms old (BOT_MAX_TICK_AGE_MS=10000)" in stale["detail"]
    assert stale["model_version"] == "" and stale["client_order_id"] is None
    assert stale["trace_id"]
    by_reason = httpx.get(f"{bot.url}/decisions", params={"reason": "STALE_TICK"}).json()
    assert stale["id"] in {d["id"] for d in by_reason["data"]}
    assert "predict" not in upstreams.traceparents, "a stale tick never asks for a signal"
    assert upstreams.orders == {}
    metrics = httpx.get(f"{bot.url}/metrics").text
    assert 'bot_decisions_total{outcome="SKIPPED",reason="STALE_TICK"} 1.0' in metrics
    # The skip is a `decide` span too, in the stale tick's trace.
    spans = otlp.wait_for(lambda got: "OLDUSDT" in decide_spans(got, {"OLDUSDT"}))
    span = decide_spans(spans, {"OLDUSDT"})["OLDUSDT"]
    assert (span.attributes["outcome"], span.attributes["reason"]) == ("SKIPPED", "STALE_TICK")
    assert span.attributes["detail"] == stale["detail"] and span.trace_id == stale["trace_id"]


async def test_a_retried_tick_never_submits_twice(
    bot: Bot, upstreams: Upstreams, otlp: OtlpReceiver
) -> None:
    upstreams.signals["RTYUSDT"] = ("BUY", 0.9)
    upstreams.lose_next_order_replies = 1
    batch = ticks("RTYUSDT", WINDOW)
    event_ids = await publish(bot, batch)

    (decision,) = wait_decisions(bot, "RTYUSDT")
    assert decision["outcome"] == "ORDERED"
    # The lost reply made the bus deliver the tick again; the retry sent the same id.
    coids = [p["client_order_id"] for p in upstreams.order_posts]
    assert len(coids) == 2 and len(set(coids)) == 1 and len(upstreams.orders) == 1

    # The first delivery's decision ended in the unknown outcome: its business spans say so,
    # with the exception, the retry's do not.
    def both(spans: list[Any]) -> bool:
        return len(named(spans, "decide", "RTYUSDT")) == 2

    spans = otlp.wait_for(both)
    failed, retried = sorted(named(spans, "decide", "RTYUSDT"), key=lambda s: s.start_ns)
    for span in (failed, *named(spans, "submit_order", "RTYUSDT")[:1]):
        assert span.status_code == 2, span.name
        assert [name for name, _attributes in span.events] == ["exception"], span.name
        assert span.attributes["error.type"] == "UpstreamError", span.name
    assert retried.status_code != 2 and retried.attributes["outcome"] == "ORDERED"

    # The same tick published again (same event id) is dropped by the consumer group.
    last = Event(
        id=event_ids[-1],
        type="market.tick",
        source="test-feed",
        time=datetime.now(UTC),
        data=batch[-1],
    )
    await publish(bot, [last, *ticks("MRKUSDT", 1)])
    poll(lambda: "MRKUSDT" in httpx.get(f"{bot.url}/status").json()["symbols"], 10, "marker tick")
    assert len(upstreams.order_posts) == 2
    assert len(decisions(bot, "RTYUSDT")) == 1


async def test_paused_entries_still_allow_exits_and_stop_stops_deciding(
    bot: Bot, upstreams: Upstreams
) -> None:
    status = http.post(f"{bot.url}/pause-entries").json()
    assert status["running"] is True and status["entries_paused"] is True
    upstreams.signals.update(ENTUSDT=("BUY", 0.9), EXTUSDT=("SELL", 0.9))
    # The position the exit sells comes from a fill on the bus, as in the system.
    await publish(bot, [bought("EXTUSDT", Decimal("0.5"), sequence=1)])
    wait_book_sequence(bot, 1)
    await publish(bot, ticks("ENTUSDT", WINDOW) + ticks("EXTUSDT", WINDOW))

    (entry,) = wait_decisions(bot, "ENTUSDT")
    assert (entry["outcome"], entry["reason"]) == ("SKIPPED", "ENTRIES_PAUSED")
    (exit_,) = wait_decisions(bot, "EXTUSDT")
    assert exit_["outcome"] == "ORDERED" and exit_["side"] == "SELL"
    (order,) = upstreams.orders.values()
    assert order["reduce_only"] is True and Decimal(order["quantity"]) <= Decimal("0.5")

    assert http.post(f"{bot.url}/stop").json()["running"] is False
    await publish(bot, ticks("STPUSDT", WINDOW + 5))
    poll(
        lambda: httpx.get(f"{bot.url}/status").json()["symbols"]["STPUSDT"]["prices"] == WINDOW + 5,
        10,
        "ticks after stop",
    )
    assert decisions(bot, "STPUSDT") == []
    restarted = http.post(f"{bot.url}/start").json()
    assert restarted["running"] is True and restarted["entries_paused"] is False
