"""Column types that behave the same on PostgreSQL and SQLite: exact decimals, UTC timestamps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class DecimalNumeric(TypeDecorator[Decimal]):
    """`NUMERIC(precision, scale)` read and written as `Decimal` on PostgreSQL and SQLite alike.

    PostgreSQL stores the exact value. SQLite has no decimal type: a NUMERIC column keeps the
    first 15 significant digits (as SQLite documents), so amounts with more digits need
    PostgreSQL. SQLAlchemy's plain Numeric is worse there: it binds through `float` and
    formats results with a fixed 10-digit scale, turning 1E-18 into 0. Here values are bound
    as text and read back through `str`, so whatever SQLite kept comes back unchanged, and
    SQL comparisons and sums still see numbers.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 38, scale: int = 18) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: Any) -> Any:
            return None if value is None else str(Decimal(value))

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            return None if value is None else Decimal(str(value))

        return process


_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
"""SQLAlchemy's storage format of a SQLite DATETIME (text that sorts as the time does)."""


class UtcDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE` that accepts only aware datetimes and returns them in UTC.

    SQLite has no time zones and SQLAlchemy returns naive values from it; normalising to UTC
    on the way in and tagging UTC on the way out gives services one behaviour everywhere.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            # What `process_bind_param` then SQLite's DATETIME would bind, in one step: a
            # timestamp is bound several times per order on the order path.
            if value is None:
                return None
            if value.tzinfo is not UTC:
                if value.tzinfo is None or value.utcoffset() is None:
                    raise ValueError(f"naive datetime {value!r}: store timezone-aware values")
                value = value.astimezone(UTC)
            return _SQLITE_DATETIME % (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
