"""The desk's memory of the client order ids it received, which GET /exposure answers from."""

from __future__ import annotations

from microservices.execution.desk import ReceivedIds


def test_ids_since_a_time_come_from_memory_within_the_window() -> None:
    received = ReceivedIds(window_ms=1_000)
    received.reset(10_000, [(10_100, "a"), (10_200, "b")])
    received.add(10_300, "c")
    assert received.since(10_000) == ["a", "b", "c"]
    assert received.since(10_200) == ["b", "c"]
    assert received.since(10_301) == []


def test_a_time_before_what_is_remembered_is_the_database_s_to_answer() -> None:
    received = ReceivedIds(window_ms=1_000)
    assert received.since(0) is None  # nothing loaded yet
    received.reset(10_000, [])
    assert received.since(9_999) is None
    received.add(12_000, "late")  # nothing forgotten yet: all since 10_000 is known
    assert received.since(10_500) == ["late"]
    received.add(12_500, "later")  # "late" is still inside the window
    received.add(13_100, "latest")  # the window moves on: 12_100 and later only
    assert received.since(12_000) is None
    assert received.since(12_100) == ["later", "latest"]


def test_a_clock_stepping_back_gives_a_superset_never_a_missing_id() -> None:
    received = ReceivedIds(window_ms=10_000)
    received.reset(0, [])
    received.add(5_000, "first")
    received.add(4_000, "second")  # the wall clock stepped back
    assert received.since(4_000) == ["first", "second"]
    assert received.since(5_000) == ["first", "second"]


def test_old_ids_are_forgotten_in_batches() -> None:
    received = ReceivedIds(window_ms=100)
    received.reset(0, [])
    for n in range(20_000):
        received.add(n, f"id-{n}")
    assert received.since(19_900) == [f"id-{n}" for n in range(19_900, 20_000)]
    assert received.since(19_899)[0] == "id-19899"
    assert received.since(19_898) is None
    assert len(received._ids) < 20_000
