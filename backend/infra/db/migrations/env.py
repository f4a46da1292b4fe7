"""Alembic environment: runs on the connection `migrate()` passes in, or on `DATABASE_URL`."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from backend.infra.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from backend.infra.db import load_database_settings

    return load_database_settings("quantum-trader").url


async def _run_async() -> None:
    from backend.infra.db import create_engine, load_database_settings

    engine = create_engine(load_database_settings("quantum-trader", url=_url()))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_on)
    finally:
        await engine.dispose()


_connection = config.attributes.get("connection")
if _connection is not None:
    _run_on(_connection)
elif context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    # The plain `alembic -c backend/infra/db/alembic.ini …` command line.
    asyncio.run(_run_async())
