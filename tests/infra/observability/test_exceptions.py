"""Exceptions on spans and in logs: no deprecated `exception.escaped`, no repeated type in the
status description, and no secret from the exception's message."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind, StatusCode

from backend.infra.observability import get_logger, get_tracer, instrument_fastapi, record_error
from backend.infra.observability._export import encode_spans
from backend.infra.observability._logging import SINK

SECRET = "hunter2"


def exported_spans(spans) -> list:  # type: ignore[no-untyped-def]
    request = ExportTraceServiceRequest.FromString(encode_spans(spans))
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_the_server_span_records_the_scrubbed_message_without_escaped(span_exporter) -> None:  # type: ignore[no-untyped-def]
    app = FastAPI()
    instrument_fastapi(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"kaboom secret={SECRET}")

    assert TestClient(app, raise_server_exceptions=False).get("/boom").status_code == 500
    (span,) = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "kaboom secret=REDACTED"
    assert span.attributes["error.type"] == "RuntimeError"
    (event,) = span.events
    assert "exception.escaped" not in event.attributes
    assert event.attributes["exception.message"] == "kaboom secret=REDACTED"
    assert SECRET not in event.attributes["exception.stacktrace"]


def test_record_error_follows_the_conventions(span_exporter) -> None:  # type: ignore[no-untyped-def]
    with get_tracer("t").start_as_current_span("work", record_exception=False) as span:
        record_error(span, ValueError(f"bad password={SECRET}"))
    (finished,) = span_exporter.named("work")
    assert finished.status.description == "bad password=REDACTED"
    assert finished.attributes["error.type"] == "ValueError"
    assert "exception.escaped" not in finished.events[0].attributes


def test_an_sdk_span_exports_without_escaped_and_without_the_type_in_its_status(
    span_exporter,
) -> None:  # type: ignore[no-untyped-def]
    try:
        with get_tracer("t").start_as_current_span("sdk-work"):
            raise KeyError(f"token={SECRET}")
    except KeyError:
        pass
    payload = encode_spans(span_exporter.named("sdk-work"))
    assert SECRET.encode() not in payload
    (span,) = exported_spans(span_exporter.named("sdk-work"))
    assert not span.status.message.startswith("KeyError")
    assert "REDACTED" in span.status.message
    (event,) = span.events
    assert "exception.escaped" not in {kv.key for kv in event.attributes}


def test_a_logged_exception_has_its_message_scrubbed(log_lines) -> None:  # type: ignore[no-untyped-def]
    try:
        raise ConnectionError(f"login refused: api_key={SECRET}")
    except ConnectionError:
        get_logger("scrub-exc").exception("login failed")
    SINK.flush()
    assert SECRET not in log_lines.getvalue()
    (line,) = [json.loads(x) for x in log_lines.getvalue().splitlines() if '"scrub-exc"' in x]
    assert line["exception"]["message"] == "login refused: api_key=REDACTED"
