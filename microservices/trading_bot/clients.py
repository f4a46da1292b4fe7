"""Calls to ai-engine, portfolio-intelligence, risk-safety and execution, errors translated."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx

from backend.infra.service import service_url


class UpstreamError(Exception):
    """Another service could not answer (down, timed out or a 5xx): the outcome is unknown."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service


class Refused(Exception):
    """Another service answered with a 4xx: the request itself was refused."""

    def __init__(self, service: str, status: int, detail: str) -> None:
        super().__init__(f"{service} refused ({status}): {detail}")
        self.service, self.status, self.detail = service, status, detail


async def _call(
    http: httpx.AsyncClient, service: str, method: str, path: str, body: Any = None
) -> Any:
    try:
        response = await http.request(method, service_url(service) + path, json=body)
    except httpx.HTTPError as exc:
        raise UpstreamError(service, f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500:
        raise UpstreamError(service, f"HTTP {response.status_code}: {response.text[:200]}")
    if response.status_code >= 400:
        raise Refused(service, response.status_code, response.text[:500])
    return response.json()


async def predict(
    http: httpx.AsyncClient, symbol: str, prices: list[Decimal], source_id: str
) -> dict[str, Any]:
    body = {"symbol": symbol, "prices": [str(p) for p in prices], "source_id": source_id}
    result: dict[str, Any] = await _call(http, "ai-engine", "POST", "/predict", body)
    return result


async def portfolio(http: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = await _call(http, "portfolio-intelligence", "GET", "/portfolio")
    return result


async def check_order(http: httpx.AsyncClient, order: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await _call(http, "risk-safety", "POST", "/check", order)
    return result


async def submit_order(http: httpx.AsyncClient, order: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await _call(http, "execution", "POST", "/orders", order)
    return result
