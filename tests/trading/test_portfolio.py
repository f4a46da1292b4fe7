from collections import defaultdict
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.trading.portfolio import (
    ConflictingFill,
    EquityPoint,
    FillSequences,
    Portfolio,
    fill_differences,
    max_drawdown,
    performance_report,
    period_returns,
    sharpe_ratio,
    sortino_ratio,
    win_rate,
)
from backend.trading.types import ClientOrderId, Fill, FillId, Liquidity, Side, Symbol
from tests.support.factories import BTC, ETH, fill

CASH = Decimal(100_000)
D = Decimal


def book(*fills: Fill, cash: Decimal = CASH) -> Portfolio:
    portfolio = Portfolio(cash)
    for f in fills:
        portfolio.apply_fill(f)
    return portfolio


# --- booking rules --------------------------------------------------------------------------


def test_redelivered_fill_is_booked_once() -> None:
    portfolio = Portfolio(CASH)
    first = portfolio.apply_fill(fill(Side.BUY, "2", "100", fee="1"))
    again = portfolio.apply_fill(fill(Side.BUY, "2", "100", fee="1"))
    assert first.applied and not first.duplicate
    assert again.duplicate and not again.applied
    assert portfolio.position(BTC).quantity == 2
    assert portfolio.cash == CASH - 201
    assert len(portfolio.ledger) == 1


def test_fill_id_reused_with_different_contents_is_an_error() -> None:
    portfolio = book(fill(Side.BUY, "2", "100"))
    with pytest.raises(ConflictingFill):
        portfolio.apply_fill(fill(Side.BUY, "3", "100"))


def test_a_conflict_names_every_field_that_differs() -> None:
    portfolio = book(fill(Side.BUY, "2", "100", fee="1"))
    with pytest.raises(ConflictingFill) as raised:
        portfolio.apply_fill(fill(Side.SELL, "2", "101", fee="1"))
    assert raised.value.differences == ("side BUY != SELL", "price 100 != 101")
    assert "side BUY != SELL, price 100 != 101" in str(raised.value)


def test_a_copy_that_differs_in_liquidity_is_a_conflict_once_liquidity_is_known() -> None:
    taker = fill(Side.BUY, "2", "100")
    portfolio = book(taker)
    with pytest.raises(ConflictingFill, match="liquidity TAKER != MAKER"):
        portfolio.apply_fill(replace(taker, liquidity=Liquidity.MAKER))


def test_a_fill_replayed_without_its_liquidity_takes_a_copy_of_any_liquidity_as_a_duplicate() -> (
    None
):
    # Fills booked before the ledger kept liquidity come back with a placeholder (audit F9).
    placeholder = fill(Side.BUY, "2", "100")
    portfolio = Portfolio.replay(CASH, [placeholder], liquidity_unknown={placeholder.fill_id})
    outcome = portfolio.apply_fill(replace(placeholder, liquidity=Liquidity.MAKER))
    assert outcome.duplicate and not outcome.applied
    assert portfolio.position(BTC).quantity == 2
    with pytest.raises(ConflictingFill, match="quantity 2 != 3"):
        portfolio.apply_fill(replace(placeholder, quantity=D(3), liquidity=Liquidity.MAKER))


def test_a_copy_that_differs_only_in_its_time_or_in_trailing_zeros_is_a_duplicate() -> None:
    booked = fill(Side.BUY, "2", "100", fee="0.1")
    again = replace(booked, quantity=D("2.000"), price=D("100.00"), fee=D("0.10"), ts_ms=1_001)
    assert fill_differences(booked, again) == []
    assert book(booked).apply_fill(again).duplicate


def test_every_booked_field_takes_part_in_the_comparison() -> None:
    booked = fill(Side.BUY, "2", "100", fee="0.1")
    changes = {
        "client_order_id": ClientOrderId("other"),
        "symbol": ETH,
        "side": Side.SELL,
        "quantity": D(3),
        "price": D(101),
        "fee": D("0.2"),
        "liquidity": Liquidity.MAKER,
    }
    for name, value in changes.items():
        differences = fill_differences(booked, replace(booked, **{name: value}))
        assert [d.split()[0] for d in differences] == [name]
    assert (
        fill_differences(
            booked, replace(booked, liquidity=Liquidity.MAKER), compare_liquidity=False
        )
        == []
    )


def test_a_partial_close_of_a_cost_basis_beyond_1e16_is_rounded_not_an_error() -> None:
    # 3e16 of cost needs 17 integer digits plus 12 decimals: more than 28 digits (audit F15).
    portfolio = book(
        fill(Side.BUY, "3", "1e16", fill_id="a"), fill(Side.SELL, "1", "1e16", fill_id="b")
    )
    position = portfolio.position(BTC)
    assert position.quantity == 2
    assert position.cost_basis == D("2e16")
    assert position.realized_pnl == 0


def test_buys_average_their_prices() -> None:
    portfolio = book(
        fill(Side.BUY, "1", "100", fill_id="a"), fill(Side.BUY, "3", "104", fill_id="b")
    )
    assert portfolio.position(BTC).average_price == D(103)


def test_partial_close_realizes_against_average_cost_and_keeps_it() -> None:
    portfolio = book(
        fill(Side.BUY, "4", "100", fill_id="a"), fill(Side.SELL, "1", "110", fill_id="b")
    )
    position = portfolio.position(BTC)
    assert position.realized_pnl == D(10)
    assert position.quantity == 3 and position.average_price == D(100)


def test_short_position_profits_when_price_falls() -> None:
    portfolio = book(
        fill(Side.SELL, "2", "100", fill_id="a"), fill(Side.BUY, "2", "90", fill_id="b")
    )
    assert portfolio.position(BTC).realized_pnl == D(20)
    assert portfolio.position(BTC).quantity == 0
    assert portfolio.position(BTC).average_price is None


def test_fill_through_zero_closes_then_opens_at_the_fill_price() -> None:
    portfolio = book(
        fill(Side.BUY, "2", "100", fill_id="a"), fill(Side.SELL, "5", "120", fill_id="b")
    )
    position = portfolio.position(BTC)
    assert position.realized_pnl == D(40)
    assert position.quantity == -3 and position.average_price == D(120)


def test_unrealized_pnl_uses_marks_and_fees_are_tracked_separately() -> None:
    portfolio = book(fill(Side.BUY, "2", "100", fee="0.5"))
    portfolio.set_mark(BTC, D(107))
    assert portfolio.unrealized_pnl == D(14)
    assert portfolio.fees == D("0.5")
    assert portfolio.total_pnl == D("13.5")
    assert portfolio.equity == CASH + D("13.5")


def test_exposures_and_equity_across_symbols() -> None:
    portfolio = book(
        fill(Side.BUY, "2", "100", fill_id="a"),
        fill(Side.SELL, "10", "5", fill_id="b", symbol=ETH),
    )
    portfolio.set_marks({BTC: D(110), ETH: D(6)})
    assert portfolio.gross_exposure == D(280)
    assert portfolio.net_exposure == D(160)
    assert portfolio.equity == CASH - 200 + 50 + 160
    assert set(portfolio.open_positions) == {BTC, ETH}


def test_invalid_fill_is_rejected() -> None:
    with pytest.raises(ValueError):
        book(fill(Side.BUY, "0", "100"))


def test_risk_snapshot_reports_daily_pnl_and_raises_the_peak() -> None:
    portfolio = book(fill(Side.BUY, "1", "100"))
    portfolio.set_mark(BTC, D(150))
    snapshot = portfolio.risk_snapshot(5, peak_equity=CASH, day_start_equity=CASH - 10)
    assert snapshot.equity == CASH + 50
    assert snapshot.peak_equity == CASH + 50
    assert snapshot.daily_pnl == D(60)
    assert snapshot.positions == {BTC: D(1)}
    assert snapshot.as_of_ms == 5


def test_closed_trades_feed_the_win_rate() -> None:
    portfolio = book(
        fill(Side.BUY, "2", "100", fill_id="a"),
        fill(Side.SELL, "1", "110", fill_id="b"),
        fill(Side.SELL, "1", "90", fill_id="c"),
        fill(Side.BUY, "1", "50", fill_id="d", symbol=ETH),
        fill(Side.SELL, "1", "55", fill_id="e", symbol=ETH),
    )
    trades = portfolio.closed_trades
    assert [t.realized_pnl for t in trades] == [D(10), D(-10), D(5)]
    assert trades[0].entry_price == D(100) and trades[0].exit_price == D(110)
    assert win_rate(trades) == D(2) / D(3)


# --- analytics ------------------------------------------------------------------------------


def test_max_drawdown_is_the_largest_fall_from_a_peak() -> None:
    curve = [D(100), D(120), D(90), D(130), D(117)]
    assert max_drawdown(curve) == D("0.25")
    assert max_drawdown([D(1), D(2), D(3)]) == 0


def test_sharpe_and_sortino_on_known_returns() -> None:
    returns = [0.01, -0.01, 0.02, 0.0]
    # mean 0.005, sample std sqrt(0.00015 / ...): checked against the textbook formulas.
    mean = 0.005
    std = (sum((r - mean) ** 2 for r in returns) / 3) ** 0.5
    assert sharpe_ratio(returns, 252) == pytest.approx(mean / std * 252**0.5)
    downside = (0.0001 / 4) ** 0.5
    assert sortino_ratio(returns, 252) == pytest.approx(mean / downside * 252**0.5)


def test_ratios_are_undefined_without_enough_variation() -> None:
    assert sharpe_ratio([0.01], 252) is None
    assert sharpe_ratio([0.01, 0.01], 252) is None
    assert sortino_ratio([0.01, 0.02], 252) is None
    assert win_rate([]) is None


def test_performance_report_from_an_equity_curve() -> None:
    portfolio = book(fill(Side.BUY, "10", "100"), cash=D(10_000))
    for ts, price in enumerate(["100", "110", "99", "120"]):
        portfolio.set_mark(BTC, D(price))
        portfolio.record_equity(ts)
    assert portfolio.equity_curve[1] == EquityPoint(1, D(10_100))
    report = performance_report(portfolio.equity_curve, portfolio.closed_trades, 365)
    assert report.total_return == D(200) / D(10_000)
    assert report.max_drawdown == D(110) / D(10_100)
    assert report.sharpe is not None and report.sortino is not None
    assert report.win_rate is None and report.trades == 0
    assert period_returns([D(100), D(110)]) == [pytest.approx(0.1)]


# --- properties of the money math -----------------------------------------------------------

SYMBOLS = [BTC, ETH]
quantities = st.decimals(min_value="0.0001", max_value=100, places=4)
prices = st.decimals(min_value="0.01", max_value=50_000, places=2)
fees = st.decimals(min_value=0, max_value=5, places=4)


@st.composite
def fill_sequences(draw: st.DrawFn, max_size: int = 25) -> list[Fill]:
    rows = draw(
        st.lists(
            st.tuples(st.sampled_from(SYMBOLS), st.sampled_from(Side), quantities, prices, fees),
            min_size=1,
            max_size=max_size,
        )
    )
    return [
        fill(side, qty, price, fee=fee, fill_id=f"f{i}", symbol=symbol, ts_ms=i)
        for i, (symbol, side, qty, price, fee) in enumerate(rows)
    ]


def state_of(portfolio: Portfolio) -> tuple[object, ...]:
    return (
        portfolio.cash,
        portfolio.positions,
        portfolio.closed_trades,
        portfolio.ledger,
        portfolio.equity,
    )


@settings(max_examples=150, deadline=None)
@given(fills=fill_sequences(), marks=st.tuples(prices, prices))
def test_total_pnl_equals_cash_change_plus_marked_value(
    fills: list[Fill], marks: tuple[Decimal, Decimal]
) -> None:
    portfolio = book(*fills)
    portfolio.set_marks(dict(zip(SYMBOLS, marks, strict=True)))
    marked_value = sum(
        (p.quantity * (portfolio.mark(s) or 0) for s, p in portfolio.positions.items()), D(0)
    )
    assert portfolio.total_pnl == (portfolio.cash - CASH) + marked_value
    assert portfolio.equity - CASH == portfolio.total_pnl


@settings(max_examples=150, deadline=None)
@given(fills=fill_sequences())
def test_positions_net_signed_quantities_and_cash_pays_notional_and_fees(fills: list[Fill]) -> None:
    portfolio = book(*fills)
    net: dict[Symbol, Decimal] = defaultdict(Decimal)
    for f in fills:
        net[f.symbol] += f.quantity * f.side.sign
    assert {s: p.quantity for s, p in portfolio.positions.items()} == dict(net)
    assert portfolio.fees == sum((f.fee for f in fills), D(0))
    assert (
        portfolio.cash
        == CASH - sum((f.quantity * f.price * f.side.sign for f in fills), D(0)) - portfolio.fees
    )


@settings(max_examples=100, deadline=None)
@given(fills=fill_sequences(), redeliveries=st.lists(st.integers(min_value=0), max_size=10))
def test_ledger_replay_with_redeliveries_equals_incremental_state(
    fills: list[Fill], redeliveries: list[int]
) -> None:
    incremental = book(*fills)
    stream = list(fills)
    for k in redeliveries:
        # Redeliver an already-seen fill at a later point of the stream.
        position = k % len(stream)
        stream.insert(position + 1, stream[k % (position + 1)])
    replayed = Portfolio.replay(CASH, stream)
    assert state_of(replayed) == state_of(incremental)
    assert state_of(Portfolio.replay(CASH, incremental.ledger)) == state_of(incremental)


@settings(max_examples=100, deadline=None)
@given(
    lots=st.lists(st.tuples(quantities, prices), min_size=1, max_size=10),
    side=st.sampled_from(Side),
)
def test_average_price_is_quantity_weighted(
    lots: list[tuple[Decimal, Decimal]], side: Side
) -> None:
    portfolio = book(*(fill(side, q, p, fill_id=f"f{i}") for i, (q, p) in enumerate(lots)))
    total_quantity = sum((q for q, _ in lots), D(0))
    expected = sum((q * p for q, p in lots), D(0)) / total_quantity
    assert portfolio.position(BTC).average_price == expected
    assert portfolio.position(BTC).quantity == total_quantity * side.sign


@settings(max_examples=100, deadline=None)
@given(
    quantity=quantities,
    entry=prices,
    exit_price=prices,
    parts=st.integers(min_value=1, max_value=6),
    side=st.sampled_from(Side),
)
def test_closing_in_parts_realizes_the_same_as_closing_at_once(
    quantity: Decimal, entry: Decimal, exit_price: Decimal, parts: int, side: Side
) -> None:
    part = (quantity / parts).quantize(D("0.0001"))
    sizes = [part] * (parts - 1) + [quantity - part * (parts - 1)]
    sizes = [s for s in sizes if s > 0]
    closes = [
        fill(side.opposite, size, exit_price, fill_id=f"c{i}") for i, size in enumerate(sizes)
    ]
    portfolio = book(fill(side, quantity, entry, fill_id="open"), *closes)
    position = portfolio.position(BTC)
    assert position.quantity == 0 and position.cost_basis == 0
    assert position.realized_pnl == (exit_price - entry) * quantity * side.sign
    assert sum((t.realized_pnl for t in portfolio.closed_trades), D(0)) == position.realized_pnl


@settings(max_examples=100, deadline=None)
@given(
    opened=st.lists(st.tuples(quantities, prices), min_size=1, max_size=5),
    close_fraction=st.decimals(min_value="0.01", max_value="0.99", places=2),
    exit_price=prices,
)
def test_partial_close_keeps_the_average_price_of_the_rest(
    opened: list[tuple[Decimal, Decimal]], close_fraction: Decimal, exit_price: Decimal
) -> None:
    fills = [fill(Side.BUY, q, p, fill_id=f"o{i}") for i, (q, p) in enumerate(opened)]
    portfolio = book(*fills)
    before = portfolio.position(BTC)
    close = (before.quantity * close_fraction).quantize(D("0.0001"))
    if close == 0 or close >= before.quantity:
        return  # rounding made it no close or a full close: not a partial close
    portfolio.apply_fill(fill(Side.SELL, close, exit_price, fill_id="close"))
    after = portfolio.position(BTC)
    assert before.average_price is not None and after.average_price is not None
    assert abs(after.average_price - before.average_price) < D("1e-9")
    assert abs(after.realized_pnl - (exit_price - before.average_price) * close) < D("1e-9")


@settings(max_examples=100, deadline=None)
@given(fills=fill_sequences(max_size=10), mark=prices)
def test_splitting_fills_into_smaller_fills_changes_nothing_but_rounding(
    fills: list[Fill], mark: Decimal
) -> None:
    split: list[Fill] = []
    for f in fills:
        half = (f.quantity / 2).quantize(D("0.0001"))
        pieces = [q for q in (half, f.quantity - half) if q > 0]
        fee_half = (f.fee / 2).quantize(D("0.0001"))
        piece_fees = [fee_half, f.fee - fee_half] if len(pieces) == 2 else [f.fee]
        for j, (q, fee) in enumerate(zip(pieces, piece_fees, strict=True)):
            split.append(
                Fill(
                    FillId(f"{f.fill_id}.{j}"),
                    f.client_order_id,
                    f.symbol,
                    f.side,
                    q,
                    f.price,
                    fee,
                    f.liquidity,
                    f.ts_ms,
                )
            )
    whole, parts = book(*fills), book(*split)
    for p in (whole, parts):
        p.set_marks(dict.fromkeys(SYMBOLS, mark))
    assert parts.cash == whole.cash
    assert parts.total_pnl == whole.total_pnl
    for symbol in SYMBOLS:
        assert parts.position(symbol).quantity == whole.position(symbol).quantity
        assert abs(parts.position(symbol).realized_pnl - whole.position(symbol).realized_pnl) < D(
            "1e-8"
        )


# Wire bounds of quantities and prices (backend.infra.service Quantity, Price): <= 1e12, 12 places.
wire_quantities = st.decimals(min_value="1e-12", max_value="1e12", places=12)
wire_prices = st.decimals(min_value="1e-12", max_value="1e12", places=12)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(Side), wire_quantities, wire_prices), min_size=1, max_size=12
    )
)
def test_any_fills_within_the_wire_bounds_book_without_a_decimal_error(
    rows: list[tuple[Side, Decimal, Decimal]],
) -> None:
    portfolio = book(
        *(fill(side, q, p, fill_id=f"f{i}") for i, (side, q, p) in enumerate(rows)),
    )
    net = sum((q * side.sign for side, q, _p in rows), D(0))
    assert portfolio.position(BTC).quantity == net


# --- venue sequences ------------------------------------------------------------------------


def test_sequences_booked_in_order_leave_no_gap() -> None:
    sequences = FillSequences([1, 2, 3])
    assert (sequences.booked, sequences.highest, sequences.missing()) == (3, 3, [])
    assert sequences.missing_count == 0


def test_a_sequence_that_never_arrived_is_a_gap_until_it_does() -> None:
    sequences = FillSequences([2])
    assert (sequences.booked, sequences.highest, sequences.missing()) == (0, 2, [1])
    sequences.add(1)
    assert (sequences.booked, sequences.highest, sequences.missing()) == (2, 2, [])


def test_at_most_twenty_missing_sequences_are_listed_but_all_are_counted() -> None:
    sequences = FillSequences([100])
    assert sequences.missing() == list(range(1, 21))
    assert sequences.missing(3) == [1, 2, 3]
    assert sequences.missing_count == 99


def test_a_sequence_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        FillSequences().add(0)


@settings(max_examples=200, deadline=None)
@given(booked=st.lists(st.integers(min_value=1, max_value=60), max_size=40))
def test_booked_sequence_and_gaps_match_a_recount(booked: list[int]) -> None:
    sequences = FillSequences()
    for n, sequence in enumerate(booked):
        sequences.add(sequence)
        seen = set(booked[: n + 1])
        contiguous = 0
        while contiguous + 1 in seen:
            contiguous += 1
        holes = [s for s in range(1, max(seen)) if s not in seen]
        assert sequences.booked == contiguous
        assert sequences.highest == max(seen)
        assert sequences.missing() == holes[:20]
        assert sequences.missing_count == len(holes)
