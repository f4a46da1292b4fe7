"""What the bot sizes from: cash and positions kept current from the fills on the bus.

Seeded from portfolio-intelligence's books (`GET /portfolio`) and checked against them in the
background, then moved by every `order.filled` event and by the fills execution reports with
each order, each applied once by its venue fill sequence. Cash and quantities are sums, so
fills apply in any order; the venue numbers its fills without holes, so a missing sequence is a
fill the book does not hold. The book only answers while it is known complete: seeded, no
sequence missing, and checked against the portfolio within `max_age_s`. Otherwise the caller
sizes from a fresh `GET /portfolio`, as it did before there was a book.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

from backend.trading.types import ZERO
from microservices.contracts.portfolio_intelligence import PortfolioPublic

RECENT_FILLS = 4_096
"""Fills remembered to re-apply over a seed that predates them."""


@dataclass(frozen=True, slots=True)
class BookFill:
    """One fill as the book needs it: which venue sequence, and what it does to cash."""

    sequence: int
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal

    @property
    def signed(self) -> Decimal:
        return self.quantity if self.side == "BUY" else -self.quantity


@dataclass(frozen=True, slots=True)
class Holdings:
    """Equity and the position in one symbol, as sizing needs them."""

    equity: Decimal
    held: Decimal


class FillBook:
    """Cash, positions and marks from fills; `holdings` answers only while known complete."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._cash: Decimal | None = None
        self._quantities: dict[str, Decimal] = {}
        self._marks: dict[str, Decimal] = {}
        self._contiguous = 0
        self._above: set[int] = set()
        self._recent: OrderedDict[int, BookFill] = OrderedDict()
        self._checked_at = float("-inf")
        self.corrections = 0
        """Seeds that found the book elsewhere than the portfolio at the same fill sequence."""

    # Inputs ------------------------------------------------------------------------------------

    def mark(self, symbol: str, price: Decimal) -> None:
        """The latest market price of `symbol` (the portfolio marks at the mid, as here)."""
        if price > ZERO:
            self._marks[symbol] = price

    def apply(self, fill: BookFill) -> bool:
        """Book a fill once (by its sequence); False if it was booked already."""
        if fill.sequence < 1 or fill.quantity <= ZERO or fill.price <= ZERO:
            raise ValueError(f"not a venue fill: {fill}")
        if fill.sequence in self._recent and self._cash is None:
            return False
        self._remember(fill)
        if self._cash is None:
            return True  # kept for the seed, which re-applies what it does not hold
        return self._book(fill)

    def seed(self, snapshot: PortfolioPublic, now: float) -> bool:
        """Start again from the portfolio's books, plus the fills seen that they do not hold.

        Refused (False, nothing changed) unless the books are complete: no fill sequence
        missing and no fill dead-lettered. A snapshot older than the book is as good as a
        newer one: the fills since are re-applied from memory, and a hole left by one no
        longer remembered keeps the book unknown until the next seed.
        """
        fills = snapshot.fills
        if fills.gaps or fills.booked_sequence != fills.max_sequence or fills.dead_letters:
            return False
        quantities = {p.symbol: p.quantity for p in snapshot.positions if p.quantity}
        same_point = (
            self._cash is not None and not self._above and self._contiguous == fills.booked_sequence
        )
        if same_point and (self._cash != snapshot.cash or self._quantities != quantities):
            self.corrections += 1
        self._cash, self._quantities = snapshot.cash, quantities
        for position in snapshot.positions:
            if position.mark is not None and position.symbol not in self._marks:
                self._marks[position.symbol] = position.mark
        self._contiguous, self._above = fills.booked_sequence, set()
        for fill in list(self._recent.values()):
            self._book(fill)
        self._checked_at = now
        return True

    def distrust(self) -> None:
        """Answer nothing until the next seed (a fill came that the book cannot place)."""
        self._checked_at = float("-inf")

    # Answers -----------------------------------------------------------------------------------

    def holdings(self, symbol: str, now: float) -> Holdings | str:
        """Equity and the position in `symbol`, or why the book cannot say."""
        if self._cash is None:
            return "not seeded from the portfolio yet"
        if self._above:
            lowest = self._contiguous + 1
            return f"fill sequence {lowest} not seen (seen up to {max(self._above)})"
        age_s = now - self._checked_at
        if age_s > self.max_age_s:
            return f"not checked against the portfolio for {age_s:.1f} s"
        equity = self._cash
        for held_symbol, quantity in self._quantities.items():
            mark = self._marks.get(held_symbol)
            if mark is None:
                return f"no price for {held_symbol}"
            equity += quantity * mark
        return Holdings(equity, self._quantities.get(symbol, ZERO))

    @property
    def seeded(self) -> bool:
        """Whether the book was ever seeded from the portfolio."""
        return self._cash is not None

    @property
    def missing(self) -> int:
        """How many fill sequences below the highest booked the book has not seen."""
        return max(self._above) - self._contiguous - len(self._above) if self._above else 0

    @property
    def sequence(self) -> int:
        """The highest fill sequence up to which every fill is booked."""
        return self._contiguous

    # Internals ---------------------------------------------------------------------------------

    def _book(self, fill: BookFill) -> bool:
        if fill.sequence <= self._contiguous or fill.sequence in self._above:
            return False
        assert self._cash is not None
        signed = fill.signed
        self._cash -= signed * fill.price + fill.fee
        quantity = self._quantities.get(fill.symbol, ZERO) + signed
        if quantity:
            self._quantities[fill.symbol] = quantity
        else:
            self._quantities.pop(fill.symbol, None)
        # A fill is the freshest observed price of its symbol (so the portfolio marks too).
        self._marks[fill.symbol] = fill.price
        if fill.sequence == self._contiguous + 1:
            self._contiguous = fill.sequence
            while self._contiguous + 1 in self._above:
                self._contiguous += 1
                self._above.remove(self._contiguous)
        else:
            self._above.add(fill.sequence)
        return True

    def _remember(self, fill: BookFill) -> None:
        self._recent[fill.sequence] = fill
        self._recent.move_to_end(fill.sequence)
        while len(self._recent) > RECENT_FILLS:
            self._recent.popitem(last=False)
