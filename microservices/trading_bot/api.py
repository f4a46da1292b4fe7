"""trading-bot's HTTP API: start, stop and pause entries; the run status and the decisions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from backend.infra.db.models import BotDecision
from backend.infra.service import provided
from microservices.contracts.trading_bot import (
    BotStatus,
    DecisionPublic,
    DecisionsPublic,
    SymbolStatus,
)

from .strategy import TradingBot

router = APIRouter()


Bot = Annotated[TradingBot, Depends(provided(TradingBot))]


def _status(bot: TradingBot) -> BotStatus:
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
        decision_interval_ms=bot.settings.decision_interval_ms,
        min_confidence=bot.settings.min_confidence,
    )


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


@router.post("/start", response_model=BotStatus)
async def start(bot: Bot) -> BotStatus:
    """Trade: decide on ticks, entries and exits."""
    bot.start()
    return _status(bot)


@router.post("/stop", response_model=BotStatus)
async def stop(bot: Bot) -> BotStatus:
    """Stop deciding (windows keep filling, so a restart trades at once)."""
    bot.stop()
    return _status(bot)


@router.post("/pause-entries", response_model=BotStatus)
async def pause_entries(bot: Bot) -> BotStatus:
    """No new entries (BUY); exits (SELL of a held position) still go through."""
    bot.pause_entries()
    return _status(bot)


@router.get("/status", response_model=BotStatus)
async def get_status(bot: Bot) -> BotStatus:
    return _status(bot)


@router.get("/decisions", response_model=DecisionsPublic)
async def decisions(
    bot: Bot,
    symbol: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DecisionsPublic:
    """The most recent decisions first, skips included, each with its reason; filtered by
    symbol, outcome (`SKIPPED`…) and reason (`STALE_TICK`, `LOW_CONFIDENCE`…)."""
    rows = await bot.store.recent(
        symbol=symbol.upper() if symbol else None,
        outcome=outcome.upper() if outcome else None,
        reason=reason.upper() if reason else None,
        limit=limit,
    )
    return DecisionsPublic(data=[_public(r) for r in rows], count=len(rows))
