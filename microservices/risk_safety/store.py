"""risk-safety persistence: every decision, the trading state and its audit trail."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.infra.db import GroupWrite, execute
from backend.infra.db.models import RiskDecision as DecisionRow
from backend.infra.db.models import TradingState as StateRow
from backend.infra.db.models import TradingStateChange
from backend.infra.eventbus import Event, EventData
from backend.infra.outbox import Outbox
from backend.infra.service import Resources

SCOPE = "global"
_DECISIONS = cast(Table, DecisionRow.__table__)
_INSERT_DECISIONS = insert(_DECISIONS).returning(_DECISIONS.c.id, _DECISIONS.c.client_order_id)
"""Every decision of a batch in one statement (the ORM inserts one row per statement, to read
each generated key back); built once."""


class RiskStore:
    """Reads and writes the risk tables through the service's unit of work.

    Each write commits the event announcing it in the same transaction (the outbox), so a
    decision or a state change is never announced without being stored, nor stored and lost
    to the bus because Redis was down.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._outbox: Outbox | None = None
        self._commits: GroupWrite[tuple[dict[str, Any], Event[Any]], str] | None = None

    @property
    def commits(self) -> GroupWrite[tuple[dict[str, Any], Event[Any]], str]:
        """The decisions' group commit (created with the database, at start-up)."""
        if self._commits is None:
            self._commits = GroupWrite(self._resources.sessions, self._write_decisions)
        return self._commits

    @property
    def outbox(self) -> Outbox:
        """Where risk's events wait for publication (created with the database, at start-up)."""
        if self._outbox is None:
            r = self._resources
            self._outbox = Outbox(r.sessions, r.publisher, source=r.name)
        return self._outbox

    async def record_decision(
        self,
        *,
        client_order_id: str,
        symbol: str,
        side: str,
        quantity: Any,
        approved: bool,
        reason: dict[str, Any],
        trace_id: str | None,
        decided_at: datetime,
        announce: EventData,
    ) -> str:
        """Persist one decision and, in the same transaction, the event `announce`; its id.

        Concurrent decisions share a transaction (group commit): one commit for a burst."""
        row = {
            "client_order_id": client_order_id,
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "approved": approved,
            "reasons": [reason],
            "trace_id": trace_id,
            "decided_at": decided_at,
        }
        # The event takes the caller's trace context now: the batch is written in the context
        # of whichever caller commits it.
        return await self.commits.write((row, self.outbox.event(announce)))

    async def _write_decisions(
        self, session: AsyncSession, batch: list[tuple[dict[str, Any], Event[Any]]]
    ) -> list[str]:
        """A batch's decisions with one INSERT and their events with one more; their ids."""
        rows = [row for row, _ in batch]
        written = sorted((await execute(session, _INSERT_DECISIONS, rows)).all())
        # A statement's rows take their ids in the order of its VALUES; each caller's own
        # client order id is checked against the row it is given. A mismatch (never seen)
        # fails the batch, which the group commit then writes one decision at a time.
        if [cid for _, cid in written] != [row["client_order_id"] for row in rows]:
            raise RuntimeError("decision ids returned out of the order of their rows")
        await self.outbox.add_many(session, [event for _, event in batch])
        return [str(row_id) for row_id, _ in written]

    async def decisions(self, *, limit: int, approved: bool | None) -> list[DecisionRow]:
        """Newest decisions first."""
        async with self._resources.session() as session:
            query = select(DecisionRow).order_by(DecisionRow.id.desc()).limit(limit)
            if approved is not None:
                query = query.where(DecisionRow.approved == approved)
            return list(await session.scalars(query))

    async def approvals_since(self, since: datetime) -> list[datetime]:
        """When the approvals of the current order-rate window were given."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(DecisionRow.decided_at).where(
                    DecisionRow.approved.is_(True), DecisionRow.decided_at > since
                )
            )
            return list(rows)

    async def approved_since(self, since: datetime) -> list[DecisionRow]:
        """Approved decisions made after `since`, oldest first (to rebuild the approval ledger)."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(DecisionRow)
                .where(DecisionRow.approved.is_(True), DecisionRow.decided_at > since)
                .order_by(DecisionRow.id)
            )
            return list(rows)

    async def epoch(self) -> int:
        """The trading-state epoch: one per recorded state change, so it never goes back."""
        async with self._resources.session() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(TradingStateChange)
                .where(TradingStateChange.scope == SCOPE)
            )
            return int(count or 0)

    async def state(self) -> StateRow | None:
        async with self._resources.session() as session:
            row: StateRow | None = await session.get(StateRow, SCOPE)
            return row

    async def change_state(
        self,
        *,
        from_mode: str,
        to_mode: str,
        reason: str,
        actor: str,
        trace_id: str | None,
        announce: EventData,
        at: datetime | None = None,
    ) -> StateRow:
        """Move the trading state, append the audit record and the event, in one transaction;
        `at`: when the change took effect (now if not given)."""
        now = at or datetime.now(UTC)
        async with self._resources.session() as session:
            row: StateRow | None = await session.get(StateRow, SCOPE)
            if row is None:
                row = StateRow(scope=SCOPE)
                session.add(row)
            row.mode = to_mode
            row.reason = reason
            row.updated_at = now
            session.add(
                TradingStateChange(
                    scope=SCOPE,
                    from_mode=from_mode,
                    to_mode=to_mode,
                    reason=reason,
                    actor=actor,
                    trace_id=trace_id,
                    changed_at=now,
                )
            )
            self.outbox.add(session, announce)
            return row

    async def changes(self, *, limit: int) -> list[TradingStateChange]:
        """The audit trail, newest first."""
        async with self._resources.session() as session:
            rows = await session.scalars(
                select(TradingStateChange).order_by(TradingStateChange.id.desc()).limit(limit)
            )
            return list(rows)
