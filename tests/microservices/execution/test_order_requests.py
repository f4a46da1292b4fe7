"""POST /orders: the approval binds every field, a reused client order id must be the same order,
and no body, however hostile, gets past validation into a 5xx."""

from __future__ import annotations

from typing import Any

import pytest

from tests.microservices.execution.conftest import running
from tests.microservices.execution.test_execution import order, send_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

# Each field risk-safety judged, changed after the approval was signed for a MARKET BUY of 1.
TAMPERED: list[tuple[str, dict[str, Any]]] = [
    ("client_order_id", {"client_order_id": "other-id"}),
    ("symbol", {"symbol": "ETHUSDT"}),
    ("side", {"side": "SELL"}),
    ("quantity", {"quantity": "1.5"}),
    # A LIMIT far below the market (at 1 it would also break the minimum notional: 422).
    ("order_type", {"order_type": "LIMIT", "limit_price": "10"}),
    ("time_in_force", {"time_in_force": "IOC"}),
    ("reduce_only", {"reduce_only": True}),
]


@pytest.mark.parametrize(("field", "change"), TAMPERED, ids=[f for f, _ in TAMPERED])
def test_an_approval_presented_for_an_order_differing_in_any_field_is_invalid(
    harness: ServiceHarness, field: str, change: dict[str, Any]
) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        body = {**order("bound-1"), **change}
        response = client.post("/orders", json=body)
        assert response.status_code == 403, response.text
        assert "approval token is invalid" in response.json()["detail"]
        assert client.get("/orders").json()["count"] == 0


def test_a_limit_approval_does_not_cover_another_limit_price(harness: ServiceHarness) -> None:
    with running(harness) as client:
        send_tick(harness, client)
        body = order("bound-lim", order_type="LIMIT", limit_price="99.00")
        body["limit_price"] = "98.99"
        assert client.post("/orders", json=body).status_code == 403
        # The same price spelled differently is the same order.
        same = order("bound-lim", order_type="LIMIT", limit_price="99.00")
        same["limit_price"] = "99.0"
        assert client.post("/orders", json=same).status_code == 201


def test_a_reused_client_order_id_with_another_order_is_409_naming_the_fields(
    harness_database: ServiceHarness,
) -> None:
    with running(harness_database) as client:
        send_tick(harness_database, client)
        first = client.post("/orders", json=order("idem-1"))
        assert first.status_code == 201

        for changed, expected in (
            ({"quantity": "2"}, ["quantity"]),
            ({"order_type": "LIMIT", "limit_price": "1"}, ["order_type", "limit_price"]),
            ({"reduce_only": True, "time_in_force": "IOC"}, ["time_in_force", "reduce_only"]),
            ({"side": "SELL", "symbol": "ETHUSDT"}, ["symbol", "side"]),
        ):
            # A genuine approval for the new order: only the reuse of the id is wrong.
            fields = {k: v for k, v in changed.items() if k != "limit_price"}
            retry = order(
                "idem-1",
                **fields,
                limit_price=changed.get("limit_price"),
            )
            response = client.post("/orders", json=retry)
            assert response.status_code == 409, (changed, response.text)
            detail = response.json()["detail"]
            assert detail["fields"] == expected
            assert "idem-1" in detail["message"]

        assert client.get("/orders").json()["count"] == 1
        assert client.get("/orders/idem-1").json() == first.json()


def test_the_same_order_again_returns_it_even_after_its_approval_expired(
    harness_database: ServiceHarness,
) -> None:
    with running(harness_database) as client:
        send_tick(harness_database, client)
        body = order("idem-2", quantity="1.50", expires_in_ms=400)
        first = client.post("/orders", json=body)
        assert first.status_code == 201
        expired = order("idem-2", quantity="1.5", expires_in_ms=-1)  # "1.5" is "1.50"
        again = client.post("/orders", json=expired)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        # But not with a forged approval: the retry must still be risk-safety's order.
        forged = {**expired, "approval": {**expired["approval"], "token": "f" * 64}}
        assert client.post("/orders", json=forged).status_code == 403
        wait_until(
            lambda: len(harness_database.published("order.submitted")) == 1,
            what="one order.submitted",
        )


HOSTILE: list[tuple[str, dict[str, Any]]] = [
    ("quantity", {"quantity": "1e999999"}),
    ("quantity", {"quantity": "-1e999999"}),
    ("quantity", {"quantity": "1e-999999"}),
    ("quantity", {"quantity": "NaN"}),
    ("quantity", {"quantity": "Infinity"}),
    ("quantity", {"quantity": "0"}),
    ("quantity", {"quantity": "1000000000001"}),
    ("quantity", {"quantity": "1.0000000000001"}),  # 13 decimal places
    ("quantity", {"quantity": "12345678901234567890.123456789"}),  # 29 digits
    ("quantity", {"quantity": [1]}),
    ("quantity", {"quantity": {"$gt": 0}}),
    ("quantity", {"quantity": True}),
    ("limit_price", {"order_type": "LIMIT", "limit_price": "1e999999"}),
    ("limit_price", {"order_type": "LIMIT", "limit_price": "-Infinity"}),
    ("client_order_id", {"client_order_id": "x" * 65}),
    ("client_order_id", {"client_order_id": "nul\u0000byte"}),
    ("client_order_id", {"client_order_id": ""}),
    ("client_order_id", {"client_order_id": 12}),
    ("symbol", {"symbol": "BTC USDT"}),
    ("symbol", {"symbol": "Ü" * 10}),
    ("side", {"side": "buy; DROP TABLE orders"}),
    ("order_type", {"order_type": "STOP"}),
    ("time_in_force", {"time_in_force": "FOK"}),
    ("reduce_only", {"reduce_only": "maybe"}),
    ("approval", {"approval": "token"}),
    ("expires_ms", {"approval": {"decision_id": "d", "token": "t", "expires_ms": 10**40}}),
    ("expires_ms", {"approval": {"decision_id": "d", "token": "t", "expires_ms": "1e999999"}}),
    ("epoch", {"approval": {"decision_id": "d", "token": "t", "expires_ms": 1, "epoch": -1}}),
    ("token", {"approval": {"decision_id": "d", "token": "t" * 129, "expires_ms": 1}}),
]


def test_hostile_order_bodies_are_422_naming_the_field_and_never_5xx(
    harness_database: ServiceHarness,
) -> None:
    with running(harness_database) as client:
        send_tick(harness_database, client)
        for field, change in HOSTILE:
            body = {**order("hostile-1"), **change}
            response = client.post("/orders", json=body)
            assert response.status_code == 422, (change, response.text)
            assert field in [str(part) for e in response.json()["detail"] for part in e["loc"]], (
                change,
                response.text,
            )
        for raw in (b"", b"{", b"[]", b"null", b'"order"', b"\xff\xfe", b"{" * 5000):
            response = client.post(
                "/orders", content=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, (raw[:20], response.text)
        for path in ("/orders/nul%00byte", "/orders/" + "x" * 65, "/orders/a%20b/cancel"):
            assert client.get(path).status_code in (404, 405, 422), path
        assert client.get("/orders", params={"status": "x\u0000"}).status_code == 422
        assert client.post("/orders/cancel-all", params={"symbol": "a b"}).status_code == 422
        assert client.get("/orders").json()["count"] == 0


def test_an_overflowing_quantity_is_a_422_naming_quantity(harness: ServiceHarness) -> None:
    with running(harness) as client:
        response = client.post("/orders", json={**order("big-1"), "quantity": "1e999999"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "quantity"]
