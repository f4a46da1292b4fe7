"""Submissions that wait for the desk are decided in arrival order and committed together."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from microservices.execution.desk import OrderDesk
from tests.microservices.execution.conftest import running
from tests.microservices.execution.test_execution import order, send_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def test_orders_queued_behind_the_desk_share_one_commit_and_each_get_their_answer(
    harness: ServiceHarness, span_exporter: Any
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        desk: OrderDesk = client.app.state.resources.provided(OrderDesk)  # type: ignore[attr-defined]
        portal = client.portal
        assert portal is not None
        held = threading.Event()
        release = asyncio.Event()

        async def hold_the_desk() -> None:
            async with desk._lock:
                held.set()
                await release.wait()

        holder = portal.start_task_soon(hold_the_desk)
        assert held.wait(10)
        bodies = [order(f"gc-{i}", quantity="0.1") for i in range(8)]
        bodies.append(order("gc-3", quantity="0.1"))  # the same order again: a retry
        bodies.append(order("gc-5", quantity="0.2"))  # the same id, another order: a conflict
        answers: dict[int, httpx.Response] = {}

        def send(i: int) -> None:
            answers[i] = client.post("/orders", json=bodies[i])

        # One at a time into the queue, so the arrival order is known.
        threads = []
        for i in range(len(bodies)):
            threads.append(threading.Thread(target=send, args=(i,)))
            threads[-1].start()
            wait_until(lambda i=i: len(desk._asks) == i + 1, what=f"submission {i} to queue")
        portal.call(release.set)
        for t in threads:
            t.join(30)
        holder.result(10)

        codes = [answers[i].status_code for i in range(len(bodies))]
        assert codes == [201] * 8 + [200, 409], [a.text for a in answers.values()]
        assert answers[8].json() == answers[3].json()
        assert answers[9].json()["detail"]["fields"] == ["quantity"]
        spans = span_exporter.get_finished_spans()
        persists = [s for s in spans if s.name == "order.persist"]
        assert [s.attributes["order.batch_size"] for s in persists] == [8]
        # Eight orders, one INSERT per table (not one per row).
        writes = sorted(
            s.attributes.get("db.collection.name")
            for s in spans
            if s.parent is not None
            and s.parent.span_id == persists[0].context.span_id
            and s.attributes.get("db.operation.name") == "INSERT"
        )
        assert writes == ["fills", "order_events", "orders", "outbox_events"]
        sequences = sorted(f["sequence"] for i in range(8) for f in answers[i].json()["fills"])
        assert sequences == list(range(sequences[0], sequences[0] + 8))
        assert client.get("/orders", params={"limit": 100}).json()["count"] == 8
        filled = wait_until(
            lambda: len(f := harness.published("order.filled")) == 8 and f,
            what="eight order.filled events",
        )
        assert sorted(e["sequence"] for e in filled) == sequences
