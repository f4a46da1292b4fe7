"""risk-safety assembly: the guard, its market data, its routes and its start-up restore."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from backend.infra.eventbus import MarketTick
from backend.infra.service import Service
from backend.trading.approval import DEVELOPMENT_SECRET

from .api import router
from .guard import RiskGuard
from .settings import RiskSettings

NAME = "risk-safety"


def create_service(settings: RiskSettings | None = None) -> Service:
    """The risk-safety service (port 8003): pre-trade checks and the kill switch."""
    # Only quotes are consumed, and only fresh ones count: a new group starts at the end.
    service = Service(NAME, database=True, eventbus=True, consume_from="latest")
    settings = settings or RiskSettings()
    if settings.approval_secret.get_secret_value() == DEVELOPMENT_SECRET:
        service.logger.warning(
            "RISK_APPROVAL_SECRET is the development default; set it outside development"
        )
    guard = RiskGuard(settings, service.resources, service.logger, service.tracer)
    service.resources.extras["guard"] = guard
    service.on_startup(guard.restore)
    service.subscribe(MarketTick, guard.on_tick)
    service.app.add_exception_handler(RequestValidationError, _validation_error)
    service.app.include_router(router)
    return service


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, with every rejected input made writable as JSON.

    The default handler echoes the input back; a JSON number too large for a float (such as
    `1e999999`) parses to infinity, which JSON cannot carry, and the 422 became a 500.
    """
    assert isinstance(exc, RequestValidationError)
    errors = [{**error, "input": _writable(error.get("input"))} for error in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def _writable(value: Any) -> Any:
    try:
        json.dumps(jsonable_encoder(value), allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value
