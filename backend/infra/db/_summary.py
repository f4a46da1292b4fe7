"""`db.query.summary`: a low-cardinality summary of a SQL statement, as the conventions describe.

Each operation keyword and the tables it names, in the order they appear: `SELECT users`,
`INSERT shipping_details SELECT orders`, `SELECT songs artists`. Names a CTE introduces are
not tables, so `WITH t AS (SELECT ...) SELECT x FROM t` gives `SELECT SELECT`, never `WITH t`.
Literals and comments are skipped; nothing here comes from a bound value.
"""

from __future__ import annotations

import re

MAX_SUMMARY_LEN = 255

# Keywords that start an operation; DDL keeps its object type (`CREATE TABLE orders`).
_OPERATIONS = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "UPSERT",
        "REPLACE",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "PRAGMA",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "VACUUM",
        "ANALYZE",
        "EXPLAIN",
        "COPY",
        "CALL",
        "LOCK",
        "SET",
        "SHOW",
    }
)
_DDL = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE"})
_DDL_OBJECTS = frozenset(
    {"TABLE", "INDEX", "VIEW", "SEQUENCE", "SCHEMA", "DATABASE", "TRIGGER", "FUNCTION", "TYPE"}
)
# Keywords after which the next identifier (or comma-separated list) names a table.
_TABLE_AFTER = frozenset({"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "USING"})
_SKIP_AFTER_TABLE_KEYWORD = frozenset({"IF", "NOT", "EXISTS", "ONLY", "UNIQUE", "LATERAL"})

_TOKEN = re.compile(
    r"""
    (?P<skip>\s+|--[^\n]*|/\*.*?\*/|'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\])
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<dot>\.)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<comma>,)
    | (?P<other>.)
    """,
    re.S | re.X,
)


def _tokens(statement: str) -> list[tuple[str, str]]:
    out = []
    for match in _TOKEN.finditer(statement):
        kind = match.lastgroup or "other"
        if kind != "skip":
            out.append((kind, match.group(0)))
    return out


def _unquote(token: str) -> str:
    if token[:1] in ('"', "`", "["):
        return token[1:-1].replace('""', '"')
    return token


# `WITH name AS (`, `, name (a, b) AS (`: names a CTE introduces (they are not tables).
_CTE_NAME = re.compile(
    r"(?:\bWITH(?:\s+RECURSIVE)?|,)\s*(\"(?:[^\"]|\"\")+\"|[A-Za-z_][\w$]*)\s*(?:\([^()]*\)\s*)?AS\s*"
    r"(?:NOT\s+)?(?:MATERIALIZED\s*)?\(",
    re.I,
)


# Summaries by statement text: an application runs the same few statements over and over.
_CACHE: dict[str, str | None] = {}
_CACHE_MAX = 1024
_CACHEABLE_LEN = 4096


def query_summary(statement: str) -> str | None:
    """The statement's `db.query.summary`, or None when it starts with no known operation."""
    if len(statement) > _CACHEABLE_LEN:
        return _summarise(statement)
    try:
        return _CACHE[statement]
    except KeyError:
        summary = _CACHE[statement] = _summarise(statement)
        if len(_CACHE) > _CACHE_MAX:
            _CACHE.clear()  # rare: more distinct statements than any service has
        return summary


def _summarise(statement: str) -> str | None:
    tokens = _tokens(statement)
    ctes = {_unquote(m.group(1)).lower() for m in _CTE_NAME.finditer(statement)}
    parts: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        kind, text = tokens[i]
        upper = text.upper() if kind == "word" else ""
        if upper in _OPERATIONS:
            previous = tokens[i - 1][1].upper() if i else ""
            if (upper == "SET" and parts) or previous == "DO":
                i += 1  # `UPDATE t SET`, `ON CONFLICT DO UPDATE`: part of the statement
                continue
            parts.append(upper)
            if upper in _DDL:
                j = i + 1
                while j < n and tokens[j][1].upper() in _DDL_MODIFIERS:
                    j += 1
                if j < n and tokens[j][1].upper() in _DDL_OBJECTS:
                    parts.append(tokens[j][1].upper())
                    name, j = _name_at(tokens, j + 1)
                    if name:
                        parts.append(name)
                    i = j
                    continue
            if upper == "UPDATE":
                name, j = _name_at(tokens, i + 1)
                if name and name.lower() not in ctes:
                    parts.append(name)
                i = j
                continue
        elif upper in _TABLE_AFTER:
            j = i + 1
            while True:
                name, j = _name_at(tokens, j)
                if name and name.lower() not in ctes:
                    parts.append(name)
                # skip an alias (`FROM orders o`, `FROM orders AS o`)
                if j < n and tokens[j][1].upper() == "AS":
                    j += 1
                if j < n and tokens[j][0] in ("word", "quoted") and not _is_keyword(tokens[j]):
                    j += 1
                # `FROM a, b`: a list of tables
                if name and upper == "FROM" and j < n and tokens[j][0] == "comma":
                    j += 1
                    continue
                break
            i = j
            continue
        i += 1
    if not parts:
        return None
    return _truncate(" ".join(parts))


_DDL_MODIFIERS = frozenset({"OR", "REPLACE", "UNIQUE", "TEMP", "TEMPORARY", "IF", "NOT", "EXISTS"})

_KEYWORDS_AFTER_TABLE = frozenset(
    {
        "WHERE",
        "JOIN",
        "INNER",
        "LEFT",
        "RIGHT",
        "FULL",
        "CROSS",
        "OUTER",
        "NATURAL",
        "ON",
        "GROUP",
        "ORDER",
        "LIMIT",
        "OFFSET",
        "HAVING",
        "SET",
        "VALUES",
        "SELECT",
        "RETURNING",
        "UNION",
        "EXCEPT",
        "INTERSECT",
        "FOR",
        "WINDOW",
        "USING",
        "DEFAULT",
        "AS",
    }
)


_NOT_A_NAME = _KEYWORDS_AFTER_TABLE | _OPERATIONS


def _is_keyword(token: tuple[str, str]) -> bool:
    return token[0] == "word" and token[1].upper() in _NOT_A_NAME


def _name_at(tokens: list[tuple[str, str]], j: int) -> tuple[str | None, int]:
    """A (possibly schema-qualified) table name at `j`, skipping `IF NOT EXISTS`, `ONLY`."""
    n = len(tokens)
    while j < n and tokens[j][0] == "word" and tokens[j][1].upper() in _SKIP_AFTER_TABLE_KEYWORD:
        j += 1
    if j >= n or tokens[j][0] not in ("word", "quoted") or _is_keyword(tokens[j]):
        return None, j
    name = _unquote(tokens[j][1])
    j += 1
    while j + 1 < n and tokens[j][0] == "dot" and tokens[j + 1][0] in ("word", "quoted"):
        name = f"{name}.{_unquote(tokens[j + 1][1])}"
        j += 2
    return name, j


def _truncate(summary: str) -> str:
    if len(summary) <= MAX_SUMMARY_LEN:
        return summary
    cut = summary[:MAX_SUMMARY_LEN]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut
