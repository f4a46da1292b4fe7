"""Bearer-token access: mutating routes need `QT_API_TOKEN`, reads, health and metrics stay open."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError

from backend.infra.observability._logging import SINK
from backend.infra.service import (
    AccessSettings,
    Service,
    SiblingBearerAuth,
    public,
    resources_of,
)
from tests.acceptance.harness import StubServer

TOKEN = "test-token-2b7e151628aed2a6abf7158809cf4f3c"
WRONG = "wrong-token-c0ffee-c0ffee-c0ffee-c0ffee"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Desk:
    """A tiny service with one route of each kind, and a record of what its handlers ran."""

    def __init__(self, kind: Literal["http", "worker"] = "http") -> None:
        self.placed: list[dict[str, Any]] = []
        self.service = Service("auth-test", kind=kind)
        app = self.service.app

        @app.post("/orders")
        async def place(body: dict[str, Any]) -> dict[str, Any]:
            self.placed.append(body)
            return {"placed": len(self.placed)}

        @app.get("/orders")
        async def orders() -> dict[str, Any]:
            return {"placed": len(self.placed)}

        @app.delete("/orders/{order_id}")
        async def cancel(order_id: str) -> dict[str, str]:
            return {"canceled": order_id}

        @app.post("/inbound")
        @public
        async def inbound() -> dict[str, bool]:
            return {"received": True}

        @app.post("/relay")
        async def relay(request: Request, url: str, own_header: bool = False) -> dict[str, Any]:
            http = resources_of(request).http
            assert http is not None
            headers = {"Authorization": "Bearer caller-chosen"} if own_header else None
            return dict((await http.get(url, headers=headers)).json())


@contextmanager
def running(desk: Desk) -> Iterator[TestClient]:
    with TestClient(desk.service.app) as client:
        yield client


@pytest.fixture
def with_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_API_TOKEN", TOKEN)
    monkeypatch.delenv("QT_AUTH_READS", raising=False)


def failures(reason: str) -> float:
    return REGISTRY.get_sample_value("http_auth_failures_total", {"reason": reason}) or 0.0


@pytest.mark.usefixtures("with_token")
def test_a_mutating_request_without_a_token_is_401_with_a_bearer_challenge() -> None:
    desk = Desk()
    with running(desk) as client:
        refused = client.post("/orders", json={"qty": "1"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "QT_API_TOKEN" in refused.json()["detail"]
    assert refused.json()["reason"] == "missing"
    assert desk.placed == []


@pytest.mark.usefixtures("with_token")
@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", TOKEN, f"Token {TOKEN}"]
)
def test_a_malformed_authorization_header_is_401(header: str) -> None:
    desk = Desk()
    with running(desk) as client:
        refused = client.post("/orders", json={}, headers={"Authorization": header})
    assert refused.status_code == 401
    assert refused.json()["reason"] == "malformed"
    assert "www-authenticate" in refused.headers
    assert desk.placed == []


@pytest.mark.usefixtures("with_token")
def test_a_wrong_token_is_403_and_the_handler_never_runs() -> None:
    desk = Desk()
    with running(desk) as client:
        for method, path in (("POST", "/orders"), ("DELETE", "/orders/o-1"), ("PUT", "/orders")):
            refused = client.request(
                method, path, json={"qty": "1"}, headers={"Authorization": f"Bearer {WRONG}"}
            )
            assert refused.status_code == 403, (method, path)
            assert refused.json()["reason"] == "invalid"
        # A token that only shares a prefix with the real one is just as wrong.
        prefix = client.post("/orders", json={}, headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
        assert prefix.status_code == 403
    assert desk.placed == []


@pytest.mark.usefixtures("with_token")
def test_the_right_token_is_let_through_whatever_the_scheme_case() -> None:
    desk = Desk()
    with running(desk) as client:
        assert client.post("/orders", json={"qty": "1"}, headers=BEARER).status_code == 200
        lower = client.post(
            "/orders", json={"qty": "2"}, headers={"authorization": f"bearer {TOKEN}"}
        )
        assert lower.status_code == 200
        assert client.delete("/orders/o-1", headers=BEARER).json() == {"canceled": "o-1"}
    assert desk.placed == [{"qty": "1"}, {"qty": "2"}]


@pytest.mark.usefixtures("with_token")
def test_reads_health_and_metrics_are_open_by_default() -> None:
    with running(Desk()) as client:
        assert client.get("/orders").status_code == 200
        assert client.head("/orders").status_code in (200, 405)
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/openapi.json").status_code == 200


@pytest.mark.usefixtures("with_token")
def test_with_auth_reads_every_read_needs_the_token_but_health_and_metrics_stay_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QT_AUTH_READS", "true")
    with running(Desk()) as client:
        assert client.get("/orders").status_code == 401
        assert client.get("/openapi.json").status_code == 401
        assert (
            client.get("/orders", headers={"Authorization": f"Bearer {WRONG}"}).status_code == 403
        )
        assert client.get("/orders", headers=BEARER).status_code == 200
        for path in ("/health/live", "/health/ready", "/health", "/metrics"):
            assert client.get(path).status_code == 200, path


def test_without_a_token_reads_are_served_mutations_refused_and_the_log_says_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    monkeypatch.delenv("QT_API_TOKEN", raising=False)
    desk = Desk()
    with running(desk) as client:
        assert client.get("/orders").status_code == 200
        assert client.get("/health/ready").status_code == 200
        for headers in ({}, BEARER, {"Authorization": "Bearer anything-at-all-here"}):
            refused = client.post("/orders", json={"qty": "1"}, headers=headers)
            assert refused.status_code == 503
            assert refused.json()["reason"] == "not_configured"
            assert "QT_API_TOKEN is not set" in refused.json()["detail"]
    assert desk.placed == []
    SINK.flush()
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    hints = [line for line in lines if line["message"].startswith("QT_API_TOKEN is not set")]
    assert len(hints) == 1
    assert hints[0]["level"] == "WARNING" and "secrets.token_urlsafe" in hints[0]["message"]


@pytest.mark.usefixtures("with_token")
def test_a_route_declared_public_is_open() -> None:
    with running(Desk()) as client:
        assert client.post("/inbound").json() == {"received": True}


@pytest.mark.usefixtures("with_token")
def test_refusals_are_counted_by_reason_and_logged_without_the_presented_token(
    log_lines: io.StringIO,
) -> None:
    before = {reason: failures(reason) for reason in ("missing", "malformed", "invalid")}
    with running(Desk()) as client:
        client.post("/orders", json={})
        client.post("/orders", json={}, headers={"Authorization": f"Basic {WRONG}"})
        client.post("/orders", json={}, headers={"Authorization": f"Bearer {WRONG}"})
        client.post("/orders", json={}, headers={"Authorization": f"Bearer {WRONG}"})
        metrics = client.get("/metrics").text
    assert failures("missing") - before["missing"] == 1
    assert failures("malformed") - before["malformed"] == 1
    assert failures("invalid") - before["invalid"] == 2
    # The refusal is measured under the route's template, never as an unmatched path.
    assert any(
        'http_request_method="POST"' in line and 'http_route="/orders"' in line
        for line in metrics.splitlines()
    )
    SINK.flush()
    output = log_lines.getvalue()
    assert WRONG not in output and TOKEN not in output
    refusals = [
        line
        for line in map(json.loads, output.splitlines())
        if line["message"] == "authentication failed"
    ]
    assert [line["reason"] for line in refusals] == ["missing", "malformed", "invalid", "invalid"]
    assert {line["http.route"] for line in refusals} == {"/orders"}


def test_a_short_token_is_refused_at_start_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QT_API_TOKEN", "hunter2-short")
    with pytest.raises(ValidationError) as caught:
        AccessSettings()
    assert "QT_API_TOKEN" in str(caught.value)
    assert "hunter2-short" not in str(caught.value)


@pytest.mark.usefixtures("with_token")
def test_a_worker_side_port_enforces_the_token_too() -> None:
    desk = Desk(kind="worker")
    with running(desk) as client:
        assert client.post("/orders", json={}).status_code == 401
        assert client.post("/orders", json={}, headers=BEARER).status_code == 200
        assert client.get("/health/live").status_code == 200


@pytest.mark.usefixtures("with_token")
def test_openapi_declares_the_bearer_scheme_on_operations_that_need_it() -> None:
    with running(Desk()) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The deployment's QT_API_TOKEN.",
    }
    paths = schema["paths"]
    assert paths["/orders"]["post"]["security"] == [{"bearerAuth": []}]
    assert paths["/orders/{order_id}"]["delete"]["security"] == [{"bearerAuth": []}]
    assert {"401", "403"} <= paths["/orders"]["post"]["responses"].keys()
    assert "security" not in paths["/orders"]["get"]
    assert "security" not in paths["/inbound"]["post"]


def _echo_app() -> FastAPI:
    app = FastAPI()

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, str | None]:
        return {"authorization": request.headers.get("authorization")}

    return app


@pytest.mark.usefixtures("with_token")
def test_the_shared_client_sends_the_token_to_sibling_services_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with StubServer(_echo_app()) as sibling, StubServer(_echo_app()) as outsider:
        monkeypatch.setenv("EXECUTION_URL", sibling.url)
        with running(Desk()) as client:
            to_sibling = client.post(
                "/relay", params={"url": f"{sibling.url}/echo"}, headers=BEARER
            )
            to_outsider = client.post(
                "/relay", params={"url": f"{outsider.url}/echo"}, headers=BEARER
            )
            # Same host, another port: another origin, so no token either.
            assert sibling.port != outsider.port
            own = client.post(
                "/relay",
                params={"url": f"{sibling.url}/echo", "own_header": "true"},
                headers=BEARER,
            )
    assert to_sibling.json() == {"authorization": f"Bearer {TOKEN}"}
    assert to_outsider.json() == {"authorization": None}
    assert own.json() == {"authorization": "Bearer caller-chosen"}


@pytest.mark.usefixtures("with_token")
def test_the_shared_client_follows_a_sibling_url_changed_after_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with StubServer(_echo_app()) as first, StubServer(_echo_app()) as second:
        monkeypatch.setenv("RISK_SAFETY_URL", first.url)
        with running(Desk()) as client:
            assert client.post(
                "/relay", params={"url": f"{second.url}/echo"}, headers=BEARER
            ).json() == {"authorization": None}
            monkeypatch.setenv("RISK_SAFETY_URL", second.url)
            assert client.post(
                "/relay", params={"url": f"{second.url}/echo"}, headers=BEARER
            ).json() == {"authorization": f"Bearer {TOKEN}"}
            assert client.post(
                "/relay", params={"url": f"{first.url}/echo"}, headers=BEARER
            ).json() == {"authorization": None}


def _cookie_app() -> FastAPI:
    app = FastAPI()

    @app.get("/set")
    async def set_cookie(response: Response) -> dict[str, bool]:
        response.set_cookie("session", "sibling-chose-this")
        return {"set": True}

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, str | None]:
        return {"cookie": request.headers.get("cookie")}

    return app


@pytest.mark.usefixtures("with_token")
def test_the_shared_client_keeps_no_cookie_a_sibling_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with StubServer(_cookie_app()) as sibling:
        monkeypatch.setenv("EXECUTION_URL", sibling.url)
        with running(Desk()) as client:
            client.post("/relay", params={"url": f"{sibling.url}/set"}, headers=BEARER)
            echoed = client.post("/relay", params={"url": f"{sibling.url}/echo"}, headers=BEARER)
    assert echoed.json() == {"cookie": None}


def test_the_sibling_auth_follows_a_url_variable_set_changed_and_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = SiblingBearerAuth(SecretStr(TOKEN))

    def sent(url: str) -> str | None:
        request = next(auth.auth_flow(httpx.Request("POST", url)))
        header = request.headers.get("Authorization")
        # The direct path asks `header_for`: always what the flow adds.
        assert auth.header_for(httpx.URL(url)) == header
        return header

    monkeypatch.delenv("EXECUTION_URL", raising=False)
    assert sent("http://127.0.0.1:8002/orders") == f"Bearer {TOKEN}"
    monkeypatch.setenv("EXECUTION_URL", "http://127.0.0.1:1111")
    assert sent("http://127.0.0.1:1111/orders") == f"Bearer {TOKEN}"
    assert sent("http://127.0.0.1:8002/orders") is None
    monkeypatch.setenv("EXECUTION_URL", "http://127.0.0.1:2222")
    assert sent("http://127.0.0.1:1111/orders") is None
    assert sent("http://127.0.0.1:2222/orders") == f"Bearer {TOKEN}"
    monkeypatch.delenv("EXECUTION_URL")
    assert sent("http://127.0.0.1:2222/orders") is None
    assert sent("http://127.0.0.1:8002/orders") == f"Bearer {TOKEN}"
    assert sent("http://example.com/hook") is None
    assert SiblingBearerAuth(None).header_for(httpx.URL("http://127.0.0.1:8002/")) is None
