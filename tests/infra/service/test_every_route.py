"""Every route of every service is born closed: a new mutating endpoint cannot slip in open.

Walks `app.routes` of each `microservices/*/service.py:create_service()`. The refusal happens
before the route runs, so the services are not started (no lifespan, no Redis, no database).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from backend.infra.service import Service
from backend.infra.service._auth import READ_METHODS, effective_routes, is_open_path, is_public

ROOT = Path(__file__).resolve().parents[3]
SERVICE_MODULES = sorted(
    f"microservices.{path.parent.name}.service"
    for path in (ROOT / "microservices").glob("*/service.py")
)
TOKEN = "walk-token-6bc1bee22e409f96e93d7e117393172a"
_PARAMETER = re.compile(r"{([^}:]+)(?::([^}]+))?}")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QT_API_TOKEN", TOKEN)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'walk.db'}")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("AI_MODEL_DIR", str(tmp_path / "models"))


def _service(module: str) -> Service:
    service: Service = importlib.import_module(module).create_service()
    return service


def _concrete(path: str) -> str:
    """A request path for a route template: each parameter gets a value its convertor takes."""
    return _PARAMETER.sub(lambda m: "1" if m.group(2) in ("int", "float") else "probe", path)


def _operations(routes: list[BaseRoute]) -> Iterator[tuple[str, str, Any]]:
    """(method, path template, route) of every route the app serves (included routers too)."""
    for route in effective_routes(routes):
        for method in sorted(route.methods or ()):
            yield method, route.path_format, route


def test_the_walk_finds_every_service() -> None:
    assert len(SERVICE_MODULES) >= 6, SERVICE_MODULES


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_every_mutating_route_is_401_without_a_token_and_403_with_a_wrong_one(
    module: str,
) -> None:
    app = _service(module).app
    client = TestClient(app)  # not entered: the lifespan (Redis, database) never runs
    checked = []
    for method, path, route in _operations(app.routes):
        if method in READ_METHODS or is_public(route):
            continue
        target = _concrete(path)
        missing = client.request(method, target, json={})
        assert missing.status_code == 401, (method, path, missing.status_code, missing.text)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = client.request(
            method, target, json={}, headers={"Authorization": "Bearer not-the-token-at-all"}
        )
        assert wrong.status_code == 403, (method, path, wrong.status_code, wrong.text)
        checked.append(f"{method} {path}")
    public = [f"{m} {p}" for m, p, r in _operations(app.routes) if is_public(r)]
    assert public == [], f"{module} declares mutating routes public: {public}"
    if module.endswith(("execution.service", "risk_safety.service", "trading_bot.service")):
        assert checked, f"{module} has no mutating route?"


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_with_auth_reads_every_read_route_but_health_and_metrics_needs_the_token(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QT_AUTH_READS", "true")
    app = _service(module).app
    client = TestClient(app)
    for method, path, route in _operations(app.routes):
        if method != "GET" or is_public(route) or is_open_path(path):
            continue
        assert client.get(_concrete(path)).status_code == 401, path
    assert client.get("/health/live").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize("module", SERVICE_MODULES)
def test_openapi_declares_the_bearer_scheme_on_every_mutating_operation(module: str) -> None:
    service = _service(module)
    app = service.app
    schema = TestClient(app).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    operations = 0
    for route in effective_routes(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operations += 1
            operation = schema["paths"][route.path_format][method.lower()]
            if method in READ_METHODS:
                assert "security" not in operation, (method, route.path)
            else:
                assert operation["security"] == [{"bearerAuth": []}], (method, route.path)
    if service.kind == "http":
        assert operations, f"{module} has no API operation?"
