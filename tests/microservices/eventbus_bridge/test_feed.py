"""Feed schedules and the stall watch, as plain code: determinism, replay pacing, stalls."""

from __future__ import annotations

from itertools import islice

from backend.trading.marketsim import load_sample_ticks
from microservices.eventbus_bridge.feed import StallWatch
from microservices.eventbus_bridge.settings import EventbusBridgeSettings
from microservices.eventbus_bridge.sources import replay_steps, simulated_steps


def test_the_simulated_feed_is_deterministic_for_a_seed() -> None:
    settings = EventbusBridgeSettings(FEED_SEED=3, FEED_RATE_HZ=4)
    first = list(islice(simulated_steps(settings, start_ms=0), 50))
    again = list(islice(simulated_steps(settings, start_ms=0), 50))
    other = list(islice(simulated_steps(EventbusBridgeSettings(FEED_SEED=4), start_ms=0), 50))
    assert first == again
    assert [s.quotes for s in first] != [s.quotes for s in other]
    assert all({q.symbol for q in s.quotes} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"} for s in first)
    assert [s.delay_s for s in first[:3]] == [0.0, 0.25, 0.25]


def test_a_speed_up_moves_the_market_faster_not_the_tick_rate() -> None:
    slow = list(islice(simulated_steps(EventbusBridgeSettings(FEED_SPEEDUP=1), start_ms=0), 3))
    fast = list(islice(simulated_steps(EventbusBridgeSettings(FEED_SPEEDUP=60), start_ms=0), 3))
    assert [s.delay_s for s in slow] == [s.delay_s for s in fast]
    assert fast[1].quotes[0].ts_ms - fast[0].quotes[0].ts_ms == 60 * 500


def test_replay_groups_the_bundled_file_by_time_paced_by_the_speed_up() -> None:
    quotes = load_sample_ticks()
    steps = list(replay_steps(quotes, speedup=10, loop=False))
    assert sum(len(s.quotes) for s in steps) == len(quotes)
    assert [q for s in steps for q in s.quotes] == sorted(quotes, key=lambda q: q.ts_ms)
    assert steps[0].delay_s == 0.0 and steps[1].delay_s == 0.1


def test_a_looping_replay_keeps_event_time_increasing() -> None:
    quotes = load_sample_ticks()
    steps = list(islice(replay_steps(quotes, speedup=1000, loop=True), 400))
    times = [s.quotes[0].ts_ms for s in steps]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_a_symbol_silent_past_the_threshold_is_reported_once_then_recovers() -> None:
    watch = StallWatch(["BTCUSDT", "SOLUSDT"], threshold_ms=1_000, started_ms=0)
    watch.seen("BTCUSDT", 900)
    assert watch.check(1_000) == ([], [])
    new, _ = watch.check(1_500)
    assert [(s.symbol, s.last_ts_ms, s.silent_ms) for s in new] == [("SOLUSDT", 0, 1_500)]
    assert watch.check(1_600)[0] == [], "a stall is reported once"
    assert [s.symbol for s in watch.stalled] == ["SOLUSDT"]
    watch.seen("SOLUSDT", 1_700)
    assert watch.check(1_800) == ([], ["SOLUSDT"])
    assert watch.stalled == []
