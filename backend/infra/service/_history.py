"""The start-up guard against a wrong database: empty here, while the bus shows our history.

A service started from another directory, or pointed at another `DATABASE_URL`, opens an empty
database and would report ready and act on nothing it knew (execution filling orders a second
time on their retries). Its own events on the bus give it away: a stream whose newest entry
this service published says it has lived before, so its tables cannot be empty. The service
then refuses to start, saying so; `QT_ALLOW_EMPTY_DATABASE=true` starts it anyway (after a
deliberate reset of its database).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import text

from backend.infra.db.models import TABLE_OWNERS

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

OVERRIDE_VARIABLE = "QT_ALLOW_EMPTY_DATABASE"


class StartRefusedError(RuntimeError):
    """The service must not start on this database; the message says why and what to do."""


async def check_database_matches_bus(name: str, engine: AsyncEngine, redis: Redis) -> None:
    """Raise `StartRefusedError` when this service's tables are empty but the bus has its events."""
    from backend.infra.eventbus import EventBusSettings, default_catalogue
    from backend.infra.eventbus._envelope import EVENT_FIELD

    tables = TABLE_OWNERS.get(name, ())
    if not tables or os.environ.get(OVERRIDE_VARIABLE, "").strip().lower() in ("1", "true"):
        return
    async with engine.connect() as conn:
        for table in tables:
            found = await conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1"))
            if found.first() is not None:
                return
    settings = EventBusSettings.from_env()
    for spec in default_catalogue():
        key = settings.stream_key(spec.stream)
        newest = await redis.xrevrange(key, "+", "-", count=1)
        for entry_id, fields in newest or ():
            raw = fields.get(EVENT_FIELD) if isinstance(fields, dict) else None
            try:
                source = orjson.loads(raw).get("source") if raw else None
            except orjson.JSONDecodeError:
                continue
            if source != name:
                continue
            entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            database = engine.url.render_as_string(hide_password=True)
            raise StartRefusedError(
                f"{name} refuses to start: its database {database} is empty "
                f"(no row in {', '.join(tables)}), but the bus holds its events (the newest "
                f"{spec.type} on {key}, entry {entry}, was published by {name}). It is "
                "probably the wrong database: started from another directory, or another "
                "DATABASE_URL or RUN_VAR_DIR. Start it on its own database; after a deliberate "
                f"reset, set {OVERRIDE_VARIABLE}=true to start anyway."
            )
