"""What every typed client shares: one request path, and the errors a caller tells apart."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from backend.infra.observability import (
    SpanKind,
    Status,
    StatusCode,
    get_tracer,
    inject_trace_context,
    record_error,
    redact_url,
    start_lean_span,
)
from backend.infra.service import SiblingBearerAuth, dependency_unavailable, service_url

from ._direct import DirectConnections, direct_origin

ModelT = TypeVar("ModelT", bound=BaseModel)

DETAIL_MAX_LEN = 500
JSON_HEADERS = {"Content-Type": "application/json"}
"""What `json=` would add besides `Content-Length`: the body is encoded here instead."""
USER_AGENT = f"python-httpx/{httpx.__version__}"
"""The direct path's `User-Agent`: the one the httpx path sends, so servers see no change."""

_tracer = get_tracer("microservices.contracts")
# The httpx path's access line comes from httpx's logger: the direct path's from the same one,
# so `CLIENT_ACCESS_LOG` and log queries treat both alike.
_access = logging.getLogger("httpx")


class UpstreamError(Exception):
    """Another service could not answer (down, timed out or a 5xx): the outcome is unknown.

    `status` is the HTTP status of a 5xx answer, None when there was no answer at all.
    """

    def __init__(self, service: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{service}: {detail}")
        self.service, self.detail, self.status = service, detail, status


def answer_upstream_errors(app: FastAPI) -> None:
    """An `UpstreamError` escaping a route of `app` answers 503 naming the service that failed,
    with `Retry-After`, as a database that is down does: not a bare 500."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        service = exc.service if isinstance(exc, UpstreamError) else "upstream"
        return dependency_unavailable(service, str(exc), "upstream_unavailable")

    app.add_exception_handler(UpstreamError, handle)


class MalformedAnswer(UpstreamError):
    """Another service answered 2xx with a body its contract does not allow."""


class Refused(Exception):
    """Another service answered with a 4xx: the request itself was refused."""

    def __init__(self, service: str, status: int, detail: str) -> None:
        super().__init__(f"{service} refused ({status}): {detail}")
        self.service, self.status, self.detail = service, status, detail


class ServiceClient:
    """Calls one service over `http` (the service's `resources.http`, which carries the bearer
    token and the trace context); answers are validated against the contract's models.

    With `direct=True` the calls (but HEAD) go over connections of the client's own
    (`_direct.py`), not through httpx: the same request bytes (query string included) but the
    headers httpx adds for content negotiation, the same CLIENT span (name, attributes,
    status) and trace headers, the token `http`'s auth adds, `http`'s timeouts and the same
    `HTTP Request` log line, at about a fifth of the CPU. Only for plain-HTTP addresses reached
    without a proxy and an auth that sets its header without a challenge (httpx serves the
    rest).
    """

    service: str = ""

    def __init__(
        self, http: httpx.AsyncClient, base_url: str | None = None, *, direct: bool = False
    ) -> None:
        self.http = http
        self.base_url = base_url if base_url is not None else service_url(self.service)
        # Parsed once per address: httpx parses a string URL on every request (about 20 µs).
        self._urls: dict[str, httpx.URL] = {}
        self._direct: DirectConnections | None = None
        origin = direct_origin(httpx.URL(self.base_url)) if direct else None
        if origin is not None:
            self._direct = DirectConnections(*origin)
            self._host_header = self._url("").netloc.decode("ascii")

    def _url(self, path: str) -> httpx.URL:
        text = self.base_url + path
        url = self._urls.get(text)
        if url is None:
            url = self._urls[text] = httpx.URL(text)
        return url

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[ModelT],
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> ModelT:
        # A HEAD answer announces a body it does not send: left to httpx.
        if self._direct is not None and method != "HEAD":
            return await self._call_direct(method, path, answer, body, params, timeout_s)
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        try:
            # The model's own JSON encoder writes the bytes `json=body.model_dump(mode="json")`
            # would (compact, UTF-8), without the intermediate dict and `json.dumps`.
            response = await self.http.request(
                method,
                self._url(path),
                content=None if body is None else body.__pydantic_serializer__.to_json(body),
                headers=None if body is None else JSON_HEADERS,
                params=params,
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(self.service, f"{type(exc).__name__}: {exc}") from exc
        return self._answer(method, path, answer, response.status_code, response.content)

    def _answer(
        self, method: str, path: str, answer: type[ModelT], status: int, content: bytes
    ) -> ModelT:
        """The answer as `answer`, or the error a caller tells apart."""
        if status >= 500:
            detail = f"HTTP {status}: {_text(content)[:200]}"
            raise UpstreamError(self.service, detail, status)
        if status >= 400:
            raise Refused(self.service, status, _text(content)[:DETAIL_MAX_LEN])
        try:
            return answer.model_validate_json(content)
        except ValidationError as exc:
            detail = f"{method} {path} answered outside its contract: {exc}"
            raise MalformedAnswer(self.service, detail[:DETAIL_MAX_LEN], status) from exc

    def close(self) -> None:
        """Close the direct path's idle connections (the httpx client is the caller's)."""
        if self._direct is not None:
            self._direct.close()

    async def _call_direct(
        self,
        method: str,
        path: str,
        answer: type[ModelT],
        body: BaseModel | None,
        params: dict[str, Any] | None,
        timeout_s: float | None,
    ) -> ModelT:
        assert self._direct is not None
        url = self._url(path)
        if params is not None:
            # What httpx's `Request(..., params=)` does to the URL: the same query string.
            url = url.copy_merge_params(params)
        content = b"" if body is None else body.__pydantic_serializer__.to_json(body)
        # The attributes, in the same order, the httpx instrumentation gives its CLIENT span.
        port = url.port or 80
        span = start_lean_span(
            _tracer,
            method,
            SpanKind.CLIENT,
            {
                "http.request.method": method,
                "server.address": self._direct.host,
                "network.peer.address": self._direct.host,
                "server.port": port,
                "network.peer.port": port,
                "url.full": redact_url(str(url)),
            },
        )
        lines = [
            f"{method} {url.raw_path.decode('ascii')} HTTP/1.1",
            f"Host: {self._host_header}",
            f"User-Agent: {USER_AGENT}",
            f"Content-Length: {len(content)}",
        ]
        if body is not None:
            lines.append("Content-Type: application/json")
        authorization = self._authorization(method, url)
        if authorization is not None:
            lines.append(f"Authorization: {authorization}")
        lines.extend(f"{name}: {value}" for name, value in _trace_headers(span).items())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content
        timeout = self.http.timeout if timeout_s is None else httpx.Timeout(timeout_s)
        try:
            reply = await self._direct.exchange(request, timeout)
        except httpx.HTTPError as exc:
            record_error(span, exc)
            span.end()
            raise UpstreamError(self.service, f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            span.end()  # cancelled: the caller's span says why
            raise
        status = reply.status
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("network.protocol.version", "1.1")
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        _access.info('HTTP Request: %s %s "HTTP/1.1 %d %s"', method, url, status, reply.reason)
        return self._answer(method, path, answer, status, reply.content)

    def _authorization(self, method: str, url: httpx.URL) -> str | None:
        """The `Authorization` header `http`'s auth would add to this request (the services'
        bearer token for a sibling, nothing for another host), asked of the auth itself."""
        auth = self.http.auth
        if auth is None:
            return None
        if isinstance(auth, SiblingBearerAuth):
            return auth.header_for(url)  # without building a request to ask it
        flow = auth.auth_flow(httpx.Request(method, url))
        try:
            header: str | None = next(flow).headers.get("Authorization")
            return header
        finally:
            flow.close()


def _text(content: bytes) -> str:
    # What `response.text` gives for the services' JSON and plain-text error bodies.
    return content.decode("utf-8", "replace")


def _trace_headers(span: Any) -> dict[str, str]:
    """`traceparent`/`tracestate` naming `span`, and the caller's baggage, as the httpx
    instrumentation injects them (`span` is not made current: nothing runs inside it)."""
    carrier = inject_trace_context({})
    ctx = span.get_span_context()
    if ctx is not None and ctx.is_valid:
        carrier["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        state = ctx.trace_state.to_header() if ctx.trace_state else ""
        if state:
            carrier["tracestate"] = state
        else:
            carrier.pop("tracestate", None)
    return dict(carrier)
