"""What every typed client shares: one request path, and the errors a caller tells apart."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from backend.infra.service import dependency_unavailable, service_url

ModelT = TypeVar("ModelT", bound=BaseModel)

DETAIL_MAX_LEN = 500
JSON_HEADERS = {"Content-Type": "application/json"}
"""What `json=` would add besides `Content-Length`: the body is encoded here instead."""


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
    token and the trace context); answers are validated against the contract's models."""

    service: str = ""

    def __init__(self, http: httpx.AsyncClient, base_url: str | None = None) -> None:
        self.http = http
        self.base_url = base_url if base_url is not None else service_url(self.service)
        # Parsed once per address: httpx parses a string URL on every request (about 20 µs).
        self._urls: dict[str, httpx.URL] = {}

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
        status = response.status_code
        if status >= 500:
            detail = f"HTTP {status}: {response.text[:200]}"
            raise UpstreamError(self.service, detail, status)
        if status >= 400:
            raise Refused(self.service, status, response.text[:DETAIL_MAX_LEN])
        try:
            return answer.model_validate_json(response.content)
        except ValidationError as exc:
            detail = f"{method} {path} answered outside its contract: {exc}"
            raise MalformedAnswer(self.service, detail[:DETAIL_MAX_LEN], status) from exc
