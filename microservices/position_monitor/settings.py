"""position-monitor settings: the default stops of a new position, their price sources, and how
long an exit has before it escalates."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.trading.stops import ExitConfig, Offset, PriceSource

ZERO = Decimal(0)


class PositionMonitorSettings(BaseSettings):
    """Built once at start-up from `MONITOR_*` variables. A percentage of 0 turns a rule off."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    stop_loss_pct: Decimal = Field(
        default=Decimal(2), ge=0, le=100, validation_alias="MONITOR_STOP_LOSS_PCT"
    )
    """Stop loss, in percent of the entry price."""
    take_profit_pct: Decimal = Field(
        default=Decimal(4), ge=0, le=10_000, validation_alias="MONITOR_TAKE_PROFIT_PCT"
    )
    trailing_stop_pct: Decimal = Field(
        default=ZERO, ge=0, le=100, validation_alias="MONITOR_TRAILING_STOP_PCT"
    )
    """Trailing stop, in percent of the best price since entry (0: off)."""
    trailing_activation_pct: Decimal = Field(
        default=ZERO, ge=0, le=10_000, validation_alias="MONITOR_TRAILING_ACTIVATION_PCT"
    )
    """Profit from the entry, in percent, that arms the trailing stop (0: armed at once)."""
    time_limit_ms: int = Field(default=0, ge=0, validation_alias="MONITOR_TIME_LIMIT_MS")
    """Close a position this long after it opened, whatever the price (0: off)."""
    stop_loss_price: PriceSource = Field(
        default=PriceSource.BID_ASK, validation_alias="MONITOR_STOP_LOSS_PRICE"
    )
    take_profit_price: PriceSource = Field(
        default=PriceSource.BID_ASK, validation_alias="MONITOR_TAKE_PROFIT_PRICE"
    )
    trailing_price: PriceSource = Field(
        default=PriceSource.BID_ASK, validation_alias="MONITOR_TRAILING_PRICE"
    )
    exit_timeout_ms: int = Field(default=5_000, gt=0, validation_alias="MONITOR_EXIT_TIMEOUT_MS")
    """How long an exit order has to fill before the escalation takes over."""
    check_interval_ms: int = Field(
        default=500, gt=0, le=60_000, validation_alias="MONITOR_CHECK_INTERVAL_MS"
    )
    """How often exits under way and time limits are checked."""
    reconcile_interval_ms: int = Field(
        default=5_000, gt=0, validation_alias="MONITOR_RECONCILE_INTERVAL_MS"
    )
    """How often the positions are compared with portfolio-intelligence's `GET /portfolio`."""

    def to_domain(self) -> ExitConfig:
        """The stops every new position starts with."""

        def percent(value: Decimal) -> Offset | None:
            return Offset.percent(value) if value > ZERO else None

        return ExitConfig(
            stop_loss=percent(self.stop_loss_pct),
            take_profit=percent(self.take_profit_pct),
            trailing_stop=percent(self.trailing_stop_pct),
            trailing_activation=percent(self.trailing_activation_pct),
            time_limit_ms=self.time_limit_ms or None,
            stop_loss_price=self.stop_loss_price,
            take_profit_price=self.take_profit_price,
            trailing_price=self.trailing_price,
        )
