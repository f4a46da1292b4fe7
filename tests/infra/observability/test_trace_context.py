"""W3C Trace Context (Level 2), rule by rule: what an incoming request continues, restarts,
keeps or drops, and what the service forwards on its own outgoing calls."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.infra.observability import inject_trace_context, instrument_fastapi

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def client(_tracing_runtime: Any) -> TestClient:
    app = FastAPI()
    instrument_fastapi(app)

    @app.get("/forward")
    async def forward() -> dict[str, str]:
        # What an outgoing call from inside the request would carry.
        return dict(inject_trace_context({}))

    return TestClient(app)


def forwarded(client: TestClient, headers: list[tuple[str, str]]) -> dict[str, str]:
    response = client.get("/forward", headers=headers)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def continued(out: dict[str, str]) -> bool:
    return out["traceparent"].split("-")[1] == TRACE_ID


# --- traceparent ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        f" {VALID}",
        f"{VALID} ",
        f"\t{VALID}\t",
        f"cc-{TRACE_ID}-{PARENT_ID}-01",
        f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-will-be-like",
        f"01-{TRACE_ID}-{PARENT_ID}-09",
    ],
)
def test_valid_traceparents_continue_the_trace(client: TestClient, value: str) -> None:
    out = forwarded(client, [("traceparent", value)])
    assert continued(out)
    assert out["traceparent"].startswith("00-"), "we forward the version we speak"


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        f"cc-{TRACE_ID}-{PARENT_ID}-01what-the-future",
        f"0-{TRACE_ID}-{PARENT_ID}-01",
        f"000-{TRACE_ID}-{PARENT_ID}-01",
        f".0-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID.upper()}-01",
        f"00-{TRACE_ID}0-{PARENT_ID}-01",
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}0-01",
        f"00-{TRACE_ID}-{PARENT_ID}-0",
        f"00-{TRACE_ID}-{PARENT_ID}-001",
        f"00-{TRACE_ID}-{PARENT_ID}-.1",
        f"00-{TRACE_ID}-{PARENT_ID}-0G",
    ],
)
def test_invalid_traceparents_restart_the_trace_and_drop_tracestate(
    client: TestClient, value: str
) -> None:
    out = forwarded(client, [("traceparent", value), ("tracestate", "foo=1")])
    assert not continued(out)
    assert "tracestate" not in out, "tracestate is not parsed when traceparent is invalid"


def test_duplicated_traceparent_headers_restart_the_trace(client: TestClient) -> None:
    other = f"00-{'1' * 32}-{PARENT_ID}-01"
    out = forwarded(client, [("traceparent", VALID), ("traceparent", other)])
    assert out["traceparent"].split("-")[1] not in (TRACE_ID, "1" * 32)


def test_unknown_flags_are_not_forwarded_and_the_random_flag_is(client: TestClient) -> None:
    out = forwarded(client, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-ff")])
    assert out["traceparent"].endswith("-03")
    out = forwarded(client, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-02")])
    assert out["traceparent"].endswith("-02")


# --- tracestate -----------------------------------------------------------------------------


def state(out: dict[str, str]) -> list[str]:
    return [m.strip() for m in out.get("tracestate", "").split(",") if m.strip()]


def test_tracestate_is_forwarded(client: TestClient) -> None:
    out = forwarded(client, [("traceparent", VALID), ("tracestate", "foo=1,bar=2")])
    assert state(out) == ["foo=1", "bar=2"]


def test_several_tracestate_headers_are_one_list(client: TestClient) -> None:
    out = forwarded(
        client, [("traceparent", VALID), ("tracestate", "foo=1"), ("tracestate", "bar=2")]
    )
    assert state(out) == ["foo=1", "bar=2"]


def test_an_empty_tracestate_is_not_forwarded(client: TestClient) -> None:
    out = forwarded(client, [("traceparent", VALID), ("tracestate", "")])
    assert continued(out) and "tracestate" not in out


def test_whitespace_and_empty_members_are_skipped(client: TestClient) -> None:
    out = forwarded(client, [("traceparent", VALID), ("tracestate", " foo=1 ,\t, bar=2\t")])
    assert state(out) == ["foo=1", "bar=2"]


def test_all_allowed_characters_are_kept(client: TestClient) -> None:
    value = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ",=")
    key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
    out = forwarded(client, [("traceparent", VALID), ("tracestate", f"{key}={value}")])
    assert state(out) == [f"{key}={value}"]


@pytest.mark.parametrize(
    "tracestate",
    [
        "foo=1,foo=2",
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "foo@=1,bar=2",
        "@foo=1,bar=2",
        "foo@@bar=1,bar=2",
        "foo@bar@baz=1,bar=2",
        "foo=bar=baz",
        "foo=,bar=3",
        "foo=1,bar",
        "k" * 257 + "=1",
        "t" * 242 + "@v=1",
        "t@" + "v" * 15 + "=1",
        ",".join(f"k{n}=1" for n in range(33)),
    ],
)
def test_an_invalid_tracestate_is_dropped_and_the_trace_continues(
    client: TestClient, tracestate: str
) -> None:
    out = forwarded(client, [("traceparent", VALID), ("tracestate", tracestate)])
    assert continued(out)
    assert "tracestate" not in out


@pytest.mark.parametrize(
    "tracestate",
    [
        "k" * 256 + "=1",
        "t" * 241 + "@" + "v" * 14 + "=1",
        "0tenant@sys=1",
        ",".join(f"k{n}=1" for n in range(32)),
    ],
)
def test_tracestate_at_the_limits_is_kept(client: TestClient, tracestate: str) -> None:
    out = forwarded(client, [("traceparent", VALID), ("tracestate", tracestate)])
    assert state(out) == tracestate.split(",")
