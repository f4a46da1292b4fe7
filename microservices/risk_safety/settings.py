"""risk-safety settings: the limits, the venue costs it judges with, the approval secret."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.trading.approval import DEVELOPMENT_SECRET
from backend.trading.risk import RiskLimits
from backend.trading.types import Symbol


class RiskSafetySettings(BaseSettings):
    """Built once at start-up from `RISK_*` variables; a bad value names its variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    max_order_notional: Decimal = Field(
        default=Decimal(25_000), gt=0, validation_alias="RISK_MAX_ORDER_NOTIONAL"
    )
    max_position_quantity: Decimal = Field(
        default=Decimal(1_000), gt=0, validation_alias="RISK_MAX_POSITION"
    )
    position_limits: Annotated[dict[str, Decimal], NoDecode] = Field(
        default_factory=dict, validation_alias="RISK_POSITION_LIMITS"
    )
    """Per-symbol position limits, e.g. `BTCUSDT=2,ETHUSDT=30`."""
    max_gross_exposure: Decimal = Field(
        default=Decimal(75_000), gt=0, validation_alias="RISK_MAX_GROSS_EXPOSURE"
    )
    max_daily_loss: Decimal = Field(
        default=Decimal(5_000), gt=0, validation_alias="RISK_MAX_DAILY_LOSS"
    )
    max_drawdown: Decimal = Field(
        default=Decimal("0.10"), gt=0, le=1, validation_alias="RISK_MAX_DRAWDOWN"
    )
    max_orders_per_window: int = Field(default=60, gt=0, validation_alias="RISK_MAX_ORDERS")
    order_window_ms: int = Field(default=60_000, gt=0, validation_alias="RISK_ORDER_WINDOW_MS")
    price_band_bps: Decimal = Field(
        default=Decimal(500), gt=0, validation_alias="RISK_PRICE_BAND_BPS"
    )
    max_portfolio_age_ms: int = Field(
        default=15_000, gt=0, validation_alias="RISK_MAX_PORTFOLIO_AGE_MS"
    )
    max_quote_age_ms: int = Field(default=5_000, gt=0, validation_alias="RISK_MAX_QUOTE_AGE_MS")
    """Older market quotes (by the time risk received them, or their own if older) deny."""
    max_fill_lag_ms: int = Field(default=2_000, gt=0, validation_alias="RISK_MAX_FILL_LAG_MS")
    """How long the portfolio may stay behind execution's fill sequence before it is stale."""
    # The venue's own variables and defaults, so risk prices a market order as execution fills it.
    slippage_bps: Decimal = Field(
        default=Decimal(25), ge=0, le=10_000, validation_alias="VENUE_MAX_SLIPPAGE_BPS"
    )
    taker_fee_bps: Decimal = Field(
        default=Decimal(10), ge=0, le=10_000, validation_alias="VENUE_TAKER_FEE_BPS"
    )
    state_push_timeout_ms: int = Field(
        default=1_000, gt=0, le=10_000, validation_alias="RISK_STATE_PUSH_TIMEOUT_MS"
    )
    """How long a state change waits for execution to acknowledge the new state."""
    read_share_ms: int = Field(default=200, ge=0, validation_alias="RISK_READ_SHARE_MS")
    """A check joins a read of the portfolio or of execution's exposure begun at most this
    long ago and still under way, instead of starting its own (0: every check reads)."""
    refresh_ms: int = Field(default=100, ge=0, validation_alias="RISK_REFRESH_MS")
    """While checks keep coming, the portfolio and execution's exposure are read in the
    background this often; a check uses the newest answers whose reads began less than
    `read_share_ms` ago, and reads (or joins a read) itself only when there are none (0: no
    background reads)."""
    approval_ttl_ms: int = Field(default=10_000, gt=0, validation_alias="RISK_APPROVAL_TTL_MS")
    approval_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET), validation_alias="RISK_APPROVAL_SECRET"
    )
    state_journal: Path | None = Field(default=None, validation_alias="RISK_STATE_JOURNAL")
    """Where a trading-state change in force but not recorded is kept until the database
    takes it (journal.py); default `<RUN_VAR_DIR>/risk-safety.state-journal.json`."""

    @field_validator("position_limits", mode="before")
    @classmethod
    def _parse_limits(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        limits: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            symbol, sep, quantity = item.partition("=")
            if not sep or not symbol.strip():
                raise ValueError(f"expected SYMBOL=QUANTITY, got {item!r}")
            limits[symbol.strip().upper()] = quantity.strip()
        return limits

    def to_domain(self) -> RiskLimits:
        """The risk limits these settings describe."""
        return RiskLimits(
            max_order_notional=self.max_order_notional,
            max_position_quantity=self.max_position_quantity,
            max_gross_exposure=self.max_gross_exposure,
            max_daily_loss=self.max_daily_loss,
            max_drawdown_fraction=self.max_drawdown,
            max_orders_per_window=self.max_orders_per_window,
            order_window_ms=self.order_window_ms,
            price_band_bps=self.price_band_bps,
            max_portfolio_age_ms=self.max_portfolio_age_ms,
            position_quantity_overrides={Symbol(s): q for s, q in self.position_limits.items()},
            max_quote_age_ms=self.max_quote_age_ms,
            max_fill_lag_ms=self.max_fill_lag_ms,
            slippage_bps=self.slippage_bps,
            taker_fee_bps=self.taker_fee_bps,
        )
