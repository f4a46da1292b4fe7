"""The order path's cost: one transaction per submission, one statement per table, and a venue
that keeps only the orders that can still fill."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import event

from backend.infra.observability import current_traceparent
from microservices.execution.desk import OrderDesk
from tests.microservices.execution.conftest import running
from tests.microservices.execution.test_execution import order, send_tick, tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def _statements(spans: Any, trace_id: int) -> list[tuple[str, str]]:
    """(operation, table) of every SQL statement in one trace."""
    return sorted(
        (s.attributes["db.operation.name"], s.attributes.get("db.collection.name", ""))
        for s in spans
        if s.context.trace_id == trace_id and "db.operation.name" in (s.attributes or {})
    )


def test_a_new_order_is_one_transaction_of_one_read_and_one_insert_per_table(
    harness: ServiceHarness, span_exporter: Any
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        engine = client.app.state.resources.engine  # type: ignore[attr-defined]
        checkouts: Counter[str] = Counter()

        def checked_out(*_args: Any) -> None:
            traceparent = current_traceparent()
            if traceparent:
                checkouts[traceparent.split("-")[1]] += 1

        event.listen(engine.sync_engine, "checkout", checked_out)
        try:
            response = client.post("/orders", json=order("one-tx", quantity="0.5"))
        finally:
            event.remove(engine.sync_engine, "checkout", checked_out)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "FILLED"

    spans = span_exporter.get_finished_spans()
    submit = next(s for s in spans if s.name == "order.submit")
    trace_id = submit.context.trace_id
    # The lookup of the id and every write share one connection and one commit.
    assert checkouts[f"{trace_id:032x}"] == 1, checkouts
    assert _statements(spans, trace_id) == [
        ("INSERT", "fills"),
        ("INSERT", "order_events"),  # three transitions: created, accepted, filled
        ("INSERT", "orders"),
        ("INSERT", "outbox_events"),  # three events: submitted, accepted, filled
        ("SELECT", "orders"),
    ]


def test_closed_orders_leave_the_venue_and_a_retry_is_answered_from_the_database(
    harness: ServiceHarness,
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        desk: OrderDesk = client.app.state.resources.provided(OrderDesk)  # type: ignore[attr-defined]
        first = client.post("/orders", json=order("gone-1", quantity="0.5"))
        assert first.status_code == 201, first.text
        for cid in ("gone-2", "gone-3"):
            assert client.post("/orders", json=order(cid, quantity="0.5")).status_code == 201
        rests = order("rests", quantity="1", order_type="LIMIT", limit_price="99.00")
        assert client.post("/orders", json=rests).json()["status"] == "ACCEPTED"

        # Filled orders are not kept in memory: only the working one is.
        assert set(desk.venue._orders) == {"rests"}
        again = client.post("/orders", json=order("gone-1", quantity="0.5"))
        assert again.status_code == 200
        assert again.json() == first.json()
        conflict = client.post("/orders", json=order("gone-1", quantity="0.6"))
        assert conflict.status_code == 409

        harness.publish(tick(bid="98.50", ask="98.90"))
        wait_until(
            lambda: client.get("/orders/rests").json()["status"] == "FILLED",
            what="the resting order to fill",
        )
        wait_until(lambda: not desk.venue._orders, what="the filled order to leave the venue")
        assert len(client.get("/orders", params={"limit": 10}).json()["data"]) == 4


def test_an_orders_events_are_published_after_its_answer_is_sent(
    harness: ServiceHarness, span_exporter: Any
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        for n in range(3):
            response = client.post("/orders", json=order(f"answered-{n}", quantity="0.5"))
            assert response.status_code == 201, response.text

        def sends() -> list[Any]:
            names = ("send order.submitted", "send order.accepted", "send order.filled")
            return [s for s in span_exporter.get_finished_spans() if s.name in names]

        wait_until(lambda: len(sends()) == 9, what="the orders' nine events to be published")
        spans = span_exporter.get_finished_spans()
    answers = {
        s.context.trace_id: s
        for s in spans
        if s.name.startswith("POST /orders") and s.kind.name == "SERVER"
    }
    assert len(answers) == 3
    for send in sends():
        answer = answers[send.context.trace_id]
        # Not on the request's path: the relay starts once the answer went out.
        assert send.start_time >= answer.end_time, send.name


def test_a_new_orders_answer_is_byte_for_byte_the_one_read_back_later(
    harness: ServiceHarness,
) -> None:
    bodies = [
        order("bytes-filled", quantity="0.1237"),  # a fee of many digits
        order("bytes-rests", quantity="1.5", order_type="LIMIT", limit_price="99.05"),
        order("bytes-rejected", symbol="ETHUSDT"),  # no quote: rejected, with its reason
        order("bytes-whole", quantity="2"),
    ]
    with running(harness) as client:
        send_tick(harness, client)
        for body in bodies:
            placed = client.post("/orders", json=body)
            assert placed.status_code == 201, placed.text
            again = client.post("/orders", json=body)  # answered from the database
            assert again.status_code == 200, again.text
            assert again.content == placed.content
            assert again.headers["content-type"] == placed.headers["content-type"]
            read = client.get(f"/orders/{body['client_order_id']}")
            assert read.content == placed.content
        statuses = [client.get(f"/orders/{b['client_order_id']}").json()["status"] for b in bodies]
        assert statuses == ["FILLED", "ACCEPTED", "REJECTED", "FILLED"]


def test_an_orders_own_spans_carry_their_content_and_take_no_sdk_span(
    harness: ServiceHarness, span_exporter: Any, monkeypatch: Any
) -> None:
    from opentelemetry.sdk.trace import Tracer

    sdk_spans: list[str] = []
    real = Tracer.start_span

    def counted(self: Tracer, name: str, *args: Any, **kwargs: Any) -> Any:
        sdk_spans.append(name)
        return real(self, name, *args, **kwargs)

    with running(harness) as client:
        send_tick(harness, client)
        monkeypatch.setattr(Tracer, "start_span", counted)
        response = client.post("/orders", json=order("lean-1", quantity="0.5"))
        monkeypatch.undo()
        assert response.status_code == 201, response.text
    assert not {"order.submit", "order.fill", "order.persist"} & set(sdk_spans), sdk_spans
    spans = span_exporter.get_finished_spans()
    submit = next(s for s in spans if s.name == "order.submit")
    fill = next(s for s in spans if s.name == "order.fill")
    persist = next(s for s in spans if s.name == "order.persist")
    assert submit.attributes["client_order_id"] == "lean-1"
    assert submit.attributes["order.status"] == "FILLED"
    assert fill.parent.span_id == submit.context.span_id
    assert fill.attributes["leaves_quantity"] == "0.0" and fill.attributes["resting"] is False
    assert persist.attributes["order.batch_size"] == 1
    assert [link.context.span_id for link in persist.links] == [submit.context.span_id]
    assert persist.links[0].attributes["link.reason"] == "order"
