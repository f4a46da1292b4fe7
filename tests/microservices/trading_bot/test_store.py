"""The decision history's writes: one row per decision, and a second one for the same order
refused with the database's own error."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend.infra.db import (
    IntegrityViolationError,
    create_engine,
    create_session_factory,
    load_database_settings,
)
from backend.infra.db.models import Base, BotDecision
from backend.infra.service import Resources, ServiceSettings
from microservices.trading_bot.store import DecisionStore


def decision(client_order_id: str | None, action: str = "ORDERED") -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT",
        "action": action,
        "reason": "APPROVED",
        "detail": "",
        "confidence": Decimal("0.9"),
        "model_name": "ai-engine",
        "model_version": "v1",
        "client_order_id": client_order_id,
        "features": {"side": "BUY", "features": {"ret_1": 0.001}},
        "trace_id": "ab" * 16,
    }


async def test_a_second_row_for_a_recorded_order_is_refused_and_the_first_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    engine = create_engine(load_database_settings("trading-bot"))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        resources = Resources("trading-bot", ServiceSettings())
        resources._engine = engine
        resources._sessions = create_session_factory(engine)
        store = DecisionStore(resources)
        await store.add(decision("bot-1"))
        await store.add(decision(None, action="SKIPPED"))
        with pytest.raises(IntegrityViolationError):
            await store.add(decision("bot-1", action="ERROR"))
        assert await store.outcome_of("bot-1") == "ORDERED"
        async with resources.session() as session:
            rows = (await session.execute(select(BotDecision))).scalars().all()
        assert [(r.action, r.client_order_id) for r in rows] == [
            ("ORDERED", "bot-1"),
            ("SKIPPED", None),
        ]
        assert all(r.decided_at is not None for r in rows)
        assert rows[0].features == decision("bot-1")["features"]
    finally:
        await engine.dispose()
