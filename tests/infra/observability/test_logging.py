"""JSON log lines: one object per line, resource fields, trace ids, bound fields, exceptions."""

from __future__ import annotations

import io
import json
import logging

from backend.infra.observability import get_logger, get_tracer
from backend.infra.observability._logging import SINK
from backend.infra.observability._state import config


def parsed(buffer: io.StringIO) -> list[dict[str, object]]:
    SINK.flush()
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_a_line_carries_the_active_span_ids_and_bound_fields(log_lines) -> None:  # type: ignore[no-untyped-def]
    log = get_logger("orders").bind(desk="crypto")
    with get_tracer("t").start_as_current_span("place_order") as span:
        log.info("order accepted", client_order_id="qt-1", quantity=3)
        ctx = span.get_span_context()
    (line,) = [x for x in parsed(log_lines) if x["logger"] == "orders"]
    assert line["message"] == "order accepted"
    assert line["level"] == "INFO"
    assert line["trace_id"] == f"{ctx.trace_id:032x}"
    assert line["span_id"] == f"{ctx.span_id:016x}"
    assert line["client_order_id"] == "qt-1" and line["quantity"] == 3
    assert line["desk"] == "crypto"
    # The process's first `init_observability` names it: the suite's, or that of a service
    # built in-process by a test that ran earlier.
    in_force = config()
    assert in_force is not None and line["service.name"] == in_force.service_name
    assert {"service.version", "deployment.environment.name"} <= line.keys()
    assert "deployment.environment" not in line
    assert str(line["time"]).endswith("Z") and "T" in str(line["time"])


def test_outside_a_span_the_ids_are_null(log_lines) -> None:  # type: ignore[no-untyped-def]
    get_logger("quiet").warning("no trace here")
    (line,) = [x for x in parsed(log_lines) if x["logger"] == "quiet"]
    assert line["trace_id"] is None and line["span_id"] is None


def test_exceptions_are_structured_fields(log_lines) -> None:  # type: ignore[no-untyped-def]
    try:
        raise ValueError("bad price")
    except ValueError:
        get_logger("risk").exception("check failed", symbol="BTCUSDT")
    (line,) = [x for x in parsed(log_lines) if x["logger"] == "risk"]
    exc = line["exception"]
    assert isinstance(exc, dict)
    assert exc["type"] == "ValueError"
    assert exc["message"] == "bad price"
    assert "Traceback" in str(exc["stacktrace"])
    assert line["level"] == "ERROR"


def test_plain_stdlib_loggers_and_extra_fields_use_the_same_format(log_lines) -> None:  # type: ignore[no-untyped-def]
    logging.getLogger("third.party").warning("hello %s", "world", extra={"attempt": 2})
    (line,) = [x for x in parsed(log_lines) if x["logger"] == "third.party"]
    assert line["message"] == "hello world"
    assert line["attempt"] == 2


def test_values_json_cannot_hold_are_written_as_text(log_lines) -> None:  # type: ignore[no-untyped-def]
    from decimal import Decimal

    get_logger("money").info("fill", price=Decimal("101.25"), when=object)
    (line,) = [x for x in parsed(log_lines) if x["logger"] == "money"]
    assert line["price"] == "101.25"
