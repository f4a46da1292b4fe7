"""Which traces matter: importance-aware retention keeps trades, samples ticks, marks noise.

A trace is *important* when any of its spans is about an order (it carries a client order id
or an order id, or is an `order.*`, `fill*`, `stop.*`, `risk.*`, `kill*` span), a risk denial
(`approved=false`), a decision other than a skip, or an error. Those are always kept. A trace is
*noise* when it is a health check, a metrics scrape, or idle polling (a trace whose spans are
all CLIENT spans, such as a readiness probe's `SELECT 1` or an empty stream read). Everything
else is a *plain* trace (a tick that led to no order) and is sampled down.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from ._store import StoredSpan


class Importance(enum.IntEnum):
    PLAIN = 0
    NOISE = 1
    IMPORTANT = 2


IMPORTANT_NAME_PREFIXES = ("order", "fill", "stop.", "risk.", "kill", "exit", "execution")
ORDER_KEYS = ("client_order_id", "order_id")
KEPT_OUTCOMES = frozenset({"ORDERED", "DENIED", "REJECTED", "ERROR"})
NOISE_PATHS = ("/health", "/ready", "/live", "/metrics")
_PATH_KEYS = frozenset({"url.path", "http.route", "http.target"})
_STATEMENT_KEYS = frozenset({"db.query.text", "db.statement"})
_PROBE_STATEMENTS = frozenset({"select 1", "ping"})
CLIENT = 3
"""The OTLP span kind of a client call."""

# What an attribute key can say (cached per key: a process sees few distinct keys).
_NOTHING, _ORDER, _APPROVED, _OUTCOME, _PATH, _STATEMENT = range(6)
_key_roles: dict[str, int] = {}
_name_levels: dict[str, Importance] = {}


def has_order_key(key: str) -> bool:
    return any(key == k or key.endswith("." + k) for k in ORDER_KEYS)


def _key_role(key: str) -> int:
    if has_order_key(key):
        return _ORDER
    if key == "approved":
        return _APPROVED
    if key == "outcome":
        return _OUTCOME
    if key in _PATH_KEYS:
        return _PATH
    if key in _STATEMENT_KEYS:
        return _STATEMENT
    return _NOTHING


def _name_level(name: str) -> Importance:
    lower = name.lower()
    if lower.startswith(IMPORTANT_NAME_PREFIXES):
        return Importance.IMPORTANT
    if " " in lower and lower.split(" ", 1)[1].startswith(NOISE_PATHS):
        return Importance.NOISE
    return Importance.PLAIN


def key_can_tell(key: str) -> bool:
    """Whether an attribute with this key can change what a span says (`level_of`); a span
    without one says what its name says (`name_level`), or IMPORTANT with an error."""
    return _key_role(key) != _NOTHING


def name_level(name: str) -> Importance:
    """What a span's name alone says about its trace."""
    level = _name_levels.get(name)
    if level is None:
        level = _name_levels[name] = _name_level(name)
        if len(_name_levels) > 100_000:
            _name_levels.clear()
    return level


def level_of(name: str, attributes: dict[str, Any], error: bool) -> Importance:
    """What one span alone says about its trace."""
    if error:
        return Importance.IMPORTANT
    level = name_level(name)
    if level is Importance.IMPORTANT:
        return level
    for key, value in attributes.items():
        role = _key_roles.get(key)
        if role is None:
            role = _key_roles[key] = _key_role(key)
            if len(_key_roles) > 100_000:
                _key_roles.clear()
        if not role:
            continue
        if role == _ORDER:
            if value not in ("", None):
                return Importance.IMPORTANT
        elif role == _APPROVED:
            if value is False:
                return Importance.IMPORTANT
        elif role == _OUTCOME:
            if value in KEPT_OUTCOMES:
                return Importance.IMPORTANT
        elif role == _PATH:
            if isinstance(value, str) and value.startswith(NOISE_PATHS):
                level = Importance.NOISE
        elif isinstance(value, str) and value.strip().lower() in _PROBE_STATEMENTS:
            level = Importance.NOISE
    return level


def span_importance(span: StoredSpan) -> Importance:
    return level_of(span.name, span.attributes, span.error)


def trace_level(levels_and_kinds: Iterable[tuple[int, int]]) -> Importance:
    """The trace's class from its spans' own levels and OTLP kinds (see the module docstring)."""
    verdict = Importance.PLAIN
    only_client = True
    for level, kind in levels_and_kinds:
        if level == Importance.IMPORTANT:
            return Importance.IMPORTANT
        if level > verdict:
            verdict = Importance(level)
        only_client = only_client and kind == CLIENT
    return Importance.NOISE if only_client else verdict


def trace_importance(spans: Iterable[StoredSpan]) -> Importance:
    """The trace's class from all its spans seen so far."""
    return trace_level((span_importance(s), 3 if s.kind == "client" else 0) for s in spans)
