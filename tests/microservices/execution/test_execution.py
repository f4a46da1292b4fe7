"""execution through its HTTP API and the bus: approvals, idempotency, fills, cancels, restart."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient

from backend.trading.approval import DEVELOPMENT_SECRET, sign_approval
from backend.trading.events import MarketTick
from backend.trading.types import (
    ClientOrderId,
    OrderRequest,
    OrderType,
    Side,
    Symbol,
    TimeInForce,
)
from tests.microservices.execution.conftest import running
from tests.support.factories import market_tick, now_ms
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


def tick(
    symbol: str = "BTCUSDT", bid: str = "100.00", ask: str = "100.10", volume: str = "50"
) -> MarketTick:
    return market_tick(bid, ask, symbol, volume)


def order(
    cid: str,
    *,
    side: str = "BUY",
    quantity: str = "1",
    order_type: str = "MARKET",
    limit_price: str | None = None,
    symbol: str = "BTCUSDT",
    time_in_force: str = "GTC",
    reduce_only: bool = False,
    expires_in_ms: int = 30_000,
    epoch: int = 0,
    approve: bool = True,
) -> dict[str, Any]:
    """An order body with an approval risk-safety would sign for exactly this order."""
    body: dict[str, Any] = {
        "client_order_id": cid,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "order_type": order_type,
        "limit_price": limit_price,
        "time_in_force": time_in_force,
        "reduce_only": reduce_only,
    }
    if approve:
        approval = sign_approval(
            DEVELOPMENT_SECRET,
            decision_id=f"d-{cid}",
            order=OrderRequest(
                ClientOrderId(cid),
                Symbol(symbol),
                Side(side),
                Decimal(quantity),
                OrderType(order_type),
                Decimal(limit_price) if limit_price is not None else None,
                TimeInForce(time_in_force),
                reduce_only,
            ),
            epoch=epoch,
            expires_ms=now_ms() + expires_in_ms,
        )
        body["approval"] = {
            "decision_id": approval.decision_id,
            "token": approval.token,
            "expires_ms": approval.expires_ms,
            "epoch": approval.epoch,
        }
    return body


def quoted(client: TestClient, symbol: str, bid: str) -> bool:
    return any(q["symbol"] == symbol and q["bid"] == bid for q in client.get("/quotes").json())


def send_tick(harness: ServiceHarness, client: TestClient, **kwargs: str) -> None:
    t = tick(**kwargs)
    harness.publish(t)
    wait_until(lambda: quoted(client, t.symbol, str(t.bid)), what=f"quote {t.bid}")


def test_market_order_fills_at_the_quote_and_is_persisted_and_published(
    harness: ServiceHarness,
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        response = client.post("/orders", json=order("mkt-1", quantity="2"))
        assert response.status_code == 201, response.text
        placed = response.json()
        assert placed["status"] == "FILLED"
        assert Decimal(placed["filled_quantity"]) == 2
        assert len(placed["fills"]) == 1
        fill = placed["fills"][0]
        # Buys pay at least the ask; slippage is capped at 25 bps.
        assert Decimal("100.10") <= Decimal(fill["price"]) <= Decimal("100.10") * Decimal("1.0025")
        assert Decimal(fill["fee"]) == Decimal(fill["price"]) * 2 * Decimal("0.001")
        assert placed["risk_decision_id"] == "d-mkt-1"

        events = client.get("/orders/mkt-1/events").json()["data"]
        assert [(e["kind"], e["to_status"]) for e in events] == [
            ("CREATED", "NEW"),
            ("ACCEPT", "ACCEPTED"),
            ("FILL", "FILLED"),
        ]
        assert all(e["trace_id"] for e in events)

        # Published by the outbox relay, which the commit wakes: just after the answer.
        filled = wait_until(lambda: harness.published("order.filled"), what="order.filled")
        assert [(f["client_order_id"], f["fill_id"]) for f in filled] == [("mkt-1", "mkt-1-1")]
        assert Decimal(filled[0]["leaves_quantity"]) == 0
        assert [e["client_order_id"] for e in harness.published("order.submitted")] == ["mkt-1"]
        assert [e["client_order_id"] for e in harness.published("order.accepted")] == ["mkt-1"]

        account = client.get("/account").json()
        spent = Decimal(fill["price"]) * 2 + Decimal(fill["fee"])
        assert Decimal(account["cash"]) == Decimal(100_000) - spent
        assert account["holdings"] == [{"symbol": "BTCUSDT", "quantity": "2", "available": "2"}]


def test_order_filled_carries_the_fill_sequence(harness: ServiceHarness) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        placed = [
            client.post("/orders", json=order("seq-1", quantity="2")).json(),
            client.post("/orders", json=order("seq-2", side="SELL", quantity="1")).json(),
        ]
        fills = [f for o in placed for f in o["fills"]]
        sequences = [f["sequence"] for f in fills]
        assert sequences == sorted(sequences) and len(set(sequences)) == 2

        filled = wait_until(
            lambda: len(f := harness.published("order.filled")) == 2 and f,
            what="two order.filled events",
        )
        assert [(e["fill_id"], e["sequence"]) for e in filled] == [
            (f["fill_id"], f["sequence"]) for f in fills
        ]


def test_a_duplicate_client_order_id_returns_the_existing_order(harness: ServiceHarness) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        body = order("dup-1")
        first = client.post("/orders", json=body)
        again = client.post("/orders", json=body)
        assert first.status_code == 201
        assert again.status_code == 200
        assert again.json() == first.json()
        assert client.get("/orders").json()["count"] == 1
        wait_until(lambda: len(harness.published("order.filled")) == 1, what="one order.filled")


def test_orders_without_a_valid_approval_are_refused_and_say_why(harness: ServiceHarness) -> None:
    with running(harness) as client:
        send_tick(harness, client)

        missing = client.post("/orders", json=order("a-1", approve=False))
        assert missing.status_code == 403
        assert "approval is missing" in missing.json()["detail"]

        tampered = order("a-2")
        tampered["approval"]["token"] = "0" * 64
        response = client.post("/orders", json=tampered)
        assert response.status_code == 403
        assert "approval token is invalid" in response.json()["detail"]

        bigger = order("a-3", quantity="1")
        bigger["quantity"] = "10"  # approved for 1, asking for 10
        response = client.post("/orders", json=bigger)
        assert response.status_code == 403
        assert "invalid" in response.json()["detail"]

        later = order("a-4")
        later["approval"]["expires_ms"] += 60_000  # stretching the expiry breaks the signature
        assert client.post("/orders", json=later).status_code == 403

        expired = client.post("/orders", json=order("a-5", expires_in_ms=-1))
        assert expired.status_code == 403
        assert "approval expired" in expired.json()["detail"]

        assert client.get("/orders").json()["count"] == 0
        metrics = client.get("/metrics").text
        assert 'execution_approval_refusals_total{problem="EXPIRED"}' in metrics


def test_a_malformed_order_is_422_naming_the_field(harness: ServiceHarness) -> None:
    with running(harness) as client:
        body = order("bad-1")
        body["quantity"] = "-1"
        response = client.post("/orders", json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][-1] == "quantity"

        body = order("bad-2", order_type="LIMIT")
        response = client.post("/orders", json=body)
        assert response.status_code == 422
        assert "limit_price is required" in response.text


def test_a_market_order_before_any_quote_is_rejected_with_the_reason(
    harness: ServiceHarness,
) -> None:
    with running(harness) as client:
        response = client.post("/orders", json=order("noq-1", symbol="ETHUSDT"))
        assert response.status_code == 201
        assert response.json()["status"] == "REJECTED"
        assert response.json()["reason"] == "no quote for ETHUSDT"
        rejected = wait_until(lambda: harness.published("order.rejected"), what="order.rejected")
        assert rejected[0]["reason"] == "no quote for ETHUSDT"


def test_a_limit_order_rests_then_fills_on_a_crossing_tick_linked_to_the_order_trace(
    harness: ServiceHarness, span_exporter: Any
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        body = order("lim-1", quantity="3", order_type="LIMIT", limit_price="99.00")
        placed = client.post("/orders", json=body).json()
        assert placed["status"] == "ACCEPTED"
        account = client.get("/account").json()
        # Reserved at the limit price plus the higher fee rate.
        assert Decimal(account["reserved_cash"]) == Decimal("3") * Decimal("99.00") * Decimal(
            "1.001"
        )

        harness.publish(tick(bid="98.50", ask="98.90"))
        filled = wait_until(
            lambda: (o := client.get("/orders/lim-1").json())["status"] == "FILLED" and o,
            what="the resting order to fill",
        )
        assert filled["fills"][0]["liquidity"] == "MAKER"
        # Limit or better: the market fell through the limit, so it fills at the ask.
        assert Decimal(filled["fills"][0]["price"]) == Decimal("98.90")
        assert Decimal(client.get("/account").json()["reserved_cash"]) == 0

    spans = span_exporter.get_finished_spans()
    submit = next(s for s in spans if s.name == "order.submit")
    fill = next(s for s in spans if s.name == "order.fill")
    assert fill.attributes["client_order_id"] == "lim-1"
    assert fill.context.trace_id != submit.context.trace_id  # the tick's trace, not the order's
    assert [(link.context.trace_id, link.context.span_id) for link in fill.links] == [
        (submit.context.trace_id, submit.context.span_id)
    ]


def test_cancel_releases_the_reservation(harness: ServiceHarness) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        client.post("/orders", json=order("c-1", order_type="LIMIT", limit_price="99.50"))
        client.post("/orders", json=order("c-2", order_type="LIMIT", limit_price="99.00"))
        assert Decimal(client.get("/account").json()["reserved_cash"]) > 0

        canceled = client.post("/orders/c-1/cancel")
        assert canceled.status_code == 200
        assert canceled.json()["status"] == "CANCELED"
        assert client.post("/orders/c-1/cancel").status_code == 409
        assert client.post("/orders/nope/cancel").status_code == 404

        everything = client.post("/orders/cancel-all").json()
        assert [o["client_order_id"] for o in everything["data"]] == ["c-2"]
        account = client.get("/account").json()
        assert Decimal(account["reserved_cash"]) == 0
        assert Decimal(account["available_cash"]) == Decimal(100_000)
        assert [e["client_order_id"] for e in harness.published("order.canceled")] == [
            "c-1",
            "c-2",
        ]
        assert client.get("/orders", params={"status": "CANCELED"}).json()["count"] == 2


def test_a_restart_rebuilds_balances_reservations_and_working_orders(
    harness: ServiceHarness,
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        client.post("/orders", json=order("r-1", quantity="2"))
        client.post("/orders", json=order("r-2", order_type="LIMIT", limit_price="99.00"))
        client.post(
            "/orders",
            json=order("r-3", side="SELL", quantity="1", order_type="LIMIT", limit_price="101.00"),
        )
        # More than the quote's volume: a marketable limit buy left working after it took
        # what the quote had.
        partial = client.post(
            "/orders", json=order("r-4", quantity="60", order_type="LIMIT", limit_price="101.00")
        ).json()
        assert partial["status"] == "PARTIALLY_FILLED"
        before = client.get("/account").json()

    with running(harness) as client:
        after = client.get("/account").json()
        for key in ("cash", "reserved_cash", "available_cash"):
            assert Decimal(after[key]) == Decimal(before[key]), key
        assert after["holdings"] == before["holdings"]
        assert after["open_orders"] == before["open_orders"] == 3
        assert client.get("/orders", params={"status": "ACCEPTED"}).json()["count"] == 2
        # The restored sell order keeps its reserved quantity of 1.
        held = after["holdings"][0]
        assert Decimal(held["quantity"]) - Decimal(held["available"]) == 1

        harness.publish(tick(bid="101.50", ask="101.60"))
        sold = wait_until(
            lambda: (o := client.get("/orders/r-3").json())["status"] == "FILLED" and o,
            what="the restored sell order to fill",
        )
        assert sold["fills"][0]["fill_id"] == "r-3-1"
        again = client.post("/orders", json=order("r-1", quantity="2"))
        assert again.status_code == 200
