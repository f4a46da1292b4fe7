"""trading-bot's public contract: its run status and the decisions it recorded."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

SERVICE = "trading-bot"


class SymbolStatus(BaseModel):
    prices: int
    last_price: Decimal | None
    last_tick_ms: int


class BotStatus(BaseModel):
    running: bool
    entries_paused: bool
    symbols: dict[str, SymbolStatus]
    decision_interval_ms: int
    min_confidence: float


class DecisionPublic(BaseModel):
    id: int
    decided_at: datetime
    symbol: str
    outcome: str
    reason: str
    detail: str
    direction: str | None
    side: str | None
    quantity: Decimal | None
    confidence: Decimal
    model_version: str
    signal_id: str | None
    client_order_id: str | None
    trace_id: str | None


class DecisionsPublic(BaseModel):
    data: list[DecisionPublic]
    count: int
