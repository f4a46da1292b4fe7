"""Log lines per the specification and an SRE's needs: trace flags, one access line per request
per side (also under `uvicorn module:app`), and no secrets in any field."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

from opentelemetry import baggage, context

from backend.infra.observability import get_logger, get_tracer
from backend.infra.observability._config import load_config
from backend.infra.observability._logging import SINK, JsonFormatter
from backend.infra.observability._redact import configure_scrubbing
from tests.support.procs import free_port, running, wait_until


def parsed(buffer: io.StringIO, logger: str) -> list[dict[str, object]]:
    SINK.flush()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == logger]


def test_each_line_carries_the_trace_flags(log_lines) -> None:  # type: ignore[no-untyped-def]
    log = get_logger("flags")
    with get_tracer("t").start_as_current_span("sampled"):
        log.info("inside")
    log.info("outside")
    inside, outside = parsed(log_lines, "flags")
    assert int(str(inside["trace_flags"]), 16) & 0x01, "sampled"
    assert outside["trace_flags"] is None


def test_secret_fields_messages_and_urls_are_scrubbed(log_lines) -> None:  # type: ignore[no-untyped-def]
    log = get_logger("scrub")
    log.info(
        "login with password=hunter2 at https://api.example.com/x?token=abc",
        api_key="k-123",
        user="bob",
        target="https://h/cb?sig=s1&page=2",
    )
    logging_extra = get_logger("scrub").logger
    logging_extra.warning("cookie set", extra={"session_cookie": "c-1", "attempt": 1})
    SINK.flush()
    output = log_lines.getvalue()
    for secret in ("hunter2", "k-123", "abc", "s1", "c-1"):
        assert secret not in output
    first, second = parsed(log_lines, "scrub")
    assert (
        first["message"]
        == "login with password=REDACTED at https://api.example.com/x?token=REDACTED"
    )
    assert first["api_key"] == "REDACTED" and first["user"] == "bob"
    assert second["session_cookie"] == "REDACTED" and second["attempt"] == 1


def test_scrubbing_can_be_extended_and_switched_off(log_lines) -> None:  # type: ignore[no-untyped-def]
    try:
        configure_scrubbing(True, ("account[._]?number",))
        get_logger("scrub-ext").info("x", account_number="12345678")
        configure_scrubbing(False)
        get_logger("scrub-ext").info("y password=visible", api_key="visible")
    finally:
        configure_scrubbing(True)
    extended, off = parsed(log_lines, "scrub-ext")
    assert extended["account_number"] == "REDACTED"
    assert off["api_key"] == "visible" and off["message"] == "y password=visible"
    config = load_config(
        "s", env={"OBSERVABILITY_SCRUB": "false", "OBSERVABILITY_SCRUB_PATTERNS": "iban,pin"}
    )
    assert config.scrubbing is False and config.scrub_patterns == ("iban", "pin")


def test_baggage_reaches_log_lines_only_when_allow_listed(log_lines) -> None:  # type: ignore[no-untyped-def]
    import logging

    token = context.attach(
        baggage.set_baggage("user.email", "a@b.c", baggage.set_baggage("desk", "crypto"))
    )
    try:
        get_logger("bag").info("no allow-list")
        record = logging.LogRecord("bag", logging.INFO, __file__, 1, "allowed", None, None)
        fields = JsonFormatter({}, frozenset({"desk"})).to_fields(record)
    finally:
        context.detach(token)
    (line,) = parsed(log_lines, "bag")
    assert not any("baggage" in key or value == "crypto" for key, value in line.items())
    assert fields["baggage.desk"] == "crypto"
    assert "baggage.user.email" not in fields


def get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return int(r.status)


def test_one_access_line_per_request_per_side_under_the_uvicorn_cli(tmp_path: Path) -> None:
    port = free_port()
    args = ["-m", "uvicorn", "tests.infra.observability.cli_app:app", "--port", str(port)]
    with running(args, {}, tmp_path / "cli.log", port) as proc:
        assert get(port, "/items/1?q=2") == 200
        assert get(port, "/items/2") == 200
        assert get(port, f"/call?port={port}") == 200

        def access_lines() -> list[dict[str, object]]:
            lines = [json.loads(x) for x in proc.lines() if x.startswith("{")]
            return [x for x in lines if x["logger"] in ("access", "uvicorn.access")]

        lines = wait_until(lambda: len(access_lines()) >= 4 and access_lines(), what="access")
        output = proc.output()
    assert {x["logger"] for x in lines} == {"access"}, "uvicorn's own access line is silenced"
    assert sorted(str(x["url.path"]) for x in lines) == [
        "/call",
        "/items/1",
        "/items/1",
        "/items/2",
    ]
    assert all(int(str(x["trace_flags"]), 16) & 0x01 for x in lines)
    # The client side: httpx's one line per call, with the query string scrubbed.
    client = [
        x
        for x in (json.loads(line) for line in output.splitlines() if line.startswith("{"))
        if x["logger"] == "httpx"
    ]
    assert len(client) == 1 and "token=REDACTED" in str(client[0]["message"])
    assert "s3cr3t-t0ken" not in output
    assert "color_message" not in output


def test_client_access_lines_can_be_turned_down() -> None:
    assert load_config("s", env={"CLIENT_ACCESS_LOG": "false"}).client_access_log is False
    assert load_config("s", env={}).client_access_log is True


def test_access_line_parts_are_reused_within_a_bound_and_follow_the_resource() -> None:
    from backend.infra.observability import _middleware, _state

    def line(path: str, trace_id: int = 0) -> dict[str, object]:
        record = (1.5, "GET", path, "/items/{id}", 200, 0.00125, trace_id, 7, 1, ("10.0.0.1", 1))
        parsed_line: dict[str, object] = json.loads(_middleware._format_access_line(record))
        return parsed_line

    for n in range(_middleware._LINE_PARTS_MAX + 10):
        assert line(f"/items/{n}")["url.path"] == f"/items/{n}"
    assert len(_middleware._LINE_PARTS) <= _middleware._LINE_PARTS_MAX
    first = line('/items/"q"', trace_id=0xABC)
    assert first["message"] == 'GET /items/"q" 200'
    assert first["trace_id"] == f"{0xABC:032x}" and first["trace_flags"] == "01"
    assert first["duration_ms"] == 1.25 and first["client.address"] == "10.0.0.1"
    previous = _state.RESOURCE_JSON[0]
    try:
        _state.RESOURCE_JSON[0] = '"service.name":"renamed"'
        assert line('/items/"q"')["service.name"] == "renamed"  # not the cached part's
    finally:
        _state.RESOURCE_JSON[0] = previous


def test_info_lines_are_formatted_later_with_what_was_current_when_logged() -> None:
    import logging

    from backend.infra.observability._logging import LineSink, SinkHandler

    out = io.StringIO()
    sink = LineSink(lambda: out)
    handler = SinkHandler(JsonFormatter({}, frozenset({"desk"})), sink)
    logger = logging.getLogger("deferred-test")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        items = ["a"]
        token = context.attach(baggage.set_baggage("desk", "crypto"))
        with get_tracer("t").start_as_current_span("decide") as span:
            logger.info("first %s", items)
            trace_id = f"{span.get_span_context().trace_id:032x}"
        context.detach(token)
        items.append("b")
        # Queued, not written: the caller paid for a tuple and an append.
        assert out.getvalue() == ""
        logger.info("second")
        logger.warning("third")  # at once, after what was queued before it
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["message"] for line in lines] == ["first ['a']", "second", "third"]
        first, second, _ = lines
        assert first["trace_id"] == trace_id and first["baggage.desk"] == "crypto"
        assert second["trace_id"] is None and "baggage.desk" not in second
        logger.info("fourth")
        sink.flush()
        assert json.loads(out.getvalue().splitlines()[-1])["message"] == "fourth"
    finally:
        logger.removeHandler(handler)
        handler.retire()
        sink._stop.set()


def test_uvicorn_lines_and_errors_are_written_at_once(log_lines) -> None:  # type: ignore[no-untyped-def]
    import logging

    uvicorn_logger = logging.getLogger("uvicorn.error")
    level = uvicorn_logger.level
    uvicorn_logger.setLevel(logging.INFO)  # as a served app has it; other tests change it
    try:
        get_logger("app").info("queued")
        uvicorn_logger.info("Finished server process [1]")
    finally:
        uvicorn_logger.setLevel(level)
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("app").info("handled", exc_info=True)
    # Read without the fixture's flush: only what was written at once is there.
    written = [json.loads(line) for line in io.StringIO.getvalue(log_lines).splitlines()]
    assert [line["message"] for line in written] == [
        "queued",
        "Finished server process [1]",
        "handled",
    ]
    assert written[2]["exception"]["type"] == "ValueError"
