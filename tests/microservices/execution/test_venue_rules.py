"""execution and the venue's instrument rules: 422 naming the rule, configuration, exact storage."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from microservices.execution.service import create_service
from microservices.execution.settings import ExecutionSettings
from tests.microservices.execution.test_execution import order, send_tick
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until


@pytest.fixture
def database(harness_database: ServiceHarness) -> str:
    """ "sqlite", then "postgresql": the harness on a SQLite file, then a fresh PostgreSQL one."""
    return harness_database.database_url.split("+")[0]


def numbers(value: Any) -> Any:
    """`value` with every decimal string read as a Decimal (PostgreSQL pads to its scale)."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return value
    return value


def test_an_order_off_the_lot_size_is_422_naming_the_quantity_and_the_rule(
    harness: ServiceHarness,
) -> None:
    with harness.run(create_service) as client:
        send_tick(harness, client)
        # The audit's 19-digit quantity is refused by the wire bounds already (12 places)...
        too_long = client.post("/orders", json=order("lot-0", quantity="0.0123456789012345678"))
        assert too_long.status_code == 422, too_long.text
        assert too_long.json()["detail"][0]["loc"] == ["body", "quantity"]
        # ...and one within them, but off the lot, by the instrument rule.
        response = client.post("/orders", json=order("lot-1", quantity="0.0123456789"))
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "quantity"]
        assert error["msg"] == (
            "quantity 0.0123456789 is not a multiple of lot size 0.0001 for BTCUSDT"
        )
        assert error["ctx"] == {"rule": "LOT_SIZE"}
        assert client.get("/orders").json()["count"] == 0


def test_an_unknown_symbol_and_an_off_tick_limit_are_422_naming_their_field(
    harness: ServiceHarness,
) -> None:
    with harness.run(create_service) as client:
        send_tick(harness, client)
        unknown = client.post("/orders", json=order("sym-1", symbol="XRPUSDT"))
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["loc"] == ["body", "symbol"]
        assert unknown.json()["detail"][0]["msg"].startswith("unknown symbol XRPUSDT")
        off_tick = client.post(
            "/orders", json=order("tick-1", order_type="LIMIT", limit_price="99.005")
        )
        assert off_tick.status_code == 422
        assert off_tick.json()["detail"][0]["loc"] == ["body", "limit_price"]
        assert "tick size 0.01" in off_tick.json()["detail"][0]["msg"]


def test_venue_instruments_come_from_the_environment(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VENUE_INSTRUMENTS", '{"BTCUSDT": {"tick_size": "0.5", "lot_size": "0.1"}}')
    with harness.run(create_service) as client:
        send_tick(harness, client)
        response = client.post("/orders", json=order("env-1", quantity="0.25"))
        assert response.status_code == 422
        assert "lot size 0.1 for BTCUSDT" in response.json()["detail"][0]["msg"]
        placed = client.post("/orders", json=order("env-2", quantity="0.2"))
        assert placed.status_code == 201
        assert Decimal(placed.json()["fills"][0]["price"]) % Decimal("0.5") == 0


def test_a_bad_venue_instruments_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VENUE_INSTRUMENTS", '{"BTCUSDT": {"tick_size": "-1", "lot_size": "1"}}')
    with pytest.raises(ValidationError) as caught:
        ExecutionSettings()
    assert "VENUE_INSTRUMENTS" in str(caught.value)
    assert "BTCUSDT: tick_size must be positive" in str(caught.value)


def test_persisted_fills_equal_the_venue_fills_exactly_and_survive_a_restart(
    harness: ServiceHarness, database: str
) -> None:
    sol = {"symbol": "SOLUSDT"}
    with harness.run(create_service) as client:
        send_tick(harness, client, symbol="SOLUSDT", bid="100.011", ask="100.013", volume="300")
        placed = [
            client.post("/orders", json=order("x-1", quantity="0.7", **sol)),
            client.post("/orders", json=order("x-2", quantity="3.1234", **sol)),
            client.post("/orders", json=order("x-3", side="SELL", quantity="1.0007", **sol)),
        ]
        assert [r.status_code for r in placed] == [201, 201, 201], [r.text for r in placed]
        stored = {f["fill_id"]: f for r in placed for f in r.json()["fills"]}
        # The published events carry the venue's in-memory fills; the API reads the database.
        events = wait_until(
            lambda: len(e := harness.published("order.filled")) == 3 and e,
            what="three fills published",
        )
        for event in events:
            row = stored[event["fill_id"]]
            for key in ("quantity", "price", "fee"):
                assert Decimal(row[key]) == Decimal(event[key]), key
                if database == "sqlite":  # and digit for digit: SQLite gives back what it got
                    assert row[key] == event[key], key
        before = client.get("/account").json()

    with harness.run(create_service) as client:
        after = client.get("/account").json()
        assert numbers(after) == numbers(before)
        if database == "sqlite":
            assert after == before
