"""portfolio-intelligence settings: starting cash and how often the equity curve is sampled."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SECONDS_PER_YEAR = 365 * 24 * 3600


class PortfolioSettings(BaseSettings):
    """Built once at start-up from the environment; a bad value names its variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    initial_cash: Decimal = Field(default=Decimal(100_000), ge=0, validation_alias="INITIAL_CASH")
    equity_sample_s: float = Field(default=5.0, gt=0, validation_alias="EQUITY_SAMPLE_S")
    """The equity curve gets one point per interval; performance ratios assume this period."""

    @property
    def periods_per_year(self) -> float:
        return SECONDS_PER_YEAR / self.equity_sample_s
