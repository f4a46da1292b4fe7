"""What the bot sends on a tick's way to an order: the model is asked with the prices it reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from backend.infra.eventbus import Event, EventBusSettings, Idempotency, create_redis_client
from backend.trading.features import WINDOW
from tests.acceptance.harness import StubServer, http, poll
from tests.support.otlp import OtlpReceiver

from .conftest import Bot, Upstreams, bot_process, stub_app
from .test_strategy import bought, publish, ticks, wait_book_sequence, wait_decisions


@pytest.fixture(scope="module")
def predict_bodies() -> list[dict[str, Any]]:
    return []


@pytest.fixture(scope="module")
def stub_server(predict_bodies: list[dict[str, Any]]) -> Iterator[tuple[Upstreams, StubServer]]:
    """The usual stubs, with every `POST /predict` body kept."""
    state = Upstreams()
    stubs = stub_app(state)
    app = FastAPI()

    @app.middleware("http")
    async def keep_predict_bodies(request: Request, call_next: Any) -> Any:
        if request.url.path == "/predict":
            predict_bodies.append(await request.json())
        return await call_next(request)

    app.mount("/", stubs)
    with StubServer(app) as server:
        yield state, server


@pytest.fixture(scope="module")
def bot(
    redis_url: str,
    otlp: OtlpReceiver,
    stub_server: tuple[Upstreams, StubServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Bot]:
    with bot_process(redis_url, otlp, stub_server[1].url, tmp_path_factory) as running:
        yield running


async def test_the_model_is_sent_the_last_window_of_prices_only(
    bot: Bot, upstreams: Upstreams, predict_bodies: list[dict[str, Any]]
) -> None:
    # The bot keeps BOT_WINDOW (64) prices for its sizing policy; stopped, it only fills
    # the window, so its first decision after the start has all of them.
    assert http.post(f"{bot.url}/stop").json()["running"] is False
    batch = ticks("TPAUSDT", 3 * WINDOW + 1)
    await publish(bot, batch[:-1])
    poll(
        lambda: httpx.get(f"{bot.url}/status").json()["symbols"]["TPAUSDT"]["prices"] == 3 * WINDOW,
        10,
        "the window filled",
    )
    assert http.post(f"{bot.url}/start").json()["running"] is True
    await publish(bot, batch[-1:])
    (decision,) = wait_decisions(bot, "TPAUSDT")
    assert decision["reason"] == "HOLD"
    (body,) = [b for b in predict_bodies if b["symbol"] == "TPAUSDT"]
    assert [Decimal(p) for p in body["prices"]] == [t.last for t in batch[-WINDOW:]]


async def test_a_tick_published_twice_enters_the_window_once(bot: Bot) -> None:
    """The bot reads ticks without processed marks (no Redis look-up before deciding): a copy
    of a tick under a new stream entry, as a feed's retried publication leaves, is known by
    its event id and neither fills the window twice nor makes a decision of its own."""
    assert http.post(f"{bot.url}/stop").json()["running"] is False
    first, second, third = ticks("TPCUSDT", 3)
    ids = await publish(bot, [first, second])
    copy = Event(
        id=ids[0],
        type="market.tick",
        source="test-feed",
        time=datetime.now(UTC),
        data=first,
    )
    last = third.model_copy(update={"last": Decimal("777")})
    await publish(bot, [copy, last])

    def state() -> dict[str, Any]:
        return httpx.get(f"{bot.url}/status").json()["symbols"].get("TPCUSDT", {})

    poll(lambda: Decimal(state().get("last_price") or 0) == 777, 10, "the last tick")
    assert state()["prices"] == 3


async def test_fills_reach_the_book_without_a_look_up_of_processed_marks(bot: Bot) -> None:
    """The book applies a fill once by its sequence, so the bot's consumer keeps no processed
    marks for fills: a fill whose id is marked (as the consumer would have left it) still
    reaches the book (which counts a copy once: `test_fill_book`)."""
    wait_book_sequence(bot, 0)
    fill = Event(
        id="tpf-fill-1",
        type="order.filled",
        source="execution",
        time=datetime.now(UTC),
        data=bought("TPFUSDT", Decimal("0.5"), sequence=1),
    )
    client = create_redis_client(bot.redis)
    try:
        await Idempotency(client, "trading-bot", EventBusSettings(prefix=bot.prefix)).mark_many(
            [fill.id]
        )
    finally:
        await client.aclose()
    await publish(bot, [fill, fill])
    wait_book_sequence(bot, 1)
