"""execution settings: starting balance, the paper venue's fee and fill model and
instruments, the approval secret, and how execution learns the trading state from risk-safety."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.trading.approval import DEVELOPMENT_SECRET
from backend.trading.instruments import (
    DEFAULT_INSTRUMENTS,
    InstrumentError,
    Instruments,
    parse_instruments,
)
from backend.trading.venue import VenueConfig


class ExecutionSettings(BaseSettings):
    """Built once at start-up from the environment; a bad value names its variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", arbitrary_types_allowed=True)

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
    instruments: Annotated[Instruments, NoDecode] = Field(
        default=DEFAULT_INSTRUMENTS, validation_alias="VENUE_INSTRUMENTS"
    )
    """Instrument rules by symbol as JSON, replacing or adding to the defaults, e.g.
    `{"SOLUSDT": {"tick_size": "0.001", "lot_size": "0.01", "min_notional": "5"}}`."""
    approval_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET), validation_alias="RISK_APPROVAL_SECRET"
    )

    @field_validator("instruments", mode="before")
    @classmethod
    def _parse_instruments(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return parse_instruments(value)
            except InstrumentError as exc:
                raise ValueError(str(exc)) from None
        return value

    shared_venue: bool = Field(default=False, validation_alias="EXECUTION_SHARED_VENUE")
    """Replicas of execution share one venue through the database: every venue change is made
    under a lock across processes, after taking in what the other replicas did."""

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

    def to_domain(self) -> VenueConfig:
        """The paper venue's fee and fill model these settings describe."""
        return VenueConfig(
            taker_fee_bps=self.taker_fee_bps,
            maker_fee_bps=self.maker_fee_bps,
            impact_bps=self.impact_bps,
            max_slippage_bps=self.max_slippage_bps,
            touch_fill_probability=self.touch_fill_probability,
            instruments=self.instruments,
        )
