"""portfolio-intelligence settings: starting cash, equity sampling, fill-stream checks."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SECONDS_PER_YEAR = 365 * 24 * 3600


class PortfolioIntelligenceSettings(BaseSettings):
    """Built once at start-up from the environment; a bad value names its variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    initial_cash: Decimal = Field(default=Decimal(100_000), ge=0, validation_alias="INITIAL_CASH")
    equity_sample_s: float = Field(default=5.0, gt=0, validation_alias="EQUITY_SAMPLE_S")
    """The equity curve gets one point per interval; performance ratios assume this period."""
    fills_check_interval_ms: int = Field(
        default=250, gt=0, le=60_000, validation_alias="FILLS_CHECK_INTERVAL_MS"
    )
    """How often the fill stream's backlog is read; `as_of_ms` is at most this old when the
    books hold every fill."""
    shared_ledger: bool = Field(default=False, validation_alias="PORTFOLIO_SHARED_LEDGER")
    """Set on every replica when several replicas book into one database: booking is then
    serialised through the database (a lock) and applies what the others booked first, and
    each read first applies what they booked since (one indexed query). Off (one replica),
    neither the lock nor the reads are paid."""

    @property
    def periods_per_year(self) -> float:
        return SECONDS_PER_YEAR / self.equity_sample_s
