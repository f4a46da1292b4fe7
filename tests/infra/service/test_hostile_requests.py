"""No request can make any service answer 5xx: every route of every service, hostile inputs.

Each `microservices/*/service.py:create_service()` runs in-process against the real Redis and
its own SQLite file, with the bearer token (so requests reach validation and the routes).
Every route (from the app's routes and its OpenAPI schema) gets, in each path parameter,
each query parameter, each field of its body (nested ones and array items too) and as the
whole body: numbers JSON or floats cannot hold (`1e999999`, `NaN`, a 10^6-digit integer),
the same as strings, 1 MB strings, lone surrogates, 10 000-deep nesting, wrong types, null,
arrays for objects, huge integers (2**70), invalid JSON and invalid UTF-8 (in a URL, 60 000
characters stand for the 10^6 a body gets). Every answer must
be below 500, and every 4xx a small JSON body that names the problem (a 422 names the field),
echoes no huge input and holds no secret.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.infra.service import SERVICES, Service
from backend.infra.service._auth import effective_routes
from backend.infra.service._errors import validation_error_body
from tests.support.inprocess import API_TOKEN, ServiceHarness
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[3]
SERVICE_MODULES = sorted(
    f"microservices.{path.parent.name}.service"
    for path in (ROOT / "microservices").glob("*/service.py")
)
APPROVAL_SECRET = "approval-secret-3f9c2a7be81d4c06a5e2f1b7c9d8e0a4"
_PARAMETER = re.compile(r"{([^}:]+)(?::([^}]+))?}")
_HOLE = "__hostile__"

MEGABYTE = 1 << 20
DEEP = 10_000
HUGE_INT = str(2**70)
MILLION_DIGITS = "9" * 10**6
LONGEST_URL_DIGITS = "9" * 60_000
"""A URL cannot carry 10^6 digits: HTTP clients refuse URLs over 64 KiB, and uvicorn refuses a
request line over 16 KiB before any route runs. In-process, 60 000 characters reach the route."""

VALUES: dict[str, str] = {
    "raw 1e999999": "1e999999",
    "raw -1e999999": "-1e999999",
    "raw 1e-999999": "1e-999999",
    "raw NaN": "NaN",
    "raw Infinity": "Infinity",
    "raw -Infinity": "-Infinity",
    "string 1e999999": '"1e999999"',
    "string -1e999999": '"-1e999999"',
    "string NaN": '"NaN"',
    "string sNaN": '"sNaN"',
    "string Infinity": '"Infinity"',
    "string -Infinity": '"-Infinity"',
    "raw 10^6-digit integer": MILLION_DIGITS,
    "10^6-digit string": f'"{MILLION_DIGITS}"',
    "1 MB string": '"' + "x" * MEGABYTE + '"',
    "raw 2**70": HUGE_INT,
    "raw -2**70": f"-{HUGE_INT}",
    "string 2**70": f'"{HUGE_INT}"',
    "raw 2**70 as a float": f"{HUGE_INT}.5",
    "lone surrogate": '"\\ud800"',
    "NUL character": '"a\\u0000b"',
    "empty string": '""',
    "null": "null",
    "true": "true",
    "zero": "0",
    "minus one": "-1",
    "empty array": "[]",
    "array of an object": "[{}]",
    "empty object": "{}",
    "array 10 000 deep": "[" * DEEP + "]" * DEEP,
    "object 10 000 deep": '{"a":' * DEEP + "1" + "}" * DEEP,
}
RAW_BODIES: dict[str, bytes] = {
    "invalid JSON": b'{"a": ',
    "not JSON at all": b"garbage",
    "invalid UTF-8": b'{"symbol": "\xff\xfe"}',
    "UTF-8 of a surrogate": b'{"symbol": "\xed\xa0\x80"}',
    "trailing garbage": b"{} {}",
}
CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream")
AUTHORIZATIONS = (
    "Bearer " + "x" * 60_000,
    "Bearer \u00ff\u00fe",
    "Bearer",
    "Basic dXNlcjpwYXNz",
    "Bearer " + API_TOKEN + "\u00ff",
)
PATH_VALUES: dict[str, str] = {
    "2**70": HUGE_INT,
    "-2**70": f"-{HUGE_INT}",
    "1e999999": "1e999999",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "60 000 digits": LONGEST_URL_DIGITS,
    "60 000 characters": "x" * 60_000,
    "invalid UTF-8": "%FF%FE",
    "UTF-8 of a surrogate": "%ED%A0%80",
    "NUL": "a%00b",
    "space and quotes": "%20%22%27",
}
QUERY_VALUES: dict[str, str] = {**PATH_VALUES, "empty": ""}
CHEAP: dict[str, Any] = {"total_steps": 16}
"""Valid values that keep the work a request starts small: each of rl-training's accepted jobs
trains (for real) 16 steps, not the default 10 000, so the queued jobs do not compete with
the walk for the interpreter."""


@pytest.fixture
def walk(
    harness_database: ServiceHarness,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> ServiceHarness:
    """The harness, on SQLite or a fresh PostgreSQL database (which refuses some text SQLite
    stores), plus what lets every service start quickly and alone."""
    monkeypatch.setenv("RISK_APPROVAL_SECRET", APPROVAL_SECRET)
    monkeypatch.setenv("AI_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("AI_TRAIN_STEPS", "500")
    # Siblings are nowhere: a service that calls one gets a refused connection, at once.
    for spec in SERVICES:
        monkeypatch.setenv(spec.url_variable, "http://127.0.0.1:9")
    return harness_database


class Route:
    """One operation: method, path template, path and query parameter names, body schema."""

    def __init__(self, method: str, path: str, operation: dict[str, Any] | None) -> None:
        self.method = method
        self.path = path
        operation = operation or {}
        parameters = operation.get("parameters", [])
        self.path_parameters = [p["name"] for p in parameters if p["in"] == "path"]
        self.query = {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}
        content = operation.get("requestBody", {}).get("content", {})
        self.body: dict[str, Any] | None = content.get("application/json", {}).get("schema")

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def _routes(app: Any) -> list[Route]:
    schema = TestClient(app).get("/openapi.json").json()
    routes = []
    for route in effective_routes(app.routes):
        for method in sorted(route.methods or ()):
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            routes.append(Route(method, route.path_format, operation))
    return routes


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _valid(schema: dict[str, Any], components: dict[str, Any], name: str = "") -> Any:
    """A value `schema` accepts (as far as its shape goes), so that a hostile value in one
    field meets valid neighbours and travels as deep into the route as it can."""
    schema = _resolve(schema, components)
    if name in CHEAP:
        return CHEAP[name]
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        return _valid(options[0], components, name) if options else None
    if "examples" in schema:
        return schema["examples"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {
            key: _valid(sub, components, key) for key, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [_valid(schema.get("items", {}), components, name)] * schema.get("minItems", 1)
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return "1"
    if kind == "boolean":
        return False
    return {"symbol": "BTCUSDT", "side": "BUY"}.get(name, f"walk-{name}"[:16])


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every place in `value` a hostile value can go: each field, each object, the first item."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaves(sub, (*path, key))
    elif isinstance(value, list) and value:
        yield from _leaves(value[0], (*path, 0))


def _with_hole(value: Any, path: tuple[str | int, ...]) -> Any:
    if not path:
        return _HOLE
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _with_hole(value[head], rest)}
    assert isinstance(value, list) and isinstance(head, int)
    return [_with_hole(value[head], rest), *value[1:]]


def _body(base: Any, path: tuple[str | int, ...], fragment: str) -> bytes:
    """`base` as JSON text with the value at `path` replaced by the raw JSON `fragment`."""
    text = json.dumps(_with_hole(base, path))
    return text.replace(json.dumps(_HOLE), fragment, 1).encode("utf-8")


def _target(route: Route, values: dict[str, str] | None = None) -> str:
    values = values or {}

    def fill(match: re.Match[str]) -> str:
        if match.group(1) in values:
            return values[match.group(1)]
        return "1" if match.group(2) in ("int", "float") else "walk-probe"

    return _PARAMETER.sub(fill, route.path)


def check(response: httpx.Response, what: str) -> None:
    """The guarantee: below 500; a 4xx is small JSON naming the problem, with no secret."""
    status = response.status_code
    if status == 503 and response.request.url.path in ("/health", "/health/ready"):
        # Not ready is an answer, not a failure: clm, for one, is not ready without ai-engine.
        assert response.json()["failing"], f"{what}: a 503 naming no failing check"
        return
    if status == 503 and "dependency" in response.json():
        # A dependency down (clm's ai-engine is not running here): named and retryable.
        assert response.headers["retry-after"], f"{what}: a 503 without Retry-After"
        return
    assert status < 500, f"{what}: {status} {response.text[:500]}"
    assert len(response.content) < 64 * 1024, f"{what}: a {len(response.content)}-byte answer"
    for secret in (API_TOKEN, APPROVAL_SECRET):
        assert secret not in response.text, f"{what}: the answer holds a secret"
    if status < 400 or response.request.method == "HEAD":
        return
    body = response.json()
    assert isinstance(body, dict) and body.get("detail"), f"{what}: {status} {body}"
    if status == 422 and isinstance(body["detail"], list):
        for error in body["detail"]:
            assert isinstance(error["loc"], list) and error["msg"], f"{what}: {error}"
            if "body" in error["loc"] and len(error["loc"]) > 1:
                assert error["loc"][0] == "body", f"{what}: {error}"


@contextmanager
def _start(module: str, walk: ServiceHarness) -> Iterator[tuple[Service, TestClient]]:
    service: Service = importlib.import_module(module).create_service()
    with TestClient(service.app, headers=walk.auth_headers) as client:
        # Started, not necessarily ready: ai-engine is not ready until its model is loaded,
        # and the routes must hold whatever state the service is in.
        wait_until(
            lambda: client.get("/health/ready").json()["checks"]["startup"]["ok"],
            60,
            f"{service.name} to start",
        )
        yield service, client


def test_the_walk_finds_every_service_and_their_bodies() -> None:
    assert len(SERVICE_MODULES) >= 6, SERVICE_MODULES


@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_no_hostile_request_gets_a_5xx_and_every_refusal_is_json_naming_the_problem(
    module: str, walk: ServiceHarness
) -> None:
    with _start(module, walk) as (service, client):
        schema = client.get("/openapi.json").json()
        components = schema.get("components", {}).get("schemas", {})
        sent = 0
        for route in _routes(service.app):
            base = _valid(route.body, components) if route.body else {"walk": 1}
            target = _target(route)
            # The whole body, then each field of a valid body, hostile.
            bodies = {f"body {name}": f.encode() for name, f in VALUES.items()}
            bodies |= {f"body {name}": raw for name, raw in RAW_BODIES.items()}
            for leaf in _leaves(base) if route.body else ():
                for name, fragment in VALUES.items():
                    bodies[f"{leaf} = {name}"] = _body(base, leaf, fragment)
            for what, content in bodies.items():
                response = client.request(
                    route.method,
                    target,
                    content=content,
                    headers={"Content-Type": "application/json"},
                )
                check(response, f"{route} {what}")
                sent += 1
            # Not declared JSON: FastAPI hands the raw bytes to validation.
            for kind in CONTENT_TYPES:
                for what, raw in RAW_BODIES.items():
                    response = client.request(
                        route.method, target, content=raw, headers={"Content-Type": kind}
                    )
                    check(response, f"{route} {kind} {what}")
                    sent += 1
            for header in AUTHORIZATIONS:
                response = client.request(
                    route.method,
                    target,
                    content=b"{}",
                    headers={"Authorization": header.encode("latin-1")},
                )
                check(response, f"{route} Authorization {header[:20]!r}")
                sent += 1
            valid = json.dumps(base).encode()
            for parameter in route.path_parameters:
                for name, value in PATH_VALUES.items():
                    hostile = _target(route, {parameter: value})
                    response = client.request(route.method, hostile, content=valid)
                    check(response, f"{route} path {parameter} = {name}")
                    sent += 1
            for parameter in route.query:
                for name, value in QUERY_VALUES.items():
                    url = f"{target}?{quote(parameter)}={value}"
                    response = client.request(route.method, url, content=valid)
                    check(response, f"{route} query {parameter} = {name}")
                    sent += 1
            response = client.request(route.method, f"{target}?{quote('x' * 1000)}=1&=&&")
            check(response, f"{route} unknown query")
        assert sent, f"{module}: no request sent?"
        live = client.get("/health/live")
        assert live.status_code == 200, f"{service.name} did not survive the walk: {live.text}"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()), max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


# The service runs beside the draws, in its own thread: span ids and retry jitter drawn from
# the `random` module there (as the OpenTelemetry SDK draws its ids) move its state while
# Hypothesis draws, which it reports as randomness inside a strategy. No strategy uses it.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("module", [m for m in SERVICE_MODULES if "bridge" not in m])
def test_random_json_in_any_body_field_never_gets_a_5xx(module: str, walk: ServiceHarness) -> None:
    with _start(module, walk) as (service, client):
        components = client.get("/openapi.json").json().get("components", {}).get("schemas", {})
        shaped = [
            (route, _valid(route.body, components))
            for route in _routes(service.app)
            if route.body is not None
        ]
        if not shaped:
            return

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(st.data(), json_values)
        def property_(data: st.DataObject, value: Any) -> None:
            route, base = data.draw(st.sampled_from(shaped))
            leaves = list(_leaves(base))
            leaf = data.draw(st.sampled_from(leaves))
            # json.dumps writes NaN/Infinity as the raw tokens Python's parser reads back.
            content = _body(base, leaf, json.dumps(value))
            response = client.request(
                route.method,
                _target(route),
                content=content,
                headers={"Content-Type": "application/json"},
            )
            check(response, f"{route} {leaf} = {value!r}"[:300])

        property_()


def test_the_422_body_describes_inputs_json_cannot_carry_and_hides_credentials() -> None:
    errors = [
        {"type": "t", "loc": ("body", "quantity"), "msg": "m", "input": float("inf")},
        {"type": "t", "loc": ("body", "symbol"), "msg": "m", "input": "x" * MEGABYTE},
        {"type": "t", "loc": ("body", "reason"), "msg": "m", "input": "\ud800"},
        {"type": "t", "loc": ("query", "limit"), "msg": "m", "input": 2**4000},
        {"type": "t", "loc": ("body", "approval", "token"), "msg": "m", "input": "s3cr3t"},
        {"type": "t", "loc": ("body", 0), "msg": "m" * 10_000, "ctx": {"error": ValueError("v")}},
    ]
    body = validation_error_body(errors)
    text = json.dumps(body, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")
    assert len(text) < 2_000
    assert "s3cr3t" not in text
    assert [e["loc"] for e in body["detail"]] == [
        ["body", "quantity"],
        ["body", "symbol"],
        ["body", "reason"],
        ["query", "limit"],
        ["body", "approval", "token"],
        ["body", 0],
    ]
    assert body["detail"][0]["input"] == "a non-finite number (inf)"
    assert body["detail"][1]["input"] == f"a string of {MEGABYTE} characters"
    assert body["detail"][5]["ctx"] == {"error": "v"}
