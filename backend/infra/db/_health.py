"""The readiness check that `/health/ready` runs against the database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.infra.observability import ReadinessCheck

from ._engine import describe
from ._errors import translate_errors


def database_readiness_check(
    engine: AsyncEngine, name: str = "database", timeout_s: float = 2.0
) -> ReadinessCheck:
    """A check that borrows a connection and runs `SELECT 1`.

    When the database is down the check raises `DatabaseUnavailableError` naming it, and the
    health endpoint answers 503 with that message under `name`; once the database is back the
    pool's pre-ping replaces the dead connections and the check passes again.
    """
    target = describe(engine.url)

    async def check() -> None:
        with translate_errors(target):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    return ReadinessCheck(name=name, check=check, timeout_s=timeout_s)
