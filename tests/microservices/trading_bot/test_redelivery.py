"""A tick delivered again after its first delivery ordered: one decision, one order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from backend.infra.db import DatabaseSettings, create_engine, create_session_factory, migrate
from backend.infra.db.models import BotDecision
from backend.infra.eventbus import Event
from backend.infra.observability import get_logger, get_tracer
from backend.infra.service import Resources, ServiceSettings
from backend.trading.features import WINDOW
from microservices.trading_bot.settings import TradingBotSettings
from microservices.trading_bot.strategy import TradingBot
from tests.acceptance.harness import StubServer

from .conftest import Upstreams
from .test_strategy import ticks


@pytest.fixture
async def trading_bot(
    database_url: str,
    stub_server: tuple[Upstreams, StubServer],
    upstreams: Upstreams,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[TradingBot]:
    """The bot's strategy in this process: its own database, the stubbed upstreams."""
    for service in ("AI_ENGINE", "RISK_SAFETY", "EXECUTION", "PORTFOLIO_INTELLIGENCE"):
        monkeypatch.setenv(f"{service}_URL", stub_server[1].url)
    resources = Resources("trading-bot", ServiceSettings())
    engine = create_engine(DatabaseSettings(url=database_url))
    await migrate(engine)
    resources._engine, resources._sessions = engine, create_session_factory(engine)
    resources.http = httpx.AsyncClient()
    settings = TradingBotSettings(  # type: ignore[call-arg]
        BOT_DECISION_INTERVAL_MS=0,
        BOT_DECISION_HOLD_MS=0,
    )
    try:
        yield TradingBot(settings, resources, get_logger("test"), get_tracer("test"))
    finally:
        await resources.http.aclose()
        await engine.dispose()


async def test_a_tick_redelivered_after_it_ordered_is_not_a_second_decision(
    trading_bot: TradingBot, upstreams: Upstreams
) -> None:
    upstreams.signals["RDLUSDT"] = ("BUY", 0.9)
    events = [
        Event(
            id=f"tick-{i}",
            type="market.tick",
            source="test-feed",
            time=datetime.now(UTC),
            data=t,
            deliveries=1,
        )
        for i, t in enumerate(ticks("RDLUSDT", WINDOW))
    ]
    for event in events:
        await trading_bot.on_tick(event)
    assert len(upstreams.order_posts) == 1
    # The process died after recording the decision and before acknowledging the tick: the
    # bus delivers it again, to this process or to the next one.
    await trading_bot.on_tick(replace(events[-1], deliveries=2))

    assert len(upstreams.order_posts) == 1, "never ordered twice"
    async with trading_bot.resources.session() as session:
        rows = (
            await session.execute(
                sa.select(
                    BotDecision.action, BotDecision.reason, BotDecision.client_order_id
                ).where(BotDecision.symbol == "RDLUSDT")
            )
        ).all()
    coid = upstreams.order_posts[0]["client_order_id"]
    assert [tuple(r) for r in rows] == [("ORDERED", "APPROVED", coid)]
