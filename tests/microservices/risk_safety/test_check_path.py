"""The check's cost: decisions written one statement per table per batch, each caller with its
own decision's id, and the decision's event published after the answer is sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import event

from backend.trading.events import RiskDecision as RiskDecisionEvent
from microservices.risk_safety.guard import RiskGuard
from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, check, tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def test_a_decisions_event_is_published_after_its_answer_is_sent(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub, span_exporter: Any
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)
        for n in range(3):
            assert check(client, f"answered-{n}", quantity="0.5")["approved"]

        def sends() -> list[Any]:
            return [s for s in span_exporter.get_finished_spans() if s.name == "send risk.decision"]

        wait_until(lambda: len(sends()) == 3, what="the three decisions to be published")
        spans = span_exporter.get_finished_spans()
    answers = {
        s.context.trace_id: s
        for s in spans
        if s.name.startswith("POST /check") and s.kind.name == "SERVER"
    }
    assert len(answers) == 3
    for send in sends():
        # Not on the request's path: the relay starts once the answer went out.
        assert send.start_time >= answers[send.context.trace_id].end_time


def test_concurrent_decisions_take_one_insert_per_table_and_each_caller_its_own_id(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)
        resources = client.app.state.resources  # type: ignore[attr-defined]
        store = resources.provided(RiskGuard).store
        inserts: list[str] = []

        def executed(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
            if sql.startswith("INSERT"):
                inserts.append(sql.split()[2])

        async def decide(n: int) -> str:
            approved = n % 3 != 0
            return await store.record_decision(
                client_order_id=f"batch-{n}",
                symbol="BTCUSDT",
                side="BUY",
                quantity=Decimal(n + 1),
                approved=approved,
                reason={"code": "APPROVED" if approved else "MAX_POSITION"},
                trace_id=None,
                decided_at=datetime.now(UTC),
                announce=RiskDecisionEvent(
                    client_order_id=f"batch-{n}",
                    symbol="BTCUSDT",
                    approved=approved,
                    reason_code="APPROVED" if approved else "MAX_POSITION",
                    detail="",
                ),
            )

        async def burst() -> list[str]:
            # The first write commits alone; the nine queued behind it share the next batch.
            return list(await asyncio.gather(*(decide(n) for n in range(10))))

        engine = resources.engine.sync_engine
        event.listen(engine, "before_cursor_execute", executed)
        try:
            ids = client.portal.call(burst)  # type: ignore[attr-defined]
        finally:
            event.remove(engine, "before_cursor_execute", executed)
        decisions = client.get("/decisions", params={"limit": 1000}).json()["data"]
    owner = {d["decision_id"]: (d["client_order_id"], d["quantity"]) for d in decisions}
    assert [owner[i] for i in ids] == [(f"batch-{n}", f"{n + 1}") for n in range(10)]
    # One INSERT per table per batch: ten decisions in two batches (1 and 9).
    assert sorted(inserts) == [
        "outbox_events",
        "outbox_events",
        "risk_decisions",
        "risk_decisions",
    ], inserts


def test_the_check_span_keeps_its_attributes_and_records_a_failed_check(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    span_exporter: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)
        assert check(client, "span-ok", quantity="0.5")["approved"]
        guard = client.app.state.resources.provided(RiskGuard)  # type: ignore[attr-defined]

        async def refuse(**_: Any) -> str:
            raise RuntimeError("the decision could not be written")

        monkeypatch.setattr(guard.store, "record_decision", refuse)
        with pytest.raises(RuntimeError):
            check(client, "span-failed", quantity="0.5")
    spans = {
        s.attributes["client_order_id"]: s
        for s in span_exporter.get_finished_spans()
        if s.name == "risk.check"
    }
    ok, failed = spans["span-ok"], spans["span-failed"]
    servers = {s.context.span_id: s for s in span_exporter.get_finished_spans()}
    assert ok.parent is not None and servers[ok.parent.span_id].name == "POST /check"
    assert ok.kind is SpanKind.INTERNAL
    assert {k: ok.attributes[k] for k in ("symbol", "side", "quantity", "reduce_only")} == {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "quantity": "0.5",
        "reduce_only": False,
    }
    assert (ok.attributes["approved"], ok.attributes["reason"]) == (True, "APPROVED")
    assert ok.status.status_code is StatusCode.UNSET
    # A lean span now: an escaping error is recorded as on every lean span, `error.type` too.
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "RuntimeError"
    assert [e.name for e in failed.events] == ["exception"]
