"""trading-bot's strategy metrics (Prometheus default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DECISIONS = Counter(
    "bot_decisions_total", "Strategy decisions, by outcome and reason.", ["outcome", "reason"]
)
CONFIDENCE = Histogram(
    "bot_signal_confidence",
    "Confidence of the signals the bot received.",
    buckets=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
)
TICK_TO_ORDER = Histogram(
    "bot_tick_to_order_seconds",
    "From a tick's event time to execution accepting the order it caused.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RUNNING = Gauge("bot_running", "1 while the strategy loop trades.")
ENTRIES_PAUSED = Gauge("bot_entries_paused", "1 while new entries are paused (exits allowed).")
SIZING = Counter(
    "bot_sizing_decisions_total",
    "Orders sized, by what sized them (policy: the champion RL policy; rules: rule-based).",
    ["source"],
)
BOOK_SOURCE = Counter(
    "bot_sizing_book_total",
    "Orders sized, by where equity and position came from (fills: the fill-fed book; "
    "portfolio: a GET /portfolio because the book was not known complete).",
    ["source"],
)
BOOK_CORRECTIONS = Counter(
    "bot_book_corrections_total",
    "Checks that found the fill-fed book differing from the portfolio's books (corrected).",
)
BOOK_SEQUENCE = Gauge(
    "bot_book_fill_sequence",
    "The venue fill sequence up to which the fill-fed book holds every fill (-1 before its "
    "first seed from the portfolio).",
)
BOOK_SEQUENCE.set(-1)
BOOK_MISSING = Gauge(
    "bot_book_fills_missing",
    "Venue fill sequences below the highest the book holds that it has not seen (while any is "
    "missing, the bot sizes from GET /portfolio).",
)
