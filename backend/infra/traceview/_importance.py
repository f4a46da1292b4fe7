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

from ._store import StoredSpan


class Importance(enum.IntEnum):
    PLAIN = 0
    NOISE = 1
    IMPORTANT = 2


IMPORTANT_NAME_PREFIXES = ("order", "fill", "stop.", "risk.", "kill", "exit", "execution")
ORDER_KEYS = ("client_order_id", "order_id")
KEPT_OUTCOMES = frozenset({"ORDERED", "DENIED", "REJECTED", "ERROR"})
NOISE_PATHS = ("/health", "/ready", "/live", "/metrics")
_PATH_KEYS = ("url.path", "http.route", "http.target")
_PROBE_STATEMENTS = frozenset({"select 1", "ping"})


def has_order_key(key: str) -> bool:
    return any(key == k or key.endswith("." + k) for k in ORDER_KEYS)


def span_importance(span: StoredSpan) -> Importance:
    """What one span alone says about its trace."""
    if span.error:
        return Importance.IMPORTANT
    name = span.name.lower()
    if name.startswith(IMPORTANT_NAME_PREFIXES):
        return Importance.IMPORTANT
    attributes = span.attributes
    for key, value in attributes.items():
        if has_order_key(key) and value not in ("", None):
            return Importance.IMPORTANT
    if attributes.get("approved") is False:
        return Importance.IMPORTANT
    if attributes.get("outcome") in KEPT_OUTCOMES:
        return Importance.IMPORTANT
    for key in _PATH_KEYS:
        path = attributes.get(key)
        if isinstance(path, str) and path.startswith(NOISE_PATHS):
            return Importance.NOISE
    if " " in name and name.split(" ", 1)[1].startswith(NOISE_PATHS):
        return Importance.NOISE
    statement = attributes.get("db.query.text", attributes.get("db.statement"))
    if isinstance(statement, str) and statement.strip().lower() in _PROBE_STATEMENTS:
        return Importance.NOISE
    return Importance.PLAIN


def trace_importance(spans: Iterable[StoredSpan]) -> Importance:
    """The trace's class from all its spans seen so far (see the module docstring)."""
    verdict = Importance.PLAIN
    only_client = True
    for span in spans:
        level = span_importance(span)
        if level is Importance.IMPORTANT:
            return level
        verdict = max(verdict, level)
        only_client = only_client and span.kind == "client"
    if only_client:
        return Importance.NOISE
    return verdict
