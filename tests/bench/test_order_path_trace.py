"""The order-path benchmark's reading of a trade's trace: tick publication to the order's
acknowledgement, split into publish, stream wait, in-service, SQL, bus and HTTP client time."""

from __future__ import annotations

from typing import Any

import pytest

from bench.order_path import tick_path

MS = 1_000_000


def span(
    span_id: str,
    parent: str,
    service: str,
    kind: str,
    name: str,
    start_ms: float,
    end_ms: float,
    **attributes: Any,
) -> dict[str, Any]:
    return {
        "span_id": span_id,
        "parent_span_id": parent,
        "service": service,
        "kind": kind,
        "name": name,
        "start_ns": int(start_ms * MS),
        "end_ns": int(end_ms * MS),
        "attributes": attributes,
    }


def trade() -> list[dict[str, Any]]:
    return [
        span("s", "", "eventbus-bridge", "producer", "send market.tick", 0, 5),
        span("c", "s", "trading-bot", "consumer", "process market.tick", 8, 120),
        span("d", "c", "trading-bot", "internal", "decide", 8, 120),
        span("p", "d", "trading-bot", "client", "POST", 10, 30),
        span("ps", "p", "ai-engine", "server", "POST /predict", 12, 28),
        # Published after the answer: not on the path.
        span("pp", "ps", "ai-engine", "producer", "send signal.generated", 29, 35),
        span("o", "d", "trading-bot", "client", "POST", 40, 90),
        span("os", "o", "execution", "server", "POST /orders", 42, 88),
        span("oi", "os", "execution", "internal", "order.submit", 45, 70),
        span("q", "oi", "execution", "client", "INSERT orders", 50, 55, **{"db.system.name": "x"}),
        span("e", "os", "execution", "producer", "send order.filled", 60, 62),
        # After the acknowledgement: not on the path.
        span("r", "c", "trading-bot", "client", "INSERT bot_decisions", 100, 101),
    ]


def test_a_trade_is_split_into_stages_that_add_up_to_the_tick_to_ack_time() -> None:
    path = tick_path(trade())
    assert path is not None
    assert path.total_ms == pytest.approx(88)
    assert path.stages == pytest.approx(
        {
            "publish: eventbus-bridge XADD market.tick": 5,
            "stream wait: trading-bot": 3,
            "in-service: trading-bot process market.tick": 80 - 20 - 48,
            "HTTP client: trading-bot -> ai-engine": 4,
            "in-service: ai-engine POST /predict": 16,
            "HTTP client: trading-bot -> execution": 2,
            "in-service: execution POST /orders": 46 - 5 - 2,
            "SQL: execution INSERT orders": 5,
            "bus publish on path: execution send order.filled": 2,
        }
    )
    assert sum(path.stages.values()) == pytest.approx(path.total_ms)
    kinds = path.by_kind()
    assert kinds["in-service"] == pytest.approx(12 + 16 + 39)
    # Where in-service time goes: the internal spans on the path, their SQL included.
    assert path.inside == pytest.approx(
        {"trading-bot decide": 88 - 8, "execution order.submit": 25}
    )
    assert path.of_service("trading-bot") == pytest.approx(3 + 12 + 4 + 2)


def test_a_trace_without_a_whole_trade_is_skipped() -> None:
    no_ack = [s for s in trade() if s["name"] != "POST /orders"]
    assert tick_path(no_ack) is None
