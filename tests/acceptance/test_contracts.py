"""Acceptance: the typed clients read what the real services answer, and the services take what
the clients send: one order from risk-safety's check to execution's fill, through the contracts.

Three real processes (execution, risk-safety, portfolio-intelligence) against a real Redis and
real databases. A contract that a service and its callers no longer share fails here: the
client refuses the answer (`MalformedAnswer`) or the service refuses the request (a 422).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal

import httpx
import pytest

from backend.trading.types import ClientOrderId, OrderRequest, Side, Symbol
from microservices.contracts import Refused
from microservices.contracts.execution import ExecutionClient, OrderCreate
from microservices.contracts.portfolio_intelligence import PortfolioClient
from microservices.contracts.risk_safety import CheckRequest, RiskSafetyClient
from tests.acceptance.harness import API_TOKEN, base_env, http, poll, services
from tests.support.halting import market_tick, publish_ticks

SYMBOL = "BTCUSDT"
BID, ASK = "100.00", "100.10"


@dataclass(frozen=True)
class Trio:
    urls: dict[str, str]


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Trio]:
    tmp = tmp_path_factory.mktemp("contracts")
    env = base_env(redis_url, None) | {"EXECUTION_RISK_POLL_MS": "250"}
    names = ["execution", "risk-safety", "portfolio-intelligence"]
    with services(names, tmp, env, timeout_s=60) as running:
        urls = {name: url for name, (_, url) in running.items()}
        poll(
            lambda: http.get(f"{urls['execution']}/risk/state").json()["accepts"] == "ALL",
            20,
            "execution to adopt risk-safety's ACTIVE state",
        )
        publish_ticks(redis_url, env["EVENTBUS_PREFIX"], market_tick(BID, ASK))
        poll(
            lambda: (
                http.get(f"{urls['execution']}/quotes").json()
                and http.get(f"{urls['risk-safety']}/state").json()["quotes"]
            ),
            10,
            f"execution and risk-safety to quote {SYMBOL}",
        )
        yield Trio(urls)


def buy(quantity: str) -> OrderRequest:
    return OrderRequest(
        client_order_id=ClientOrderId(f"contract-{uuid.uuid4().hex[:12]}"),
        symbol=Symbol(SYMBOL),
        side=Side.BUY,
        quantity=Decimal(quantity),
    )


async def test_an_order_goes_from_check_to_fill_through_the_typed_clients(trio: Trio) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as client:
        risk = RiskSafetyClient(client, trio.urls["risk-safety"])
        execution = ExecutionClient(client, trio.urls["execution"])
        portfolio = PortfolioClient(client, trio.urls["portfolio-intelligence"])

        book = await portfolio.portfolio()
        assert book.equity > 0 and book.fills.gaps == []
        signed = await risk.signed_state()
        assert (signed.state, signed.epoch) == ("ACTIVE", 0)

        order = buy("0.1")
        verdict = await risk.check(CheckRequest.of(order, price=Decimal(ASK)))
        assert verdict.approved and verdict.approval is not None, verdict
        placed = await execution.place_order(OrderCreate.of(order, approval=verdict.approval))
        assert (placed.client_order_id, placed.status, placed.side) == (
            order.client_order_id,
            "FILLED",
            "BUY",
        )
        assert placed.fills and placed.fills[0].price >= Decimal(ASK)  # the ask, and slippage

        # The same order again is the same order; another one under that id is refused.
        again = await execution.place_order(OrderCreate.of(order, approval=verdict.approval))
        assert again.fills == placed.fills
        changed = OrderCreate.of(replace(order, quantity=Decimal("0.2")), approval=verdict.approval)
        with pytest.raises(Refused) as refused:
            await execution.place_order(changed)
        assert refused.value.status == 409

        exposure = await execution.exposure(0)
        assert order.client_order_id in exposure.client_order_ids_since
        assert exposure.holdings[SYMBOL] == Decimal("0.1")
