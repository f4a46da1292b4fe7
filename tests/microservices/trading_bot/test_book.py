"""trading-bot sizes from its fill-fed book, and from the portfolio whenever the book is unknown."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from backend.trading.features import WINDOW
from backend.trading.sizing import size_order
from microservices.trading_bot.settings import TradingBotSettings
from tests.acceptance.harness import StubServer, poll
from tests.support.otlp import OtlpReceiver

from .conftest import Bot, Upstreams, bot_process
from .test_strategy import bought, publish, ticks, wait_book_sequence, wait_decisions


@pytest.fixture(scope="module")
def bot(
    redis_url: str,
    otlp: OtlpReceiver,
    stub_server: tuple[Upstreams, StubServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Bot]:
    """A bot that checks its book against the portfolio once, at start."""
    with bot_process(
        redis_url, otlp, stub_server[1].url, tmp_path_factory, BOT_BOOK_CHECK_S="3600"
    ) as running:
        yield running


def sizing_span(otlp: OtlpReceiver, trace_id: str) -> Any:
    spans = otlp.wait_for(
        lambda got: any(s.name == "sizing" and s.trace_id == trace_id for s in got)
    )
    return next(s for s in spans if s.name == "sizing" and s.trace_id == trace_id)


async def test_an_exit_is_sized_from_the_fills_on_the_bus_without_asking_the_portfolio(
    bot: Bot, upstreams: Upstreams, otlp: OtlpReceiver
) -> None:
    # The portfolio (as last read, at start) holds nothing; two fills on the bus since then
    # bought 0.75 and sold 0.25.
    wait_book_sequence(bot, 0)
    await publish(
        bot,
        [
            bought("BKAUSDT", Decimal("0.75"), sequence=1),
            bought("BKAUSDT", Decimal("0.25"), sequence=2, side="SELL"),
        ],
    )
    wait_book_sequence(bot, 2)
    upstreams.signals["BKAUSDT"] = ("SELL", 0.9)
    await publish(bot, ticks("BKAUSDT", WINDOW))

    (decision,) = wait_decisions(bot, "BKAUSDT")
    assert (decision["outcome"], decision["side"]) == ("ORDERED", "SELL")
    assert Decimal(decision["quantity"]) == Decimal("0.5")  # all of what the fills left
    # The bot's periodic check against the portfolio (every BOT_BOOK_CHECK_S) may run in
    # its own trace meanwhile; the decision itself never reads it.
    read_in = [t.split("-")[1] for t in upstreams.traceparents.get("portfolio", [])]
    assert decision["trace_id"] not in read_in, "not read on the decision's path"
    span = sizing_span(otlp, decision["trace_id"])
    assert span.attributes["sizing.book"] == "fills"


async def test_a_missing_fill_makes_the_bot_size_from_the_portfolio_read_then(
    bot: Bot, upstreams: Upstreams, otlp: OtlpReceiver
) -> None:
    wait_book_sequence(bot, 2)
    # Sequence 3 never reaches the bot: the book cannot know what it did.
    await publish(bot, [bought("BKBUSDT", Decimal(5), sequence=4)])
    poll(lambda: "bot_book_fills_missing 1.0" in httpx.get(f"{bot.url}/metrics").text, 15, "gap")
    upstreams.equity = Decimal(20_000)
    upstreams.booked_sequence = 4
    upstreams.signals["BKBUSDT"] = ("BUY", 0.8)
    batch = ticks("BKBUSDT", WINDOW)
    await publish(bot, batch)

    (decision,) = wait_decisions(bot, "BKBUSDT")
    assert decision["outcome"] == "ORDERED"
    # Sized from the portfolio's equity (20 000), read during this decision, in its trace.
    expected = size_order(Decimal(20_000), batch[-1].ask, 0.8, TradingBotSettings().to_domain())
    assert Decimal(decision["quantity"]) == expected.quantity
    trace_id = decision["trace_id"]
    assert [t.split("-")[1] for t in upstreams.traceparents["portfolio"]] == [trace_id]
    span = sizing_span(otlp, trace_id)
    assert span.attributes["sizing.book"] == "portfolio"
    assert span.attributes["sizing.book_unknown"] == "fill sequence 3 not seen (seen up to 4)"
    # The portfolio's books were complete: the book starts again from them.
    wait_book_sequence(bot, 4)
