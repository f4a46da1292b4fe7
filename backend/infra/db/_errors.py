"""The database layer's exceptions, and the translation of driver errors into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from backend.infra.observability import redact_text


class DatabaseError(Exception):
    """Base class for every error the database layer raises."""


class DatabaseConfigError(DatabaseError, ValueError):
    """A database setting is invalid; the message names the variable and the value."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        # DATABASE_URL carries the password: the message (and the value kept) never do.
        shown = redact_text(value) if isinstance(value, str) else value
        self.variable = variable
        self.value = shown
        self.reason = redact_text(reason)
        super().__init__(f"invalid {variable}={shown!r}: {self.reason}")


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached or refuses work now (down, restarting, pool exhausted).

    Callers may retry later; `/health/ready` reports the same condition as a 503.
    """

    def __init__(self, target: str, detail: str) -> None:
        self.target = target
        self.detail = detail
        super().__init__(f"database {target} is unavailable: {detail}")


class IntegrityViolationError(DatabaseError):
    """A write broke a constraint (for example a duplicate client order id or fill id)."""

    def __init__(self, target: str, detail: str, constraint: str | None = None) -> None:
        self.target = target
        self.detail = detail
        self.constraint = constraint
        where = f" ({constraint})" if constraint else ""
        super().__init__(f"constraint violated on {target}{where}: {detail}")


class QueryError(DatabaseError):
    """Any other failure of a statement: bad SQL, a missing table, a type mismatch."""

    def __init__(self, target: str, detail: str) -> None:
        self.target = target
        self.detail = detail
        super().__init__(f"statement failed on {target}: {detail}")


class MigrationError(DatabaseError):
    """A schema migration could not be applied or reverted."""


# SQLSTATE classes that mean "the server is not there or not accepting work", not "bad query":
# 08 connection exception, 53 insufficient resources, 57P01-57P03 shutdown / starting up.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P01", "57P02", "57P03")
# SQLite reports these as OperationalError, like a missing table; only these mean "try later".
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database", "disk i/o error")


def _sqlstate(error: BaseException | None) -> str | None:
    seen = 0
    while error is not None and seen < 4:
        code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(code, str):
            return code
        error = error.__cause__
        seen += 1
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _detail(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    return f"{type(orig or error).__name__}: {_first_line(orig or error)}"


def is_unavailable(error: BaseException) -> bool:
    """True when `error` means the database is unreachable rather than the statement wrong."""
    if isinstance(error, DatabaseUnavailableError):
        return True
    if isinstance(error, (OSError, sa_exc.TimeoutError)):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
            return True
        code = _sqlstate(error.orig)
        if code is not None:
            return code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
        if isinstance(error, sa_exc.OperationalError):
            message = str(error.orig).lower()
            return any(fragment in message for fragment in _SQLITE_UNAVAILABLE)
    # asyncpg raises its own connection errors (e.g. CannotConnectNowError) before SQLAlchemy
    # has a connection to wrap them with.
    code = _sqlstate(error)
    return code is not None and code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)


def translate_error(error: BaseException, target: str) -> DatabaseError:
    """The `DatabaseError` for a driver or SQLAlchemy error; raise it `from error`.

    `target` names the database in messages (a URL without its password).
    """
    if isinstance(error, DatabaseError):
        return error
    if is_unavailable(error):
        return DatabaseUnavailableError(target, _detail(error))
    if isinstance(error, sa_exc.IntegrityError):
        orig = error.orig
        constraint = getattr(orig, "constraint_name", None) or getattr(
            getattr(orig, "__cause__", None), "constraint_name", None
        )
        return IntegrityViolationError(target, _detail(error), constraint)
    return QueryError(target, _detail(error))


# TimeoutError (asyncio's too) is an OSError.
_TRANSLATED = (sa_exc.SQLAlchemyError, OSError)


def is_database_error(error: BaseException) -> bool:
    """True for errors that come from the database or the way to it (not from caller code)."""
    return isinstance(error, _TRANSLATED) or _sqlstate(error) is not None


@contextmanager
def translate_errors(target: str) -> Iterator[None]:
    """Re-raise SQLAlchemy, driver and socket errors inside the block as `DatabaseError`s."""
    try:
        yield
    except DatabaseError:
        raise
    except Exception as error:
        if not is_database_error(error):
            raise
        raise translate_error(error, target) from error
