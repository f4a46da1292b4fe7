"""execution settings: starting balance, the paper venue's fee and fill model, approval secret."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, SecretStr
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

    def venue_config(self) -> VenueConfig:
        return VenueConfig(
            taker_fee_bps=self.taker_fee_bps,
            maker_fee_bps=self.maker_fee_bps,
            impact_bps=self.impact_bps,
            max_slippage_bps=self.max_slippage_bps,
            touch_fill_probability=self.touch_fill_probability,
        )
