from decimal import Decimal

import pytest

from backend.trading.types import Quote, Side, Symbol
from tests.support.factories import BTC, quote, request


def test_side_sign_and_opposite() -> None:
    assert (Side.BUY.sign, Side.SELL.sign) == (1, -1)
    assert Side.BUY.opposite is Side.SELL and Side.SELL.opposite is Side.BUY


def test_quote_mid_is_halfway_between_bid_and_ask() -> None:
    assert quote("100", "101").mid == Decimal("100.5")


@pytest.mark.parametrize(
    ("bid", "ask", "volume"), [("101", "100", "1"), ("0", "1", "1"), ("1", "2", "-1")]
)
def test_quote_rejects_crossed_non_positive_or_negative_volume(
    bid: str, ask: str, volume: str
) -> None:
    with pytest.raises(ValueError):
        Quote(Symbol("X"), Decimal(bid), Decimal(ask), Decimal(ask), Decimal(volume), 0)


def test_signed_quantity_follows_side() -> None:
    assert request(Side.SELL, "2").signed_quantity == Decimal(-2)
    assert request(Side.BUY, "2", symbol=BTC).signed_quantity == Decimal(2)
