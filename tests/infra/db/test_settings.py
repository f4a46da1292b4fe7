"""Settings: the default SQLite file per service, loud validation, and the public surface."""

from __future__ import annotations

from pathlib import Path

import pytest

import backend.infra.db as db
from backend.infra.db import DatabaseConfigError, create_engine, load_database_settings


def test_public_api_is_pinned() -> None:
    assert sorted(db.__all__) == sorted(
        name
        for name in vars(db)
        if not name.startswith("_")
        and name
        not in {
            "annotations",
            "models",
        }
    )


def test_default_is_a_sqlite_file_named_after_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("RUN_VAR_DIR", raising=False)
    settings = load_database_settings("risk-safety")
    # Absolute, under the checkout's var/: the working directory does not choose the database.
    checkout = Path(__file__).resolve().parents[3]
    assert settings.url == f"sqlite+aiosqlite:///{checkout}/var/risk-safety.db"
    assert settings.is_sqlite


def test_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db:5432/qt")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    settings = load_database_settings("execution")
    assert settings.url == "postgresql+asyncpg://u@db:5432/qt"
    assert settings.pool_size == 7


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DATABASE_URL", "mysql://u@h/db"), ("DATABASE_URL", "not a url"), ("DB_POOL_SIZE", "0")],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(DatabaseConfigError, match=f"invalid {variable}="):
        load_database_settings("execution")


async def test_engine_creates_the_sqlite_directory(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'a' / 'b' / 'svc.db'}"
    engine = create_engine(load_database_settings("svc", url=url))
    await engine.dispose()
    assert (tmp_path / "a" / "b").is_dir()
