"""`db.query.summary`: operations and the tables they name, in order, without CTE names."""

from __future__ import annotations

import pytest

from backend.infra.db._summary import MAX_SUMMARY_LEN, query_summary


@pytest.mark.parametrize(
    ("statement", "summary"),
    [
        ("SELECT * FROM wuser_table", "SELECT wuser_table"),
        (
            "INSERT INTO shipping_details (id, order_id) SELECT id, order_id FROM orders",
            "INSERT shipping_details SELECT orders",
        ),
        ("SELECT * FROM songs s JOIN artists a ON s.artist_id = a.id", "SELECT songs artists"),
        (
            "SELECT order_date FROM (SELECT * FROM orders o JOIN customers c ON o.c = c.id) x",
            "SELECT SELECT orders customers",
        ),
        ("WITH t AS (SELECT 1 AS x) SELECT x FROM t", "SELECT SELECT"),
        ("WITH recent AS (SELECT * FROM fills) SELECT * FROM recent", "SELECT fills SELECT"),
        ("UPDATE outbox_events SET status = 'sent' WHERE id = 4", "UPDATE outbox_events"),
        ("DELETE FROM orders WHERE note = 'FROM secrets'", "DELETE orders"),
        ("CREATE TABLE IF NOT EXISTS orders (id INTEGER)", "CREATE TABLE orders"),
        ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2", "INSERT t"),
        ("SELECT a FROM x, y AS yy, z", "SELECT x y z"),
        ('SELECT * FROM "Quoted Table"', "SELECT Quoted Table"),
        ("SELECT 42", "SELECT"),
        ("PRAGMA journal_mode=WAL", "PRAGMA"),
        ("BEGIN", "BEGIN"),
        ("/* hint */ SELECT * FROM public.orders", "SELECT public.orders"),
    ],
)
def test_summary_follows_the_conventions(statement: str, summary: str) -> None:
    assert query_summary(statement) == summary


def test_no_known_operation_gives_no_summary() -> None:
    assert query_summary("frobnicate the database") is None


def test_a_long_summary_is_cut_at_a_word() -> None:
    statement = "SELECT * FROM " + ", ".join(f"table_{n}" for n in range(100))
    summary = query_summary(statement)
    assert summary is not None and len(summary) <= MAX_SUMMARY_LEN
    assert summary.split(" ")[-1].startswith("table_")
