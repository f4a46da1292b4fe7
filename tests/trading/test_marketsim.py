from decimal import Decimal
from pathlib import Path

import pytest

from backend.trading.marketsim import (
    MarketSimulator,
    Regime,
    StalledFeed,
    SymbolSpec,
    detect_stalled_feeds,
    load_sample_ticks,
    load_ticks_csv,
    parse_ticks_csv,
    ticks_to_csv,
)
from backend.trading.types import Quote, Symbol
from tests.support.factories import BTC, ETH

SPECS = [SymbolSpec(BTC, Decimal("40000")), SymbolSpec(ETH, Decimal("2500"))]
HEADER = "ts_ms,symbol,bid,ask,last,volume\n"


def simulate(seed: int, steps: int = 500) -> list[Quote]:
    return list(MarketSimulator(SPECS, seed=seed).ticks(steps))


def test_same_seed_gives_identical_ticks() -> None:
    assert simulate(42) == simulate(42)


def test_different_seeds_give_different_ticks() -> None:
    assert simulate(1) != simulate(2)


def test_each_step_quotes_every_symbol_at_the_tick_interval() -> None:
    sim = MarketSimulator(SPECS, seed=3, start_ms=10_000, tick_interval_ms=250)
    first, second = sim.step(), sim.step()
    assert [q.symbol for q in first] == [BTC, ETH]
    assert {q.ts_ms for q in first} == {10_250}
    assert {q.ts_ms for q in second} == {10_500}


def test_quotes_are_well_formed_and_on_the_price_grid() -> None:
    for q in MarketSimulator(SPECS, seed=5).ticks(2_000):
        assert Decimal(0) < q.bid < q.ask
        assert q.last in (q.bid, q.ask)
        assert q.volume > 0
        assert q.bid % Decimal("0.01") == 0 and q.ask % Decimal("0.01") == 0


def test_regimes_switch_over_a_long_run() -> None:
    sim = MarketSimulator([SymbolSpec(BTC, Decimal(100))], seed=11, tick_interval_ms=10_000)
    seen = set()
    for _ in range(2_000):
        sim.step()
        seen.add(sim.regime(BTC))
    assert seen == set(Regime)


def test_simulator_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        MarketSimulator([], seed=0)
    with pytest.raises(ValueError):
        MarketSimulator(SPECS, seed=0, tick_interval_ms=0)


def test_csv_round_trips_simulated_ticks() -> None:
    ticks = list(MarketSimulator(SPECS, seed=8).ticks(50))
    assert parse_ticks_csv(ticks_to_csv(ticks)) == ticks


def test_csv_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(HEADER + "1000,BTCUSDT,99.5,100.5,100,3\n", encoding="utf-8")
    (tick,) = load_ticks_csv(path)
    assert (tick.symbol, tick.bid, tick.ask, tick.volume, tick.ts_ms) == (
        BTC,
        Decimal("99.5"),
        Decimal("100.5"),
        Decimal(3),
        1000,
    )


def test_csv_accepts_columns_in_any_order_and_skips_blank_lines() -> None:
    text = "symbol,ts_ms,last,bid,ask,volume\nETHUSDT,5,10,9,11,1\n\n"
    (tick,) = parse_ticks_csv(text)
    assert tick.symbol == ETH and tick.last == Decimal(10)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("x,BTCUSDT,1,2,1,1", "line 2, column ts_ms"),
        ("1,,1,2,1,1", "line 2, column symbol"),
        ("1,BTCUSDT,abc,2,1,1", "line 2, column bid"),
        ("1,BTCUSDT,1,NaN,1,1", "line 2, column ask"),
        ("1,BTCUSDT,1,2,0,1", "line 2, column last"),
        ("1,BTCUSDT,1,2,1,-1", "line 2, column volume"),
        ("1,BTCUSDT,3,2,2,1", "line 2, column ask"),
        ("1,BTCUSDT,1,2,1", "line 2: expected 6 fields"),
    ],
)
def test_malformed_csv_row_is_reported_with_line_and_column(row: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ticks_csv(HEADER + row + "\n")


def test_csv_error_names_the_right_line_after_good_rows() -> None:
    text = HEADER + "1,BTCUSDT,1,2,1,1\n2,BTCUSDT,1,2,1,1\n3,BTCUSDT,1,2,oops,1\n"
    with pytest.raises(ValueError, match="line 4, column last"):
        parse_ticks_csv(text)


def test_csv_with_missing_columns_is_rejected() -> None:
    with pytest.raises(ValueError, match="line 1: missing column"):
        parse_ticks_csv("ts_ms,symbol,bid\n1,BTCUSDT,1\n")


def test_csv_rejects_time_going_backwards_for_a_symbol() -> None:
    text = HEADER + "5,BTCUSDT,1,2,1,1\n7,ETHUSDT,1,2,1,1\n4,BTCUSDT,1,2,1,1\n"
    with pytest.raises(ValueError, match="line 4, column ts_ms"):
        parse_ticks_csv(text)


def test_bundled_sample_is_simulator_output_for_seed_2024() -> None:
    sim = MarketSimulator(SPECS, seed=2024)
    assert load_sample_ticks() == list(sim.ticks(150))


def test_stalled_feeds_are_those_silent_beyond_the_threshold() -> None:
    last = {BTC: 1_000, ETH: 9_500}
    assert detect_stalled_feeds(last, now_ms=10_000, threshold_ms=2_000) == [
        StalledFeed(BTC, 1_000, 9_000)
    ]


def test_expected_feed_never_seen_is_stalled() -> None:
    sol = Symbol("SOLUSDT")
    result = detect_stalled_feeds({BTC: 9_999}, 10_000, 2_000, expected=[BTC, sol])
    assert result == [StalledFeed(sol, None, None)]


def test_feed_exactly_at_threshold_is_not_stalled() -> None:
    assert detect_stalled_feeds({BTC: 8_000}, 10_000, 2_000) == []
