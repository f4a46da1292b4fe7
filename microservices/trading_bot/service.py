"""trading-bot assembly: the strategy loop, its tick subscription and its routes."""

from __future__ import annotations

from backend.infra.service import Service
from backend.trading.events import MarketTick, OrderFilled

from .api import router
from .settings import TradingBotSettings
from .strategy import TradingBot

NAME = "trading-bot"


def create_service(settings: TradingBotSettings | None = None) -> Service:
    """The trading-bot HTTP service (port 8006), consuming ticks in its own consumer group."""
    # Only ticks from now on: a backlog of old ticks is no reason to trade.
    service = Service(NAME, database=True, eventbus=True, consume_from="latest")
    bot = service.provide(
        TradingBot(
            settings or TradingBotSettings(), service.resources, service.logger, service.tracer
        )
    )
    # Neither needs processed marks, so no Redis look-up stands between a read and a
    # decision: a tick is known by its id (`TradingBot.on_tick`), a fill by its sequence.
    service.subscribe(MarketTick, bot.on_tick, deduplicate=False)
    service.subscribe(OrderFilled, bot.on_fill, deduplicate=False)
    service.background("book-check", bot.check_book_loop)
    service.on_shutdown(bot.close)
    if bot.policy.enabled:
        service.background("champion-policy", bot.policy.refresh_loop)
    service.app.include_router(router)
    return service
