"""trading-bot assembly: the tick handler, start/stop/pause-entries, status and decisions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query
from sqlalchemy import select

from backend.infra.db.models import BotDecision
from backend.infra.eventbus import MarketTick
from backend.infra.service import Resources, Service, resources_of

from .api import BotStatus, DecisionPublic, DecisionsPublic, SymbolStatus
from .settings import BotSettings
from .strategy import TradingBot

NAME = "trading-bot"

Res = Annotated[Resources, Depends(resources_of)]


def _public(row: BotDecision) -> DecisionPublic:
    info: dict[str, Any] = row.features or {}
    quantity = info.get("quantity")
    return DecisionPublic(
        id=row.id,
        decided_at=row.decided_at,
        symbol=row.symbol,
        outcome=row.action,
        reason=row.reason,
        detail=row.detail,
        direction=info.get("direction"),
        side=info.get("side"),
        quantity=quantity,
        confidence=row.confidence,
        model_version=row.model_version,
        signal_id=info.get("signal_id"),
        client_order_id=row.client_order_id,
        trace_id=row.trace_id,
    )


def create_service(settings: BotSettings | None = None) -> Service:
    """The trading-bot HTTP service (port 8006), consuming ticks in its own consumer group."""
    settings = settings or BotSettings()
    # Only ticks from now on: a backlog of old ticks is no reason to trade.
    service = Service(NAME, database=True, eventbus=True, consume_from="latest")
    bot = TradingBot(settings, service.resources)
    service.subscribe(MarketTick, bot.on_tick)
    app = service.app

    def status() -> BotStatus:
        return BotStatus(
            running=bot.running,
            entries_paused=bot.entries_paused,
            symbols={
                symbol: SymbolStatus(
                    prices=len(state.prices),
                    last_price=state.prices[-1] if state.prices else None,
                    last_tick_ms=state.last_tick_ms,
                )
                for symbol, state in sorted(bot.symbols.items())
            },
            decision_interval_ms=settings.decision_interval_ms,
            min_confidence=settings.min_confidence,
        )

    @app.post("/start", response_model=BotStatus)
    async def start() -> BotStatus:
        """Trade: decide on ticks, entries and exits."""
        bot.start()
        service.logger.info("bot started")
        return status()

    @app.post("/stop", response_model=BotStatus)
    async def stop() -> BotStatus:
        """Stop deciding (windows keep filling, so a restart trades at once)."""
        bot.stop()
        service.logger.info("bot stopped")
        return status()

    @app.post("/pause-entries", response_model=BotStatus)
    async def pause_entries() -> BotStatus:
        """No new entries (BUY); exits (SELL of a held position) still go through."""
        bot.pause_entries()
        service.logger.info("bot entries paused")
        return status()

    @app.get("/status", response_model=BotStatus)
    async def get_status() -> BotStatus:
        return status()

    @app.get("/decisions", response_model=DecisionsPublic)
    async def decisions(
        resources: Res,
        symbol: str | None = None,
        outcome: str | None = None,
        reason: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DecisionsPublic:
        """The most recent decisions first, skips included, each with its reason; filtered by
        symbol, outcome (`SKIPPED`…) and reason (`STALE_TICK`, `LOW_CONFIDENCE`…)."""
        query = select(BotDecision).order_by(BotDecision.id.desc()).limit(limit)
        if symbol:
            query = query.where(BotDecision.symbol == symbol.upper())
        if outcome:
            query = query.where(BotDecision.action == outcome.upper())
        if reason:
            query = query.where(BotDecision.reason == reason.upper())
        async with resources.session() as session:
            rows = list((await session.execute(query)).scalars())
        return DecisionsPublic(data=[_public(r) for r in rows], count=len(rows))

    return service
