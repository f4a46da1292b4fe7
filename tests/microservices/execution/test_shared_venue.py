"""Two execution processes sharing one venue (`EXECUTION_SHARED_VENUE`), one database and one
consumer group on the tick stream.

Orders are sent to either replica, each one twice (a retry to the other replica), and ticks
are split between the replicas by the consumer group: every order is accepted exactly once,
every resting order is filled exactly once whichever replica the crossing tick reaches, a tick
older than the quote already matched is ignored, a halt pushed to one replica holds on the
other, and both replicas' books equal a recomputation from the fill ledger. On SQLite (one
file, two processes) and PostgreSQL.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.factories import market_tick
from tests.support.halting import CALM, CROSSING, approved_order, publish_ticks
from tests.support.polling import wait_until
from tests.support.procs import free_port, running
from tests.support.riskstub import RiskStub

INITIAL_CASH = Decimal(100_000)
TOKEN = "shared-venue-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
ROUNDS = 4
RESTING_PER_ROUND = 5


def metric_sum(port: int, name: str, **labels: str) -> float:
    """The sum of one metric's samples on a replica's /metrics that carry `labels`."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def get(port: int, path: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{port}{path}", headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def post(port: int, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}{path}", json=body, headers=HEADERS, timeout=30)


def place_twice(ports: list[int], bodies: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Send every order to one replica and, at the same time, its retry to the other; the
    status codes each client order id got."""
    jobs = [(ports[(n + k) % 2], body) for n, body in enumerate(bodies) for k in range(2)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: post(job[0], "/orders", job[1]), jobs))
    statuses: dict[str, list[int]] = {}
    for (_port, body), answer in zip(jobs, answers, strict=True):
        statuses.setdefault(body["client_order_id"], []).append(answer.status_code)
    return statuses


def orders(port: int) -> list[dict[str, Any]]:
    return list(get(port, "/orders?limit=1000")["data"])


def recomputed(all_orders: list[dict[str, Any]]) -> tuple[Decimal, Decimal]:
    """Cash and BTCUSDT held, by plain arithmetic over every fill in the ledger."""
    cash, held = INITIAL_CASH, Decimal(0)
    for order in all_orders:
        for fill in order["fills"]:
            quantity, price, fee = (Decimal(fill[k]) for k in ("quantity", "price", "fee"))
            if order["side"] == "BUY":
                cash -= quantity * price + fee
                held += quantity
            else:
                cash += quantity * price - fee
                held -= quantity
    return cash, held


def test_two_replicas_share_one_venue(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    risk = RiskStub()
    ports = [free_port(), free_port()]
    env = {
        "REDIS_URL": redis_url,
        "EVENTBUS_PREFIX": prefix,
        "EVENTBUS_BATCH_SIZE": "1",  # one tick per read, so both replicas get a share
        "EVENTBUS_BLOCK_MS": "50",
        "DATABASE_URL": database_url,
        "QT_API_TOKEN": TOKEN,
        "EXECUTION_SHARED_VENUE": "1",
        "RISK_SAFETY_URL": risk.url,
        "EXECUTION_RISK_POLL_MS": "100",
        "EXECUTION_RISK_LEASE_MS": "30000",
        "INITIAL_CASH": str(INITIAL_CASH),
        "VENUE_TOUCH_FILL_PROBABILITY": "1",
        "OTLP_ENDPOINT": "",
        "OTEL_SDK_DISABLED": "true",
    }
    args = ["-m", "quantum_trader", "serve", "execution"]
    try:
        with (
            running(
                args,
                {**env, "PORT": str(ports[0]), "EVENTBUS_CONSUMER_NAME": "replica-1"},
                tmp_path / "replica-1.log",
                ports[0],
                "/health/ready",
                90,
            ) as first,
            running(
                args,
                {**env, "PORT": str(ports[1]), "EVENTBUS_CONSUMER_NAME": "replica-2"},
                tmp_path / "replica-2.log",
                ports[1],
                "/health/ready",
                90,
            ) as second,
        ):
            for port in ports:
                wait_until(
                    lambda port=port: get(port, "/risk/state")["accepts"] == "ALL",
                    60,
                    "both replicas to enforce the stub's ACTIVE state",
                )
            publish_ticks(redis_url, prefix, market_tick(*CALM))
            for port in ports:  # a quote either replica took is the venue's
                wait_until(lambda port=port: get(port, "/quotes") != [], 30, "the first quote")

            # Marketable buys fill at once, on whichever replica takes them.
            market = [
                approved_order(f"m{n}", side="BUY", quantity="0.1", epoch=0) for n in range(10)
            ]
            statuses = place_twice(ports, market)
            assert all(sorted(s) == [200, 201] for s in statuses.values()), statuses

            # Resting buys, crossed by ticks that either replica may take.
            resting: list[str] = []
            for r in range(ROUNDS):
                bodies = [
                    approved_order(
                        f"r{r}-{n}",
                        side="BUY",
                        quantity="0.2",
                        order_type="LIMIT",
                        limit_price="99.00",
                        epoch=0,
                    )
                    for n in range(RESTING_PER_ROUND)
                ]
                statuses = place_twice(ports, bodies)
                assert all(sorted(s) == [200, 201] for s in statuses.values()), statuses
                resting += [b["client_order_id"] for b in bodies]
                ticks = [market_tick(*(CROSSING if k % 2 else CALM)) for k in range(6)]
                publish_ticks(redis_url, prefix, *ticks)

                def filled(names: list[str] = resting, port: int = ports[r % 2]) -> bool:
                    by_id = {o["client_order_id"]: o for o in orders(port)}
                    return all(by_id[c]["status"] == "FILLED" for c in names)

                wait_until(filled, 60, f"round {r}'s resting orders to fill")

            # A tick older than the quote already matched moves nothing.
            calm = market_tick(*CALM)
            publish_ticks(redis_url, prefix, calm)
            published = 1 + ROUNDS * 6 + 1

            def consumed() -> float:
                return sum(metric_sum(p, "eventbus_consumed_total") for p in ports)

            wait_until(lambda: consumed() >= published, 30, "every tick handled")
            assert get(ports[0], "/quotes")[0]["ts_ms"] == calm.ts_ms
            stale_before = sum(metric_sum(p, "execution_ticks_out_of_order_total") for p in ports)
            leftover = approved_order(
                "late",
                side="BUY",
                quantity="0.2",
                order_type="LIMIT",
                limit_price="99.00",
                epoch=0,
            )
            assert post(ports[0], "/orders", leftover).status_code == 201
            publish_ticks(redis_url, prefix, market_tick(*CROSSING, ts_ms=1))
            wait_until(lambda: consumed() >= published + 1, 30, "the stale tick handled")
            stale = sum(metric_sum(p, "execution_ticks_out_of_order_total") for p in ports)
            assert stale == stale_before + 1
            assert get(ports[1], "/orders/late")["status"] == "ACCEPTED"

            # A halt pushed to the first replica holds on the second.
            halted = risk.next("HALTED")  # pushed, not served: the second replica's polls
            answer = post(ports[0], "/risk/state", risk.push_body(halted))  # still say ACTIVE
            assert answer.status_code == 200, answer.text
            assert answer.json()["canceled"] == ["late"]
            state = get(ports[1], "/risk/state")
            assert (state["state"], state["epoch"], state["accepts"]) == (
                "HALTED",
                1,
                "REDUCE_ONLY",
            )
            for epoch in (0, 1):  # an approval from before the halt, or one of its epoch
                refused = post(
                    ports[1],
                    "/orders",
                    approved_order(f"h{epoch}", side="BUY", quantity="0.1", epoch=epoch),
                )
                assert refused.status_code == 403, refused.text

            # Every order once; every fill once; both books equal the ledger's arithmetic.
            everything = orders(ports[1])
            ids = [o["client_order_id"] for o in everything]
            assert sorted(ids) == sorted(
                [b["client_order_id"] for b in market] + resting + ["late"]
            )
            fill_ids = [f["fill_id"] for o in everything for f in o["fills"]]
            sequences = sorted(f["sequence"] for o in everything for f in o["fills"])
            assert len(fill_ids) == len(set(fill_ids))
            assert sequences == list(range(1, len(sequences) + 1)), "one gapless fill sequence"
            for order in everything:
                assert Decimal(order["filled_quantity"]) == sum(
                    (Decimal(f["quantity"]) for f in order["fills"]), Decimal(0)
                )
                expected = "CANCELED" if order["client_order_id"] == "late" else "FILLED"
                assert order["status"] == expected, order
            cash, held = recomputed(everything)
            for port in ports:
                account = get(port, "/account")
                assert Decimal(account["cash"]) == cash, (port, account, cash)
                holdings = {h["symbol"]: Decimal(h["quantity"]) for h in account["holdings"]}
                assert holdings.get("BTCUSDT") == held, (port, account, held)
                assert Decimal(account["reserved_cash"]) == 0 and account["open_orders"] == 0

            # Both replicas took ticks and took in what the other did.
            for port in ports:
                assert metric_sum(port, "eventbus_consumed_total") > 0
                assert metric_sum(port, "execution_venue_catch_ups_total") > 0
            for proc in (first, second):
                assert "Traceback" not in proc.output(), proc.output()[-3000:]
    finally:
        risk.close()
