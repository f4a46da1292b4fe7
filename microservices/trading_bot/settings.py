"""trading-bot settings: throttle, confidence floor, sizing policy and which symbols to trade."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.trading.features import WINDOW
from backend.trading.sizing import SizingParams


class TradingBotSettings(BaseSettings):
    """Built once at start-up from `BOT_*` variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    autostart: bool = Field(default=True, validation_alias="BOT_AUTOSTART")
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="BOT_SYMBOLS"
    )
    """Symbols to trade; empty means every symbol that ticks."""
    window: int = Field(default=64, ge=WINDOW, le=10_000, validation_alias="BOT_WINDOW")
    """Prices kept per symbol (the model needs the last 21)."""
    decision_interval_ms: int = Field(
        default=5_000, ge=0, validation_alias="BOT_DECISION_INTERVAL_MS"
    )
    """At most one decision per symbol in this interval; ticks in between only fill the window."""
    decision_hold_ms: int = Field(default=1_000, ge=0, validation_alias="BOT_DECISION_HOLD_MS")
    """A due decision whose tick was published before the previous decision ended (it queued
    behind it: the feed publishes every symbol's tick together, and the bus hands the bot one
    tick at a time) waits for the symbol's next tick, for at most this long. The decisions of
    several symbols so fall on successive ticks instead of queueing behind each other. 0: never
    wait."""
    min_confidence: float = Field(default=0.55, ge=0, le=1, validation_alias="BOT_MIN_CONFIDENCE")
    max_tick_age_ms: int = Field(default=10_000, gt=0, validation_alias="BOT_MAX_TICK_AGE_MS")
    """Ticks published longer ago than this (a backlog after downtime) are not traded."""
    equity_fraction: Decimal = Field(
        default=Decimal("0.02"), gt=0, le=1, validation_alias="BOT_EQUITY_FRACTION"
    )
    max_notional: Decimal = Field(default=Decimal(1_000), gt=0, validation_alias="BOT_MAX_NOTIONAL")
    max_quantity: Decimal = Field(default=Decimal(1_000), gt=0, validation_alias="BOT_MAX_QUANTITY")
    lot_size: Decimal = Field(default=Decimal("0.0001"), gt=0, validation_alias="BOT_LOT_SIZE")
    min_notional: Decimal = Field(default=Decimal(10), ge=0, validation_alias="BOT_MIN_NOTIONAL")
    book_check_s: float = Field(default=5.0, gt=0, le=3_600, validation_alias="BOT_BOOK_CHECK_S")
    """How often the fill-fed book (cash, positions) is checked against portfolio-intelligence's
    books, off the decision path; a book unchecked for three times this is not sized from."""
    sizing_policy: Literal["rules", "rl-champion"] = Field(
        default="rules", validation_alias="BOT_SIZING_POLICY"
    )
    """`rl-champion`: scale each order by rl-training's champion policy (rule-based sizing,
    with the reason logged, while there is none); `rules`: the rule-based sizing alone."""
    policy_refresh_s: float = Field(
        default=30.0, gt=0, le=3_600, validation_alias="BOT_POLICY_REFRESH_S"
    )
    """How often the champion is asked for (a new one is loaded when its sha256 changes)."""

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(s.strip().upper() for s in value.split(",") if s.strip())
        return value

    def to_domain(self) -> SizingParams:
        """The sizing policy these settings describe."""
        return SizingParams(
            equity_fraction=self.equity_fraction,
            max_notional=self.max_notional,
            max_quantity=self.max_quantity,
            lot_size=self.lot_size,
            min_notional=self.min_notional,
        )
