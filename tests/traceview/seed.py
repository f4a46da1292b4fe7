"""A small, realistic set of traces for the pages: two trades (a fast and a slow one), a
resting order filled later in another trace (linked), skipped decisions, and noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.infra.traceview._queries import LogRecord
from backend.infra.traceview._store import StoredSpan

MS = 1_000_000
FAST, SLOW, FILL = "a" * 32, "b" * 32, "c" * 32
LOW, STALE, NOISE = "d" * 32, "e" * 32, "f" * 32
FAST_ORDER, SLOW_ORDER = "qt-fast-0001", "qt-slow-0002"
SUBMIT_SPAN = "a0000000000000ff"
"""execution's order.submit span of the fast trade: the later fill links to it."""


def dotted(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes whose names are not Python identifiers (`db.system.name`), to pass as **."""
    return attributes


@dataclass
class Builder:
    trace_id: str
    t0_ns: int
    spans: list[StoredSpan] = field(default_factory=list)
    _n: int = 0

    def add(
        self,
        parent: StoredSpan | None,
        service: str,
        name: str,
        start_ms: float,
        end_ms: float,
        kind: str = "internal",
        *,
        span_id: str | None = None,
        links: list[tuple[str, str]] | None = None,
        error: bool = False,
        events: list[tuple[str, dict[str, Any]]] | None = None,
        **attributes: Any,
    ) -> StoredSpan:
        self._n += 1
        s = StoredSpan(
            trace_id=self.trace_id,
            span_id=span_id or f"{self.trace_id[0]}{self._n:015x}",
            parent_span_id=parent.span_id if parent else "",
            name=name,
            kind=kind,
            service=service,
            start_ns=self.t0_ns + int(start_ms * MS),
            end_ns=self.t0_ns + int(end_ms * MS),
            attributes=dict(attributes),
            error=error,
            links=links or [],
            events=events or [],
        )
        self.spans.append(s)
        return s


def trade(
    trace_id: str, t0_ns: int, coid: str, sql_ms: float, submit_id: str | None, quote_age_ms: int
) -> list[StoredSpan]:
    b = Builder(trace_id, t0_ns)
    tick = b.add(None, "eventbus-bridge", "send market.tick", 0, 0.4, "producer", symbol="BTCUSDT")
    bot = b.add(tick, "trading-bot", "process market.tick", 2.0, 40 + sql_ms, "consumer")
    decide = b.add(
        bot,
        "trading-bot",
        "decide",
        2.2,
        39 + sql_ms,
        symbol="BTCUSDT",
        outcome="ORDERED",
        reason="APPROVED",
        client_order_id=coid,
        model_version="gbm-7",
        direction="BUY",
        confidence=0.71,
    )
    call = b.add(decide, "trading-bot", "POST /predict", 2.4, 8, "client")
    server = b.add(call, "ai-engine", "POST /predict", 2.6, 7.8, "server")
    b.add(
        server,
        "ai-engine",
        "signal",
        3,
        7.5,
        symbol="BTCUSDT",
        model_version="gbm-7",
        direction="BUY",
        confidence=0.71,
    )
    sizing = b.add(
        decide,
        "trading-bot",
        "sizing",
        8.2,
        12,
        equity="10000",
        constraint="NONE",
        model_version="gbm-7",
    )
    pcall = b.add(sizing, "trading-bot", "GET /portfolio", 8.4, 11.5, "client")
    b.add(pcall, "portfolio-intelligence", "GET /portfolio", 8.6, 11.2, "server")
    check = b.add(
        decide, "trading-bot", "risk_check", 12.2, 20 + sql_ms, approved=True, client_order_id=coid
    )
    rcall = b.add(check, "trading-bot", "POST /check", 12.4, 19.8 + sql_ms, "client")
    rserver = b.add(rcall, "risk-safety", "POST /check", 12.6, 19.5 + sql_ms, "server")
    rcheck = b.add(
        rserver,
        "risk-safety",
        "risk.check",
        12.8,
        19.2 + sql_ms,
        client_order_id=coid,
        approved=True,
        reason="OK",
        trading_state="ACTIVE",
        quote_age_ms=quote_age_ms,
    )
    b.add(
        rcheck,
        "risk-safety",
        "INSERT risk_decisions",
        13,
        13 + sql_ms,
        "client",
        **dotted({"db.system.name": "sqlite", "db.query.text": "INSERT INTO risk_decisions"}),
    )
    submit = b.add(
        decide,
        "trading-bot",
        "submit_order",
        20.2 + sql_ms,
        38 + sql_ms,
        client_order_id=coid,
        order_status="ACCEPTED",
    )
    ecall = b.add(submit, "trading-bot", "POST /orders", 20.4 + sql_ms, 37.5 + sql_ms, "client")
    eserver = b.add(ecall, "execution", "POST /orders", 20.6 + sql_ms, 37 + sql_ms, "server")
    order = b.add(
        eserver,
        "execution",
        "order.submit",
        21 + sql_ms,
        36 + sql_ms,
        span_id=submit_id,
        client_order_id=coid,
        symbol="BTCUSDT",
        side="BUY",
        quantity="0.01",
        order_type="LIMIT",
        **dotted({"order.status": "ACCEPTED"}),
    )
    b.add(
        order,
        "execution",
        "INSERT orders",
        22 + sql_ms,
        24 + sql_ms,
        "client",
        **dotted({"db.system.name": "sqlite", "db.query.text": "INSERT INTO orders"}),
    )
    return b.spans  # fmt: skip


def fill_trace(t0_ns: int) -> list[StoredSpan]:
    """A later tick fills the fast trade's resting order; the portfolio books it and the
    position monitor follows the position."""
    b = Builder(FILL, t0_ns)
    tick = b.add(None, "eventbus-bridge", "send market.tick", 0, 0.3, "producer")
    ex = b.add(tick, "execution", "process market.tick", 1, 9, "consumer")
    fill = b.add(
        ex,
        "execution",
        "order.fill",
        2,
        3,
        links=[(FAST, SUBMIT_SPAN)],
        client_order_id=FAST_ORDER,
        fill_id="f-1",
        side="BUY",
        quantity="0.01",
        price="40000",
        fee="0.4",
        liquidity="MAKER",
        leaves_quantity="0",
        resting=True,
    )
    send = b.add(fill, "execution", "send order.filled", 3, 3.2, "producer")
    book = b.add(send, "portfolio-intelligence", "process order.filled", 5, 9, "consumer")
    upd = b.add(
        book,
        "portfolio-intelligence",
        "position.update",
        5.5,
        8,
        client_order_id=FAST_ORDER,
        **dotted({"position.quantity": "0.01"}),
    )
    pos = b.add(upd, "portfolio-intelligence", "send position.updated", 8, 8.1, "producer")
    b.add(pos, "position-monitor", "process position.updated", 10, 12, "consumer")
    return b.spans  # fmt: skip


def skipped(trace_id: str, t0_ns: int, reason: str, **extra: Any) -> list[StoredSpan]:
    b = Builder(trace_id, t0_ns)
    tick = b.add(None, "eventbus-bridge", "send market.tick", 0, 0.3, "producer")
    bot = b.add(tick, "trading-bot", "process market.tick", 1, 6, "consumer")
    b.add(bot, "trading-bot", "decide", 1.2, 5.5, symbol="ETHUSDT", outcome="SKIPPED",
          reason=reason, **extra)  # fmt: skip
    return b.spans


def noise(t0_ns: int) -> list[StoredSpan]:
    b = Builder(NOISE, t0_ns)
    b.add(None, "execution", "GET /health/ready", 0, 1, "server")
    return b.spans


def seeded(now_ns: int) -> tuple[list[StoredSpan], list[LogRecord]]:
    """Everything, within the last minute before `now_ns`, oldest first."""
    t = now_ns - 60_000 * MS
    spans = (
        trade(FAST, t, FAST_ORDER, 1.0, SUBMIT_SPAN, 12)
        + trade(SLOW, t + 5_000 * MS, SLOW_ORDER, 25.0, None, 950)
        + fill_trace(t + 10_000 * MS)
        + skipped(LOW, t + 15_000 * MS, "LOW_CONFIDENCE", detail="0.2100", model_version="gbm-7",
                  direction="SELL", confidence=0.21)
        + skipped(STALE, t + 20_000 * MS, "STALE_TICK", detail="tick is 9000 ms old")
        + noise(t + 25_000 * MS)
    )  # fmt: skip
    logs = [
        LogRecord(
            time_ns=t + 30 * MS,
            severity="INFO",
            body="order placed",
            service="execution",
            trace_id=FAST,
            span_id=SUBMIT_SPAN,
            attributes={"client_order_id": FAST_ORDER},
        )
    ]
    return spans, logs
