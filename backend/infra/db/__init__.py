"""Persistence for Quantum Trader services: async SQLAlchemy on SQLite or PostgreSQL.

Typical service lifespan::

    settings = load_database_settings("execution")      # DATABASE_URL or ./var/execution.db
    engine = create_engine(settings)
    await migrate(engine)                                # Alembic, up to the newest revision
    sessions = create_session_factory(engine)
    add_readiness_check(app, database_readiness_check(engine))
    async with session_scope(sessions) as session:
        session.add(OrderRecord(...))
    await engine.dispose()

Every statement gets a CLIENT span and carries `/*traceparent='00-…'*/` to the server.
See docs/DATABASE.md for tables, ownership, settings and metrics.
"""

from __future__ import annotations

from ._direct import execute
from ._engine import create_engine, create_session_factory, session_scope
from ._errors import (
    DatabaseConfigError,
    DatabaseError,
    DatabaseUnavailableError,
    IntegrityViolationError,
    MigrationError,
    QueryError,
    translate_error,
    translate_errors,
)
from ._group import GroupCommit, GroupWrite
from ._health import database_readiness_check
from ._migrate import current_revision, downgrade, head_revision, migrate
from ._settings import DatabaseSettings, default_url, load_database_settings
from .models import TABLE_OWNERS, Base, owner_of

__all__ = [
    "TABLE_OWNERS",
    "Base",
    "DatabaseConfigError",
    "DatabaseError",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "GroupCommit",
    "GroupWrite",
    "IntegrityViolationError",
    "MigrationError",
    "QueryError",
    "create_engine",
    "create_session_factory",
    "current_revision",
    "database_readiness_check",
    "default_url",
    "downgrade",
    "execute",
    "head_revision",
    "load_database_settings",
    "migrate",
    "owner_of",
    "session_scope",
    "translate_error",
    "translate_errors",
]
