"""POST /check input: every bad body is a 422 naming its field, and no body produces a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microservices.risk_safety.service import create_service
from tests.microservices.risk_safety.conftest import ExecutionStub, PortfolioStub, tick
from tests.support.inprocess import ServiceHarness

GOOD: dict[str, Any] = {
    "client_order_id": "in-1",
    "symbol": "BTCUSDT",
    "side": "BUY",
    "quantity": "0.5",
    "price": "100",
}

HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"quantity": "1e999999"}, "quantity"),
    ({"quantity": 10**400}, "quantity"),
    ({"quantity": "-1e999999"}, "quantity"),
    ({"quantity": "1e-999999"}, "quantity"),
    ({"quantity": "NaN"}, "quantity"),
    ({"quantity": "Infinity"}, "quantity"),
    ({"quantity": "0"}, "quantity"),
    ({"quantity": "-1"}, "quantity"),
    ({"quantity": "1000000000001"}, "quantity"),
    ({"quantity": "0.0000000000001"}, "quantity"),  # 13 decimal places
    ({"quantity": "12345678901.23456789012345678"}, "quantity"),  # 28+ digits
    ({"quantity": "lots"}, "quantity"),
    ({"quantity": [1]}, "quantity"),
    ({"quantity": {"value": 1}}, "quantity"),
    ({"quantity": None}, "quantity"),
    ({"price": "1e999999"}, "price"),
    ({"price": "-5"}, "price"),
    ({"price": "sNaN"}, "price"),
    ({"order_type": "LIMIT", "limit_price": "1e999999"}, "limit_price"),
    ({"order_type": "LIMIT", "limit_price": "0"}, "limit_price"),
    ({"side": "HOLD"}, "side"),
    ({"side": None}, "side"),
    ({"symbol": ""}, "symbol"),
    ({"symbol": "X" * 33}, "symbol"),
    ({"client_order_id": ""}, "client_order_id"),
    ({"client_order_id": "c" * 65}, "client_order_id"),
    ({"order_type": "STOP"}, "order_type"),
    ({"time_in_force": "FOK"}, "time_in_force"),
    ({"reduce_only": "maybe"}, "reduce_only"),
]


def _fields(response: Any) -> set[str]:
    return {str(part) for error in response.json()["detail"] for part in error["loc"]}


def test_hostile_bodies_are_422s_naming_the_field(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    with harness.run(create_service) as client:
        for change, field in HOSTILE:
            response = client.post("/check", json={**GOOD, **change})
            assert response.status_code == 422, (change, response.text)
            assert field in _fields(response), (change, response.text)
        for raw in (b"", b"garbage", b"[]", b"null", b'{"quantity": 1e999999', b"\xff\xfe"):
            response = client.post(
                "/check", content=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, (raw, response.text)
        # A JSON number too large for a float (the client library will not write one).
        raw = b'{"client_order_id":"in-1","symbol":"BTCUSDT","side":"BUY","quantity":1e999999}'
        response = client.post("/check", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert "quantity" in _fields(response)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"order_type": "LIMIT"}, "INVALID_ORDER"),  # no limit price
        ({"limit_price": "100"}, "INVALID_ORDER"),  # a market order with a limit price
        ({"symbol": "\U0001f680"}, "NO_QUOTE"),
        ({"quantity": "1000000000000", "price": "1000000000000"}, "MAX_NOTIONAL"),
    ],
)
def test_well_formed_but_wrong_orders_are_denied_not_failed(
    harness: ServiceHarness,
    portfolio: PortfolioStub,
    execution: ExecutionStub,
    change: dict[str, Any],
    reason: str,
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)
        response = client.post("/check", json={**GOOD, **change})
        assert response.status_code == 200, response.text
        assert (response.json()["approved"], response.json()["reason"]) == (False, reason)


decimal_text = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1e999999", "-1e999999", "1e-999999", "9" * 40, "0." + "0" * 30 + "1"]),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers()
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = {
    "client_order_id": st.text(max_size=70),
    "symbol": st.sampled_from(["BTCUSDT", "ETHUSDT", "", "btcusdt"]) | st.text(max_size=40),
    "side": st.sampled_from(["BUY", "SELL", "buy", ""]),
    "quantity": decimal_text,
    "price": decimal_text,
    "order_type": st.sampled_from(["MARKET", "LIMIT", "STOP"]),
    "limit_price": decimal_text,
    "time_in_force": st.sampled_from(["GTC", "IOC", "FOK"]),
    "reduce_only": st.booleans(),
}
bodies = st.fixed_dictionaries(
    {},
    optional={name: strategy | json_values for name, strategy in FIELDS.items()},
)


def test_no_body_produces_a_server_error(
    harness: ServiceHarness, portfolio: PortfolioStub, execution: ExecutionStub
) -> None:
    with harness.run(create_service) as client:
        tick(harness, client)

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(body=bodies | json_values)
        def fuzz(body: Any) -> None:
            response = client.post("/check", json=body)
            assert response.status_code in (200, 422), (body, response.text)
            if response.status_code == 422:
                assert response.json()["detail"], response.text

        fuzz()
