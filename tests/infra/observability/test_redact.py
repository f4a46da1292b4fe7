"""Passwords inside URLs never leave a process: logs, spans, readiness bodies, config errors."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import StatusCode

from backend.infra.db import DatabaseConfigError, load_database_settings
from backend.infra.observability import (
    ReadinessCheck,
    get_logger,
    get_tracer,
    redact_text,
    redact_url,
)
from backend.infra.observability._export import encode_spans
from backend.infra.observability._health import run_checks
from backend.infra.observability._logging import SINK

SECRET = "S3cr3t-pw-4f9a"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            f"postgresql+asyncpg://postgres:{SECRET}@db:5432/qt",
            "postgresql+asyncpg://postgres:***@db:5432/qt",
        ),
        (f"redis://:{SECRET}@127.0.0.1:6390/0", "redis://:***@127.0.0.1:6390/0"),
        (f"rediss://default:{SECRET}@cache", "rediss://default:***@cache"),
        # An unescaped "@" in the password: its tail must go too.
        (f"redis://:{SECRET}@x@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("http://user@host/path", "http://user@host/path"),
        ("sqlite+aiosqlite:///./var/x.db", "sqlite+aiosqlite:///./var/x.db"),
    ],
)
def test_the_password_of_a_url_is_replaced_and_the_rest_kept(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_every_url_inside_a_message_is_redacted() -> None:
    text = (
        f"cannot reach redis://:{SECRET}@r:1/0 nor "
        f"'postgresql://u:{SECRET}@p/db'; mail me at ops@example.com"
    )
    assert redact_text(text) == (
        "cannot reach redis://:***@r:1/0 nor 'postgresql://u:***@p/db'; mail me at ops@example.com"
    )


_PASSWORD = st.text(
    alphabet=st.characters(
        codec="ascii", exclude_characters="/\"'<> \t\r\n\x0b\x0c", min_codepoint=33
    ),
    min_size=1,
    max_size=40,
)


@given(password=_PASSWORD, user=st.sampled_from(["", "postgres", "svc.user-1"]))
def test_no_password_survives_redaction(password: str, user: str) -> None:
    url = f"postgresql+asyncpg://{user}:{password}@db.internal:5432/qt"
    assert redact_url(url) == f"postgresql+asyncpg://{user}:***@db.internal:5432/qt"


def test_a_log_line_never_carries_a_url_password(log_lines: io.StringIO) -> None:
    log = get_logger("redaction-test")
    log.warning("connecting", target=f"redis://:{SECRET}@r:1/0")
    try:
        raise ConnectionError(f"refused by postgresql://postgres:{SECRET}@p:5432/qt")
    except ConnectionError:
        log.exception("database down")
    SINK.flush()
    output = log_lines.getvalue()
    assert SECRET not in output
    lines = [json.loads(line) for line in output.splitlines()]
    mine = [line for line in lines if line["logger"] == "redaction-test"]
    assert mine[0]["target"] == "redis://:***@r:1/0"
    assert "postgres:***@p:5432" in mine[1]["exception"]["message"]


def test_a_span_exports_no_url_password(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("redaction-test")
    with tracer.start_as_current_span("connect") as span:
        span.set_attribute("db.connection_string", f"postgresql://u:{SECRET}@p/db")
        span.record_exception(RuntimeError(f"redis://:{SECRET}@r:1/0 refused"))
        span.set_status(StatusCode.ERROR, f"redis://:{SECRET}@r:1/0 refused")
    payload = encode_spans(span_exporter.get_finished_spans())
    assert SECRET.encode() not in payload
    (exported,) = (
        ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    )
    attributes = {kv.key: kv.value.string_value for kv in exported.attributes}
    assert attributes["db.connection_string"] == "postgresql://u:***@p/db"
    assert exported.status.message == "redis://:***@r:1/0 refused"


def test_a_readiness_error_names_the_url_without_its_password() -> None:
    async def failing() -> None:
        raise ConnectionError(f"redis://:{SECRET}@r:1/0 unreachable")

    ok, body = asyncio.run(run_checks([ReadinessCheck("redis", failing)]))
    assert not ok
    assert body["redis"]["error"] == "ConnectionError: redis://:***@r:1/0 unreachable"


def test_a_bad_database_url_is_reported_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import traceback

    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres:{SECRET}@p:5432/qt")
    with pytest.raises(DatabaseConfigError) as caught:
        load_database_settings("redaction-test")
    # The whole traceback, chained validation error included, is what a crash prints.
    printed = "".join(traceback.format_exception(caught.value))
    assert "DATABASE_URL='postgresql+psycopg://postgres:***@p:5432/qt'" in printed
    assert SECRET not in printed
