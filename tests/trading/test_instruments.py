"""Instrument rules: defaults that match the simulated feed, checks, rounding, configuration."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.trading.instruments import (
    DEFAULT_INSTRUMENTS,
    Instrument,
    InstrumentError,
    parse_instruments,
)
from backend.trading.types import OrderRequest, Side, Symbol
from microservices.eventbus_bridge.sources import symbol_specs
from tests.support.factories import BTC, quote, request

D = Decimal


def btc() -> Instrument:
    instrument = DEFAULT_INSTRUMENTS.get(BTC)
    assert instrument is not None
    return instrument


def test_default_ticks_and_lots_match_what_the_simulated_feed_emits() -> None:
    for spec in symbol_specs(["BTCUSDT", "ETHUSDT", "SOLUSDT"]):
        instrument = DEFAULT_INSTRUMENTS.get(spec.symbol)
        assert instrument is not None, spec.symbol
        assert instrument.tick_size == spec.price_increment, spec.symbol
        assert instrument.lot_size == D(1).scaleb(-spec.volume_decimals), spec.symbol


@pytest.mark.parametrize(
    ("order", "field", "rule", "reason"),
    [
        (
            request(Side.BUY, "0.0123456789"),
            "quantity",
            "LOT_SIZE",
            "quantity 0.0123456789 is not a multiple of lot size 0.0001 for BTCUSDT",
        ),
        (
            request(Side.BUY, "1", limit="100.001"),
            "limit_price",
            "TICK_SIZE",
            "limit price 100.001 is not a multiple of tick size 0.01 for BTCUSDT",
        ),
        (
            request(Side.BUY, "0.0001", limit="100"),
            "quantity",
            "MIN_NOTIONAL",
            "notional 0.0100 (0.0001 x 100) is below the minimum notional 5 for BTCUSDT",
        ),
        (
            request(Side.SELL, "0.04"),
            "quantity",
            "MIN_NOTIONAL",
            "notional 3.96 (0.04 x 99) is below the minimum notional 5 for BTCUSDT",
        ),
        (
            request(Side.BUY, "1", symbol=Symbol("XRPUSDT")),
            "symbol",
            "UNKNOWN_SYMBOL",
            "unknown symbol XRPUSDT: the venue trades BTCUSDT, ETHUSDT, SOLUSDT",
        ),
    ],
)
def test_an_order_breaking_a_rule_names_the_field_and_the_rule(
    order: OrderRequest, field: str, rule: str, reason: str
) -> None:
    violation = DEFAULT_INSTRUMENTS.violation(order, quote("99", "100"))
    assert violation is not None
    assert (violation.field, violation.rule, violation.reason) == (field, rule, reason)


def test_minimum_quantity_applies_to_orders_that_are_not_reduce_only() -> None:
    instrument = Instrument(BTC, D("0.01"), D("0.001"), D("0.01"), D(0), 2, 3)
    small = request(Side.SELL, "0.005")
    violation = instrument.violation(small, None)
    assert violation is not None and violation.rule == "MIN_QUANTITY"
    assert instrument.violation(request(Side.SELL, "0.005", reduce_only=True), None) is None


def test_a_valid_order_breaks_no_rule() -> None:
    assert DEFAULT_INSTRUMENTS.violation(request(Side.BUY, "0.5"), quote("99", "100")) is None


def test_prices_round_to_the_tick_against_the_trader() -> None:
    assert btc().round_price(D("100.001"), Side.BUY) == D("100.01")
    assert btc().round_price(D("100.009"), Side.SELL) == D("100.00")
    assert btc().round_price(D("100.01"), Side.BUY) == D("100.01")


@given(st.decimals(min_value=D("0.00000001"), max_value=D("1000000"), places=12))
def test_a_fee_is_rounded_up_to_the_quote_precision(amount: Decimal) -> None:
    fee = btc().round_fee(amount)
    assert amount <= fee < amount + D("1e-8")
    assert fee.as_tuple().exponent >= -8


@given(
    st.decimals(min_value=D(0), max_value=D(1000), places=8),
)
def test_floor_quantity_is_the_largest_lot_multiple_not_above(quantity: Decimal) -> None:
    floored = btc().floor_quantity(quantity)
    assert floored % btc().lot_size == 0
    assert floored <= quantity < floored + btc().lot_size


def test_configuration_overrides_and_adds_symbols_with_derived_defaults() -> None:
    instruments = parse_instruments(
        '{"SOLUSDT": {"tick_size": "0.01", "lot_size": "0.01", "min_notional": "1"},'
        ' "dogeusdt": {"tick_size": "0.00001", "lot_size": "1", "quote_precision": 6}}'
    )
    sol = instruments.get(Symbol("SOLUSDT"))
    doge = instruments.get(Symbol("DOGEUSDT"))
    assert sol == Instrument(Symbol("SOLUSDT"), D("0.01"), D("0.01"), D("0.01"), D(1), 2, 2)
    assert doge == Instrument(Symbol("DOGEUSDT"), D("0.00001"), D(1), D(1), D(0), 5, 0, 6)
    assert instruments.get(BTC) == btc()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"BTCUSDT": {"lot_size": "0.1"}}', "BTCUSDT: tick_size is required"),
        ('{"BTCUSDT": {"tick_size": "0", "lot_size": "1"}}', "tick_size must be positive"),
        ('{"BTCUSDT": {"tick_size": "x", "lot_size": "1"}}', "tick_size 'x' is not a decimal"),
        ('{"BTCUSDT": {"tick_size": "0.1", "lot_size": "1", "size": 1}}', "unknown field(s) size"),
        (
            '{"BTCUSDT": {"tick_size": "0.1", "lot_size": "1", "min_quantity": "1.5"}}',
            "min_quantity 1.5 is not a multiple of lot_size 1",
        ),
        (
            '{"BTCUSDT": {"tick_size": "0.001", "lot_size": "1", "price_precision": 2}}',
            "tick_size 0.001 has more decimal places than price_precision 2",
        ),
        (
            '{"BTCUSDT": {"tick_size": "0.00001", "lot_size": "0.0001", "quote_precision": 8}}',
            "exceeds quote_precision 8",
        ),
        ('{"BTCUSDT": {"tick_size": "0.1", "lot_size": "NaN"}}', "lot_size must be finite"),
    ],
)
def test_a_bad_configuration_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InstrumentError, match=re.escape(message)):
        parse_instruments(text)
