"""The fill-fed book: fills once by sequence in any order, seeds from complete books only, and
answers nothing while a fill is missing or the last check against the portfolio is too old."""

from __future__ import annotations

import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from backend.infra.eventbus import Event
from backend.infra.observability import get_logger, get_tracer
from backend.infra.service import Resources, ServiceSettings
from backend.trading.events import MarketTick, OrderFilled
from backend.trading.types import Liquidity, Side
from microservices.contracts.execution import FillPublic, OrderPublic
from microservices.contracts.portfolio_intelligence import PortfolioPublic
from microservices.trading_bot.book import BookFill, FillBook, Holdings
from microservices.trading_bot.settings import TradingBotSettings
from microservices.trading_bot.strategy import SymbolState, TradingBot
from tests.support.wire import portfolio_answer


def fill(sequence: int, side: str = "BUY", quantity: str = "1", price: str = "100") -> BookFill:
    return BookFill(sequence, "SOLUSDT", side, Decimal(quantity), Decimal(price), Decimal("0.1"))


def snapshot(
    cash: str, held: str = "0", booked: int = 0, gaps: list[int] | None = None
) -> PortfolioPublic:
    answer = portfolio_answer(Decimal(cash), {"SOLUSDT": Decimal(held)} if held != "0" else {})
    answer.fills.booked_sequence = answer.fills.max_sequence = booked
    answer.fills.gaps = gaps or []
    return answer


def test_fills_apply_once_in_any_order_and_move_cash_and_position() -> None:
    book = FillBook(max_age_s=10)
    assert book.seed(snapshot("1000"), now=0)
    for f in (fill(2, "SELL", "0.5", "110"), fill(1), fill(2, "SELL", "0.5", "110"), fill(1)):
        book.apply(f)
    book.mark("SOLUSDT", Decimal(120))
    held = book.holdings("SOLUSDT", now=1)
    # cash 1000 - 100 - 0.1 + 55 - 0.1; 0.5 held at 120
    assert held == Holdings(Decimal("954.8") + Decimal(60), Decimal("0.5"))
    assert book.sequence == 2 and book.missing == 0


def test_a_missing_sequence_makes_the_book_say_why_it_cannot_answer() -> None:
    book = FillBook(max_age_s=10)
    assert book.seed(snapshot("1000"), now=0)
    book.apply(fill(1))
    book.apply(fill(3))
    assert book.holdings("SOLUSDT", now=1) == "fill sequence 2 not seen (seen up to 3)"
    assert book.missing == 1
    book.apply(fill(2, "SELL"))
    assert isinstance(book.holdings("SOLUSDT", now=1), Holdings) and book.sequence == 3


def test_unseeded_stale_or_distrusted_books_do_not_answer() -> None:
    book = FillBook(max_age_s=10)
    assert book.holdings("SOLUSDT", now=0) == "not seeded from the portfolio yet"
    assert book.seed(snapshot("1000"), now=0)
    assert isinstance(book.holdings("SOLUSDT", now=10), Holdings)
    assert book.holdings("SOLUSDT", now=10.5) == "not checked against the portfolio for 10.5 s"
    assert book.seed(snapshot("1000"), now=11)
    book.distrust()
    assert isinstance(book.holdings("SOLUSDT", now=11), str)


def test_a_held_position_without_a_price_is_not_valued_at_zero() -> None:
    book = FillBook(max_age_s=10)
    assert book.seed(snapshot("1000", held="2", booked=5), now=0)  # the snapshot has no mark
    assert book.holdings("SOLUSDT", now=1) == "no price for SOLUSDT"
    book.mark("SOLUSDT", Decimal(50))
    assert book.holdings("SOLUSDT", now=1) == Holdings(Decimal(1100), Decimal(2))


def test_incomplete_books_are_not_seeded_from() -> None:
    book = FillBook(max_age_s=10)
    assert not book.seed(snapshot("1000", booked=5, gaps=[3]), now=0)
    behind = snapshot("1000", booked=5)
    behind.fills.max_sequence = 6  # a fill booked above a hole
    assert not book.seed(behind, now=0)
    lost = snapshot("1000", booked=5)
    lost.fills.dead_letters = 1
    assert not book.seed(lost, now=0)
    assert not book.seeded


def test_a_seed_older_than_the_fills_seen_keeps_them() -> None:
    book = FillBook(max_age_s=10)
    book.apply(fill(7))  # seen before any seed: remembered
    assert book.seed(snapshot("1000", booked=5), now=0)
    assert book.holdings("SOLUSDT", now=0) == "fill sequence 6 not seen (seen up to 7)"
    book.apply(fill(6))
    book.mark("SOLUSDT", Decimal(100))
    assert book.holdings("SOLUSDT", now=0) == Holdings(Decimal("999.8"), Decimal(2))
    # The portfolio has booked 6 and 7 meanwhile: nothing counted twice, nothing to correct.
    assert book.seed(snapshot("799.8", held="2", booked=7), now=1)
    assert book.holdings("SOLUSDT", now=1) == Holdings(Decimal("999.8"), Decimal(2))
    assert book.corrections == 0
    # At the same sequence, books that differ are the portfolio's, and counted.
    assert book.seed(snapshot("700", held="2", booked=7), now=2)
    assert book.corrections == 1
    assert book.holdings("SOLUSDT", now=2) == Holdings(Decimal(900), Decimal(2))


def bot(hold_ms: int) -> TradingBot:
    settings = TradingBotSettings(BOT_DECISION_HOLD_MS=hold_ms)  # type: ignore[call-arg]
    return TradingBot(
        settings,
        Resources("trading-bot", ServiceSettings()),
        get_logger("test"),
        get_tracer("test"),
    )


def tick(published: datetime) -> Event[MarketTick]:
    data = MarketTick(
        symbol="SOLUSDT",
        bid=Decimal(99),
        ask=Decimal(101),
        last=Decimal(100),
        volume=Decimal(1),
        ts_ms=0,
    )
    return Event(id=uuid.uuid4().hex, type="market.tick", source="t", time=published, data=data)


def test_a_tick_that_queued_behind_a_decision_waits_for_the_next_for_at_most_the_hold() -> None:
    b = bot(hold_ms=1_000)
    state = SymbolState(prices=deque())
    now = datetime.now(UTC)
    b._last_decision_ended = now.timestamp()
    # Published before the previous decision ended: held back, from the first time...
    assert b._hold_back(state, tick(now - timedelta(milliseconds=50)), now=100.0)
    assert b._hold_back(state, tick(now - timedelta(milliseconds=50)), now=100.9)
    # ...for at most the hold.
    assert not b._hold_back(state, tick(now - timedelta(milliseconds=50)), now=101.0)
    # A tick published after it never waits.
    assert not b._hold_back(SymbolState(prices=state.prices), tick(now), now=100.0)
    # With no hold, nothing waits.
    b0 = bot(hold_ms=0)
    b0._last_decision_ended = now.timestamp()
    assert not b0._hold_back(SymbolState(prices=state.prices), tick(now - timedelta(1)), now=0)


async def test_the_bots_own_fills_count_from_the_acknowledgement_and_once() -> None:
    b = bot(hold_ms=0)
    assert b.book.seed(snapshot("1000"), now=time.monotonic())
    now = datetime.now(UTC)
    placed = OrderPublic(
        client_order_id="qt-1",
        status="FILLED",
        symbol="SOLUSDT",
        side="BUY",
        quantity=Decimal(2),
        filled_quantity=Decimal(2),
        avg_fill_price=Decimal(100),
        order_type="MARKET",
        limit_price=None,
        time_in_force="GTC",
        reduce_only=False,
        reason="",
        risk_decision_id="d1",
        created_at=now,
        updated_at=now,
        fills=[
            FillPublic(
                fill_id="f1",
                sequence=1,
                quantity=Decimal(2),
                price=Decimal(100),
                fee=Decimal("0.2"),
                liquidity="TAKER",
                filled_at=now,
            )
        ],
    )
    b._book_fills_of(placed)
    assert b.book.holdings("SOLUSDT", time.monotonic()) == Holdings(Decimal("999.8"), Decimal(2))
    # Its event, arriving later, is the same fill.
    announced = OrderFilled(
        fill_id="f1",
        client_order_id="qt-1",
        symbol="SOLUSDT",
        side=Side.BUY,
        quantity=Decimal(2),
        price=Decimal(100),
        fee=Decimal("0.2"),
        liquidity=Liquidity.TAKER,
        ts_ms=0,
        sequence=1,
    )
    await b.on_fill(
        Event(id=uuid.uuid4().hex, type="order.filled", source="t", time=now, data=announced)
    )
    assert b.book.holdings("SOLUSDT", time.monotonic()) == Holdings(Decimal("999.8"), Decimal(2))
    # A fill without a venue sequence cannot be placed: nothing is sized from the book until
    # the next check against the portfolio.
    await b.on_fill(
        Event(
            id=uuid.uuid4().hex,
            type="order.filled",
            source="t",
            time=now,
            data=announced.model_copy(update={"sequence": None, "fill_id": "f2"}),
        )
    )
    assert isinstance(b.book.holdings("SOLUSDT", time.monotonic()), str)
