"""sqlcommenter-style comments, statement sanitising and the span attributes derived from SQL."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

# Statement keywords that become `db.operation.name` and the duration metric's label; anything
# else is "OTHER" so hand-written SQL cannot create unbounded label values.
KNOWN_OPERATIONS = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "WITH",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "PRAGMA",
        "SET",
        "SHOW",
        "EXPLAIN",
        "VACUUM",
        "ANALYZE",
        "LOCK",
        "COPY",
        "CALL",
    }
)
OTHER_OPERATION = "OTHER"

_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_TABLE_AFTER = re.compile(
    r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"
    r'("(?:[^"]|"")+"|[A-Za-z_][\w$]*)(?:\s*\.\s*("(?:[^"]|"")+"|[A-Za-z_][\w$]*))?',
    re.I,
)
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
# Numbers that are literals, not parts of identifiers or `$1`-style placeholders.
_NUMBER_LITERAL = re.compile(r"(?<![\w$.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
_WHITESPACE = re.compile(r"\s+")


def operation_name(statement: str) -> str:
    """The statement's leading keyword in upper case (`SELECT`, `INSERT`…), or `OTHER`."""
    head = _LEADING_NOISE.sub("", statement[:256], count=1)
    match = _FIRST_WORD.match(head)
    if match is None:
        return OTHER_OPERATION
    word = match.group(0).upper()
    return word if word in KNOWN_OPERATIONS else OTHER_OPERATION


def collection_name(statement: str) -> str | None:
    """The first table a statement names after FROM/INTO/UPDATE/TABLE, unquoted; or None."""
    match = _TABLE_AFTER.search(statement)
    if match is None:
        return None
    name = match.group(2) or match.group(1)
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def sanitize(statement: str, max_len: int = 2048) -> str:
    """The statement for `db.query.text`: literals replaced by `?`, whitespace collapsed, capped.

    Statements built by SQLAlchemy carry values as bound parameters already; this protects
    hand-written SQL with inline literals (an account id, an API key) from reaching the traces.
    """
    text = _STRING_LITERAL.sub("?", statement)
    text = _NUMBER_LITERAL.sub("?", text)
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > max_len:
        text = text[: max_len - 3] + "..."
    return text


def _escape(value: str) -> str:
    # sqlcommenter: URL-encode first, then escape the meta character `'` with a backslash.
    # URL-encoding already turns `'` into %27 and `*` into %2A, so a value can never close
    # the comment or the quoted string; the second step is kept for fidelity to the spec.
    return quote(value, safe="").replace("'", "\\'")


def format_comment(tags: Mapping[str, str]) -> str:
    """`/*key='value',…*/` with keys sorted and keys and values escaped per sqlcommenter."""
    pairs = ",".join(
        f"{_escape(key)}='{_escape(value)}'" for key, value in sorted(tags.items()) if value
    )
    return f"/*{pairs}*/" if pairs else ""


def has_comment(statement: str) -> bool:
    """True when the statement already holds a comment, which sqlcommenter must leave alone."""
    return "/*" in statement or "--" in statement


def append_comment(statement: str, comment: str) -> str:
    """`statement` with `comment` at its end (before a final `;`), unless it has one already."""
    if not comment or has_comment(statement):
        return statement
    stripped = statement.rstrip()
    if stripped.endswith(";"):
        return f"{stripped[:-1]} {comment};"
    return f"{stripped} {comment}"
