"""Database settings: `DATABASE_URL` and the `DB_*` pool and driver options, validated at start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from backend.infra.vardir import var_directory

from ._errors import DatabaseConfigError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def default_url(service_name: str, directory: Path | None = None) -> str:
    """`sqlite+aiosqlite:////<var>/<service>.db`: the embedded database of one service.

    `directory` defaults to the var directory (`RUN_VAR_DIR`, else the checkout's `var/`);
    the path is always absolute, so it does not depend on the working directory.
    """
    name = _SAFE_NAME.sub("-", service_name).strip("-.") or "quantum-trader"
    base = (directory if directory is not None else var_directory()).resolve()
    return f"sqlite+aiosqlite:///{base.as_posix().rstrip('/')}/{name}.db"


class DatabaseSettings(BaseSettings):
    """How a service reaches its database. Build once at start-up with `load_database_settings`.

    Environment: `DATABASE_URL`, `DB_POOL_SIZE`, `DB_MAX_OVERFLOW`, `DB_POOL_TIMEOUT_S`,
    `DB_POOL_RECYCLE_S`, `DB_CONNECT_TIMEOUT_S`, `DB_SQLITE_BUSY_TIMEOUT_MS`, `DB_SQL_COMMENTER`,
    `DB_ECHO`, `DB_LOG_STATEMENTS`.
    """

    # Inputs stay out of validation messages: DATABASE_URL holds the password.
    model_config = SettingsConfigDict(
        env_prefix="DB_",
        frozen=True,
        populate_by_name=True,
        extra="ignore",
        hide_input_in_errors=True,
    )

    url: str = Field(validation_alias=AliasChoices("DATABASE_URL", "url"))
    service_name: str = "quantum-trader"
    pool_size: int = Field(default=5, ge=1, le=100)
    max_overflow: int = Field(default=5, ge=0, le=100)
    pool_timeout_s: float = Field(default=10.0, gt=0)
    # Recycle before typical server/proxy idle cut-offs; pre-ping catches the rest.
    pool_recycle_s: float = Field(default=1800.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)
    sql_commenter: bool = True
    echo: bool = False
    log_statements: bool = False

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL ({exc})") from exc
        if url.drivername not in _SUPPORTED_DRIVERS:
            raise ValueError(f"driver {url.drivername!r} is not one of {_SUPPORTED_DRIVERS}")
        return value

    @property
    def sqlalchemy_url(self) -> URL:
        """The URL as SQLAlchemy parses it."""
        return make_url(self.url)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite database."""
        return self.sqlalchemy_url.get_backend_name() == "sqlite"


_VARIABLES = {
    "url": "DATABASE_URL",
    "pool_size": "DB_POOL_SIZE",
    "max_overflow": "DB_MAX_OVERFLOW",
    "pool_timeout_s": "DB_POOL_TIMEOUT_S",
    "pool_recycle_s": "DB_POOL_RECYCLE_S",
    "connect_timeout_s": "DB_CONNECT_TIMEOUT_S",
    "sqlite_busy_timeout_ms": "DB_SQLITE_BUSY_TIMEOUT_MS",
    "sql_commenter": "DB_SQL_COMMENTER",
    "echo": "DB_ECHO",
    "log_statements": "DB_LOG_STATEMENTS",
}


def load_database_settings(service_name: str, **overrides: Any) -> DatabaseSettings:
    """Read the settings from the environment; `DATABASE_URL` defaults to `<var>/<service>.db`.

    Keyword overrides win over the environment (tests pass `url=`). A bad value raises
    `DatabaseConfigError` naming the variable.
    """
    import os

    if "url" not in overrides and not os.environ.get("DATABASE_URL"):
        overrides["url"] = default_url(service_name)
    try:
        return DatabaseSettings(service_name=service_name, **overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "url"
        variable = _VARIABLES.get(field, field)
        raise DatabaseConfigError(variable, error.get("input"), error["msg"]) from exc
