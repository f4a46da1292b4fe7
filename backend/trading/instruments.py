"""Per-symbol instrument rules: tick and lot size, minimums, precisions, and the order checks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from backend.trading.types import OrderRequest, OrderType, Quote, Side, Symbol

ZERO = Decimal(0)
MAX_DECIMALS = 12
# A quote currency's amounts (cash, fees) never need more than this many decimal places.
MAX_QUOTE_DECIMALS = 12


class InstrumentError(ValueError):
    """An instrument definition breaks a rule (bad tick, lot, minimum or precision)."""


@dataclass(frozen=True, slots=True)
class RuleViolation:
    """Why an order breaks its instrument's rules: the request field at fault and the rule."""

    field: str
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Instrument:
    """The trading rules of one spot symbol.

    Prices are multiples of `tick_size`, quantities multiples of `lot_size`; an order must be
    at least `min_quantity` and `min_notional` (quote currency) unless it is reduce-only. The
    precisions are the decimal places prices, quantities and quote-currency amounts (cash,
    fees) are kept in; a tick (lot) is a whole number of price (quantity) units, and a
    notional (quantity x price) fits the quote precision, so every amount the venue books is
    exact at that precision.
    """

    symbol: Symbol
    tick_size: Decimal
    lot_size: Decimal
    min_quantity: Decimal
    min_notional: Decimal
    price_precision: int
    quantity_precision: int
    quote_precision: int = 8

    def __post_init__(self) -> None:
        name = self.symbol
        for label, value in (
            ("price_precision", self.price_precision),
            ("quantity_precision", self.quantity_precision),
        ):
            if not 0 <= value <= MAX_DECIMALS:
                raise InstrumentError(f"{name}: {label} must be 0..{MAX_DECIMALS}, got {value}")
        if not 0 <= self.quote_precision <= MAX_QUOTE_DECIMALS:
            raise InstrumentError(
                f"{name}: quote_precision must be 0..{MAX_QUOTE_DECIMALS}, "
                f"got {self.quote_precision}"
            )
        _require_step(name, "tick_size", self.tick_size, self.price_precision, "price_precision")
        _require_step(
            name, "lot_size", self.lot_size, self.quantity_precision, "quantity_precision"
        )
        if not self.min_quantity.is_finite() or self.min_quantity < self.lot_size:
            raise InstrumentError(
                f"{name}: min_quantity {self.min_quantity} must be at least lot_size "
                f"{self.lot_size}"
            )
        if self.min_quantity % self.lot_size != ZERO:
            raise InstrumentError(
                f"{name}: min_quantity {self.min_quantity} is not a multiple of lot_size "
                f"{self.lot_size}"
            )
        if not self.min_notional.is_finite() or self.min_notional < ZERO:
            raise InstrumentError(f"{name}: min_notional must be >= 0, got {self.min_notional}")
        if self.price_precision + self.quantity_precision > self.quote_precision:
            raise InstrumentError(
                f"{name}: price_precision + quantity_precision "
                f"({self.price_precision} + {self.quantity_precision}) exceeds quote_precision "
                f"{self.quote_precision}: a notional would not be exact in the quote currency"
            )

    # Rounding -----------------------------------------------------------------------------------

    def round_price(self, price: Decimal, side: Side) -> Decimal:
        """`price` on the tick grid, against the trader: up for a buy, down for a sell."""
        rounding = ROUND_CEILING if side is Side.BUY else ROUND_FLOOR
        ticks = (price / self.tick_size).to_integral_value(rounding=rounding)
        return plain(ticks * self.tick_size)

    def floor_quantity(self, quantity: Decimal) -> Decimal:
        """The largest multiple of the lot size not above `quantity` (0 if below one lot)."""
        if quantity <= ZERO:
            return ZERO
        lots = (quantity / self.lot_size).to_integral_value(rounding=ROUND_FLOOR)
        return plain(lots * self.lot_size)

    def round_fee(self, amount: Decimal) -> Decimal:
        """A fee amount rounded up to the quote precision, so a fee is never undercharged."""
        return plain(amount.quantize(self.quote_unit, rounding=ROUND_CEILING))

    @property
    def quote_unit(self) -> Decimal:
        """The smallest amount of the quote currency (10 ** -quote_precision)."""
        return Decimal(1).scaleb(-self.quote_precision)

    # Order checks -------------------------------------------------------------------------------

    def violation(self, request: OrderRequest, quote: Quote | None) -> RuleViolation | None:
        """The first rule `request` breaks, or None.

        Minimum quantity and notional do not apply to reduce-only orders: they only shrink a
        position, and a remainder below the minimum must still be closable. A market order's
        notional is taken at the touch it would trade against; without a quote it is not
        checked here (the venue rejects a market order without a quote anyway).
        """
        quantity = request.quantity
        if quantity % self.lot_size != ZERO:
            return RuleViolation(
                "quantity",
                "LOT_SIZE",
                f"quantity {quantity} is not a multiple of lot size {self.lot_size} "
                f"for {self.symbol}",
            )
        price = request.limit_price
        if request.order_type is OrderType.LIMIT and price is not None:
            if price % self.tick_size != ZERO:
                return RuleViolation(
                    "limit_price",
                    "TICK_SIZE",
                    f"limit price {price} is not a multiple of tick size {self.tick_size} "
                    f"for {self.symbol}",
                )
        elif quote is not None:
            price = quote.ask if request.side is Side.BUY else quote.bid
        if request.reduce_only:
            return None
        if quantity < self.min_quantity:
            return RuleViolation(
                "quantity",
                "MIN_QUANTITY",
                f"quantity {quantity} is below the minimum quantity {self.min_quantity} "
                f"for {self.symbol}",
            )
        if price is not None and quantity * price < self.min_notional:
            return RuleViolation(
                "quantity",
                "MIN_NOTIONAL",
                f"notional {quantity * price} ({quantity} x {price}) is below the minimum "
                f"notional {self.min_notional} for {self.symbol}",
            )
        return None


def plain(value: Decimal) -> Decimal:
    """`value` without trailing zeros and without an exponent: 48.0000 -> 48, 100.10 -> 100.1.

    A database column gives amounts back in this form (SQLite drops trailing zeros), so
    booking them so keeps the numbers the same, digit for digit, across a restart.
    """
    if value.is_zero():
        return Decimal(0)
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    return normalized.quantize(Decimal(1)) if exponent > 0 else normalized


def _require_step(name: str, label: str, step: Decimal, precision: int, unit: str) -> None:
    if not step.is_finite() or step <= ZERO:
        raise InstrumentError(f"{name}: {label} must be positive, got {step}")
    if step % Decimal(1).scaleb(-precision) != ZERO:
        raise InstrumentError(
            f"{name}: {label} {step} has more decimal places than {unit} {precision}"
        )


class Instruments:
    """The instruments a venue trades, by symbol."""

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self._by_symbol: dict[Symbol, Instrument] = {}
        for instrument in instruments:
            if instrument.symbol in self._by_symbol:
                raise InstrumentError(f"{instrument.symbol} is defined twice")
            self._by_symbol[instrument.symbol] = instrument

    def get(self, symbol: Symbol) -> Instrument | None:
        """The rules of `symbol`, or None if the venue does not trade it."""
        return self._by_symbol.get(symbol)

    @property
    def symbols(self) -> list[Symbol]:
        """Every symbol traded, sorted."""
        return sorted(self._by_symbol)

    def __iter__(self) -> Iterator[Instrument]:
        return iter(self._by_symbol[s] for s in self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instruments) and self._by_symbol == other._by_symbol

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Instruments({list(self)!r})"

    def violation(self, request: OrderRequest, quote: Quote | None) -> RuleViolation | None:
        """The first rule `request` breaks (an unknown symbol included), or None."""
        instrument = self.get(request.symbol)
        if instrument is None:
            known = ", ".join(self.symbols) or "none"
            return RuleViolation(
                "symbol",
                "UNKNOWN_SYMBOL",
                f"unknown symbol {request.symbol}: the venue trades {known}",
            )
        return instrument.violation(request, quote)

    def with_overrides(self, overrides: Mapping[Symbol, Instrument]) -> Instruments:
        """These instruments with `overrides` replacing or adding symbols."""
        merged = {**self._by_symbol, **overrides}
        return Instruments(merged[s] for s in sorted(merged))


def _instrument(
    symbol: str,
    tick: str,
    lot: str,
    min_quantity: str,
    min_notional: str,
    price_precision: int,
    quantity_precision: int,
) -> Instrument:
    return Instrument(
        Symbol(symbol),
        Decimal(tick),
        Decimal(lot),
        Decimal(min_quantity),
        Decimal(min_notional),
        price_precision,
        quantity_precision,
    )


# The simulated feed's symbols (`microservices/eventbus_bridge/sources.py`): the tick is the
# feed's price increment, the lot its volume step (4 decimals), which is also the bot's
# default lot size.
DEFAULT_INSTRUMENTS = Instruments(
    [
        _instrument("BTCUSDT", "0.01", "0.0001", "0.0001", "5", 2, 4),
        _instrument("ETHUSDT", "0.01", "0.0001", "0.0001", "5", 2, 4),
        _instrument("SOLUSDT", "0.001", "0.0001", "0.0001", "5", 3, 4),
    ]
)

_FIELDS = {f.name for f in fields(Instrument)} - {"symbol"}
_DECIMAL_FIELDS = ("tick_size", "lot_size", "min_quantity", "min_notional")
_INT_FIELDS = ("price_precision", "quantity_precision", "quote_precision")


def parse_instruments(text: str, base: Instruments = DEFAULT_INSTRUMENTS) -> Instruments:
    """`base` with the instruments of a JSON object replacing or adding symbols.

    The object maps a symbol to its rules: `tick_size`, `lot_size` (required, as decimal
    strings), `min_quantity` (default one lot), `min_notional` (default 0),
    `price_precision` / `quantity_precision` (default: the decimal places of the tick / lot)
    and `quote_precision` (default 8). Raises InstrumentError saying what is wrong.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstrumentError(f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InstrumentError("expected a JSON object mapping each symbol to its rules")
    overrides: dict[Symbol, Instrument] = {}
    for symbol, rules in raw.items():
        if not isinstance(symbol, str) or not symbol.strip():
            raise InstrumentError(f"bad symbol {symbol!r}")
        overrides[Symbol(symbol.strip().upper())] = _parse_one(symbol.strip().upper(), rules)
    return base.with_overrides(overrides)


def _parse_one(symbol: str, rules: object) -> Instrument:
    if not isinstance(rules, dict):
        raise InstrumentError(f"{symbol}: expected an object of rules, got {rules!r}")
    unknown = sorted(set(rules) - _FIELDS)
    if unknown:
        raise InstrumentError(f"{symbol}: unknown field(s) {', '.join(map(str, unknown))}")
    for required in ("tick_size", "lot_size"):
        if required not in rules:
            raise InstrumentError(f"{symbol}: {required} is required")
    values: dict[str, Any] = {}
    for name in _DECIMAL_FIELDS:
        if name in rules:
            values[name] = _decimal(symbol, name, rules[name])
    for name in _INT_FIELDS:
        if name in rules:
            value = rules[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise InstrumentError(f"{symbol}: {name} must be an integer, got {value!r}")
            values[name] = value
    tick, lot = values["tick_size"], values["lot_size"]
    values.setdefault("min_quantity", lot)
    values.setdefault("min_notional", ZERO)
    values.setdefault("price_precision", _decimals(tick))
    values.setdefault("quantity_precision", _decimals(lot))
    return Instrument(Symbol(symbol), **values)


def _decimal(symbol: str, name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InstrumentError(f"{symbol}: {name} must be a decimal string, got {value!r}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise InstrumentError(f"{symbol}: {name} {value!r} is not a decimal") from None
    if not result.is_finite():
        raise InstrumentError(f"{symbol}: {name} must be finite, got {value!r}")
    return result


def _decimals(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite: checked by the caller
    return max(0, -exponent)
