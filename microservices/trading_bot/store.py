"""trading-bot persistence: the decision history (`bot_decisions`), one row per decision."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert, select

from backend.infra.db import execute
from backend.infra.db.models import BotDecision
from backend.infra.service import Resources

_INSERT = insert(cast(Table, BotDecision.__table__))


class DecisionStore:
    """Reads and writes `bot_decisions` through the service's unit of work."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def outcome_of(self, client_order_id: str) -> str | None:
        """What the decision that chose this client order id ended in; None if none did."""
        async with self._resources.session() as session:
            row = await session.execute(
                select(BotDecision.action).where(BotDecision.client_order_id == client_order_id)
            )
            action: str | None = row.scalar_one_or_none()
            return action

    async def add(self, values: dict[str, Any]) -> None:
        """Record a decision (`bot_decisions` column values); `IntegrityViolationError` if its
        client order id is recorded.

        One Core `INSERT`: the row is never read back, so the ORM's unit of work (an
        identity map, a flush plan, attribute events) would be paid for nothing."""
        async with self._resources.session() as session:
            await execute(session, _INSERT, values)

    async def recent(
        self, *, symbol: str | None, outcome: str | None, reason: str | None, limit: int
    ) -> list[BotDecision]:
        """The most recent decisions first, filtered by whichever of the three are given."""
        query = select(BotDecision).order_by(BotDecision.id.desc()).limit(limit)
        if symbol:
            query = query.where(BotDecision.symbol == symbol)
        if outcome:
            query = query.where(BotDecision.action == outcome)
        if reason:
            query = query.where(BotDecision.reason == reason)
        async with self._resources.session() as session:
            return list((await session.execute(query)).scalars())
