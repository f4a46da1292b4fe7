"""The 503 every service answers when its database fails a request: JSON, named, retryable.

Without it a database that is down, or that refuses a write, surfaces from a route as a bare
`500 Internal Server Error` in plain text, which tells the caller neither what failed nor
whether to retry. The message names the database with any password redacted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.infra.db import DatabaseError, DatabaseUnavailableError
from backend.infra.observability import redact_text

RETRY_AFTER_S = 1


def install_database_handler(app: FastAPI) -> None:
    """Answer a `DatabaseError` escaping any route of `app` with a 503."""
    app.add_exception_handler(DatabaseError, _handle)


def dependency_unavailable(dependency: str, detail: str, reason: str, **said: Any) -> JSONResponse:
    """The 503 a route answers when `dependency` (a database, another service) failed it:
    JSON naming the dependency, with `Retry-After`; `said`: what else the answer reports
    (what did take effect)."""
    return JSONResponse(
        status_code=503,
        content={
            "detail": redact_text(detail),
            "reason": reason,
            "dependency": dependency,
            **said,
        },
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _handle(_request: Request, exc: Exception) -> JSONResponse:
    unavailable = isinstance(exc, DatabaseUnavailableError)
    reason = "database_unavailable" if unavailable else "database_error"
    return dependency_unavailable("database", str(exc), reason)
