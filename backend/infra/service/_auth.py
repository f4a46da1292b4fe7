"""Bearer-token access control: one middleware for every route of every service, one client auth.

Every request whose method is not GET, HEAD or OPTIONS needs `Authorization: Bearer
<QT_API_TOKEN>`; reads too when `QT_AUTH_READS=true`. `/health`, `/health/*` and `/metrics`
are always open (probes and scrapers carry no token). Missing or malformed header: 401 with
`WWW-Authenticate: Bearer`; a wrong token: 403; no token configured: 503 for every caller, so
a service started without one is never an open control plane. The check is a middleware rather
than a route dependency, so it holds for routes added any way, and nothing of a refused request
(not even its body) is read.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

import httpx
import orjson
from fastapi import FastAPI
from prometheus_client import Counter
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.infra.observability import get_logger

from ._settings import PORTS, service_url

TOKEN_VARIABLE = "QT_API_TOKEN"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_TOKEN_LENGTH = 16
SECURITY_SCHEME = "bearerAuth"

AUTH_FAILURES = Counter(
    "http_auth_failures_total",
    "Requests refused by access control, by reason (missing, malformed, invalid, not_configured).",
    ["reason"],
)

_log = get_logger("backend.infra.service.auth")
_PUBLIC_ATTRIBUTE = "__qt_public__"
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})

F = TypeVar("F", bound=Callable[..., Any])


class AccessSettings(BaseSettings):
    """`QT_API_TOKEN` and `QT_AUTH_READS`, read once at start-up; a bad token is refused loudly."""

    # The token must never appear in a validation message.
    model_config = SettingsConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    api_token: SecretStr | None = Field(default=None, validation_alias=TOKEN_VARIABLE)
    auth_reads: bool = Field(default=False, validation_alias="QT_AUTH_READS")

    @field_validator("api_token", mode="before")
    @classmethod
    def _check_token(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        value = value.strip()
        if not value:
            return None
        if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(
                f"{TOKEN_VARIABLE} must be at least {MIN_TOKEN_LENGTH} printable characters "
                "without blanks; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value


def public(endpoint: F) -> F:
    """Declare a route open to callers without a token (decorator on the endpoint function).

    For the rare route that must be reachable unauthenticated; no mutating route should be.
    """
    setattr(endpoint, _PUBLIC_ATTRIBUTE, True)
    return endpoint


def is_public(route: Any) -> bool:
    """True for a route whose endpoint was declared `public`."""
    return bool(getattr(getattr(route, "endpoint", None), _PUBLIC_ATTRIBUTE, False))


def effective_routes(routes: Iterable[BaseRoute]) -> Iterator[Any]:
    """Every route an app serves, included routers flattened.

    Current FastAPI keeps an included router as one lazy entry of `app.routes`; its
    `iter_route_contexts` yields each route as served (prefix applied), with `path_format`,
    `methods`, `endpoint`, `matches()` and `original_route`.
    """
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazy included routers: app.routes is already flat
        yield from routes
        return
    yield from iter_route_contexts(list(routes))


def is_open_path(path: str) -> bool:
    """Health probes and the metrics scrape never need a token."""
    return path == "/metrics" or path == "/health" or path.startswith("/health/")


class Authenticator:
    """Decides whether a request's `Authorization` header carries the configured token."""

    def __init__(self, settings: AccessSettings) -> None:
        token = settings.api_token
        self._token = token.get_secret_value().encode() if token is not None else None
        self.auth_reads = settings.auth_reads

    @property
    def configured(self) -> bool:
        return self._token is not None

    def requires_token(self, method: str) -> bool:
        return self.auth_reads or method not in READ_METHODS

    def failure(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """None when the headers carry the token, else why not (the metric's reason label)."""
        if self._token is None:
            return "not_configured"
        raw = next((value for name, value in headers if name == b"authorization"), None)
        if raw is None:
            return "missing"
        scheme, _, credentials = raw.strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            return "malformed"
        # Constant time in the token's content: the comparison itself reveals nothing.
        if not hmac.compare_digest(credentials, self._token):
            return "invalid"
        return None


_REFUSALS: dict[str, tuple[int, str, list[tuple[bytes, bytes]]]] = {
    "missing": (
        401,
        f"authentication required: send Authorization: Bearer <{TOKEN_VARIABLE}>",
        [(b"www-authenticate", b'Bearer realm="quantum-trader"')],
    ),
    "malformed": (
        401,
        f"malformed Authorization header: expected Bearer <{TOKEN_VARIABLE}>",
        [(b"www-authenticate", b'Bearer realm="quantum-trader", error="invalid_request"')],
    ),
    "invalid": (403, "the bearer token is not valid for this service", []),
    "not_configured": (
        503,
        f"{TOKEN_VARIABLE} is not set on this service, so it refuses every request that needs "
        f"a token; start it with {TOKEN_VARIABLE} set",
        [],
    ),
}


# Every reason is exported from the start (at 0), so a dashboard's rate has a series to read.
for _reason in _REFUSALS:
    AUTH_FAILURES.labels(_reason)


class BearerAuthMiddleware:
    """Refuses requests that need the token and do not carry it; lets everything else through.

    It sits inside the observability middleware, so a refusal still gets its span, access line
    and HTTP metrics (under the route's template), plus `http_auth_failures_total{reason}`.
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
        auth = self.authenticator
        if not auth.requires_token(method):
            await self.app(scope, receive, send)
            return
        reason = auth.failure(scope["headers"])
        if reason is None:
            await self.app(scope, receive, send)
            return
        route = _matching_route(scope)
        if route is not None and is_public(route):
            await self.app(scope, receive, send)
            return
        AUTH_FAILURES.labels(reason).inc()
        if route is not None:
            # The router never runs for this request; metrics and the span still want the
            # template, never the raw path.
            scope["route"] = route
        client = scope.get("client")
        # What was presented is never logged, only why it was refused.
        _log.warning(
            "authentication failed",
            reason=reason,
            **{
                "http.request.method": method,
                "http.route": getattr(route, "path", None),
                "url.path": scope["path"],
                "client.address": client[0] if client else None,
            },
        )
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        status, detail, headers = _REFUSALS[reason]
        body = orjson.dumps({"detail": detail, "reason": reason})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _matching_route(scope: Scope) -> Any | None:
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in effective_routes(getattr(router, "routes", ())):
        # `matches` only reads the scope (it returns the child scope rather than updating).
        match, _child = route.matches(dict(scope))
        if match is Match.FULL:
            return getattr(route, "original_route", route)
    return None


def install_openapi_security(app: FastAPI, authenticator: Authenticator) -> None:
    """Declare the bearer scheme in OpenAPI on every operation that needs the token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": f"The deployment's {TOKEN_VARIABLE}.",
        }
        open_operations = {
            (route.path_format, method.lower())
            for route in effective_routes(app.routes)
            if is_public(route)
            for method in route.methods or ()
        }
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if method not in _HTTP_METHODS or (path, method) in open_operations:
                    continue
                if not authenticator.requires_token(method.upper()):
                    continue
                operation["security"] = [{SECURITY_SCHEME: []}]
                responses = operation.setdefault("responses", {})
                responses.setdefault("401", {"description": "No or malformed bearer token"})
                responses.setdefault("403", {"description": "Wrong bearer token"})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class SiblingBearerAuth(httpx.Auth):
    """httpx auth that sends the token to the other Quantum Trader services and nowhere else.

    A sibling is an origin (scheme, host, port) that `service_url(...)` names for one of the
    services; a webhook or any other host never sees the token. An `Authorization` header the
    caller set itself is left alone. The siblings' addresses follow their `<NAME>_URL`
    variables while the process runs (tests point services at stubs): they are worked out
    again only when one of those variables changed.
    """

    def __init__(self, token: SecretStr | None) -> None:
        self._header = f"Bearer {token.get_secret_value()}" if token is not None else None
        self._origins: frozenset[tuple[str, str, int]] = frozenset()
        self._origins_key: tuple[object, ...] | None = None
        self._variables = _EnvironmentKey(tuple(_url_variable(name) for name in PORTS))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "authorization" not in request.headers:
            header = self.header_for(request.url)
            if header is not None:
                request.headers["Authorization"] = header
        yield request

    def header_for(self, url: httpx.URL) -> str | None:
        """The `Authorization` value a request to `url` gets (one without its own header), or
        None: what `auth_flow` adds, without building a request to ask it."""
        if self._header is not None and _origin(url) in self._sibling_origins():
            return self._header
        return None

    def _sibling_origins(self) -> frozenset[tuple[str, str, int]]:
        key = self._variables.read()
        if key != self._origins_key:
            self._origins = frozenset(_origin(httpx.URL(service_url(name))) for name in PORTS)
            self._origins_key = key
        return self._origins


class _EnvironmentKey:
    """The values of some environment variables, as a key that changes when one of them does.

    `os.environ.get` of an unset variable raises and catches a `KeyError` inside the mapping
    (about a microsecond each, nine per request here); `os.environ`'s own store, which every
    change through `os.environ` (and so `monkeypatch.setenv`) updates, is a plain dict
    (values in its encoded form, good enough for a key). Where it is not there, `get`.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        store = getattr(os.environ, "_data", None)
        encode = getattr(os.environ, "encodekey", None)
        self._store: dict[Any, Any] | None = None
        self._keys: tuple[object, ...] = ()
        if isinstance(store, dict) and callable(encode):
            self._store, self._keys = store, tuple(encode(name) for name in names)

    def read(self) -> tuple[object, ...]:
        if self._store is None:
            return tuple(map(os.environ.get, self._names))
        return tuple(map(self._store.get, self._keys))


def _url_variable(service: str) -> str:
    return service.upper().replace("-", "_") + "_URL"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme, 0)
