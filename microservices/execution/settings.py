"""execution settings: starting balance, the paper venue's fee and fill model, approval secret,
and how execution learns the trading state from risk-safety."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.trading.approval import DEVELOPMENT_SECRET
from backend.trading.venue import VenueConfig


class ExecutionSettings(BaseSettings):
    """Built once at start-up from the environment; a bad value names its variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    initial_cash: Decimal = Field(default=Decimal(100_000), ge=0, validation_alias="INITIAL_CASH")
    taker_fee_bps: Decimal = Field(
        default=Decimal(10), ge=0, validation_alias="VENUE_TAKER_FEE_BPS"
    )
    maker_fee_bps: Decimal = Field(default=Decimal(2), ge=0, validation_alias="VENUE_MAKER_FEE_BPS")
    impact_bps: Decimal = Field(default=Decimal(50), ge=0, validation_alias="VENUE_IMPACT_BPS")
    max_slippage_bps: Decimal = Field(
        default=Decimal(25), ge=0, validation_alias="VENUE_MAX_SLIPPAGE_BPS"
    )
    touch_fill_probability: float = Field(
        default=0.5, ge=0, le=1, validation_alias="VENUE_TOUCH_FILL_PROBABILITY"
    )
    seed: int = Field(default=7, validation_alias="VENUE_SEED")
    approval_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET), validation_alias="RISK_APPROVAL_SECRET"
    )

    # The trading state: risk-safety pushes every change; execution also polls it, and without
    # a verified state for the lease it accepts and fills only reduce-only orders.
    risk_poll_ms: int = Field(
        default=250, ge=10, le=60_000, validation_alias="EXECUTION_RISK_POLL_MS"
    )
    risk_lease_ms: int = Field(
        default=2000, ge=50, le=600_000, validation_alias="EXECUTION_RISK_LEASE_MS"
    )
    risk_poll_timeout_ms: int = Field(
        default=1000, ge=10, le=60_000, validation_alias="EXECUTION_RISK_POLL_TIMEOUT_MS"
    )

    @model_validator(mode="after")
    def _lease_outlives_a_poll(self) -> ExecutionSettings:
        if self.risk_lease_ms <= self.risk_poll_ms:
            raise ValueError(
                f"EXECUTION_RISK_LEASE_MS ({self.risk_lease_ms}) must exceed "
                f"EXECUTION_RISK_POLL_MS ({self.risk_poll_ms}), or the lease lapses between polls"
            )
        return self

    def venue_config(self) -> VenueConfig:
        return VenueConfig(
            taker_fee_bps=self.taker_fee_bps,
            maker_fee_bps=self.maker_fee_bps,
            impact_bps=self.impact_bps,
            max_slippage_bps=self.max_slippage_bps,
            touch_fill_probability=self.touch_fill_probability,
        )
