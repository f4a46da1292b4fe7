"""sqlcommenter formatting, statement sanitising and the operation/collection parsers."""

from __future__ import annotations

from backend.infra.db._sqlcomment import (
    append_comment,
    collection_name,
    format_comment,
    operation_name,
    sanitize,
)

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_traceparent_comment_has_the_sqlcommenter_shape() -> None:
    assert format_comment({"traceparent": TP}) == f"/*traceparent='{TP}'*/"


def test_keys_are_sorted_and_values_url_encoded() -> None:
    comment = format_comment({"tracestate": "congo=t61rcWkgMzE,rojo=00f067aa", "traceparent": TP})
    assert comment == (f"/*traceparent='{TP}',tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa'*/")


def test_a_value_cannot_close_the_quote_or_the_comment() -> None:
    comment = format_comment({"route": "/x'*/; DROP TABLE orders; --"})
    assert comment.count("*/") == 1 and comment.endswith("*/")
    assert "'" not in comment[len("/*route='") : -len("'*/")]
    assert "%27" in comment and "%2A%2F" in comment


def test_comment_goes_before_a_final_semicolon() -> None:
    assert append_comment("SELECT 1;", "/*a='b'*/") == "SELECT 1 /*a='b'*/;"
    assert append_comment("SELECT 1\n", "/*a='b'*/") == "SELECT 1 /*a='b'*/"


def test_a_statement_that_already_has_a_comment_is_left_alone() -> None:
    assert append_comment("SELECT 1 /*x*/", "/*a='b'*/") == "SELECT 1 /*x*/"
    assert append_comment("SELECT 1", "") == "SELECT 1"


def test_sanitize_replaces_literals_but_keeps_placeholders_and_identifiers() -> None:
    text = "SELECT t1.a FROM t1 WHERE k = 'secret''s' AND n > 42.5 AND id = $1 AND x = ?"
    assert sanitize(text) == "SELECT t1.a FROM t1 WHERE k = ? AND n > ? AND id = $1 AND x = ?"


def test_sanitize_collapses_whitespace_and_truncates() -> None:
    assert sanitize("SELECT\n   a\tFROM b") == "SELECT a FROM b"
    long = sanitize("SELECT " + "a, " * 2000 + "b FROM c", max_len=100)
    assert len(long) == 100 and long.endswith("...")


def test_operation_name() -> None:
    assert operation_name("  select 1") == "SELECT"
    assert operation_name("/* c */ INSERT INTO x VALUES (1)") == "INSERT"
    assert operation_name("(SELECT 1) UNION (SELECT 2)") == "SELECT"
    assert operation_name("FROBNICATE everything") == "OTHER"
    assert operation_name("") == "OTHER"


def test_collection_name() -> None:
    assert collection_name("SELECT a FROM orders WHERE x") == "orders"
    assert collection_name('INSERT INTO "Fills" (a) VALUES (1)') == "Fills"
    assert collection_name("UPDATE public.positions SET a = 1") == "positions"
    assert collection_name("CREATE TABLE IF NOT EXISTS fills (id int)") == "fills"
    assert collection_name("SELECT 1") is None
