"""eventbus-bridge settings: the market-data feed (`FEED_*`) and the outgoing webhooks
(`WEBHOOK_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend.trading.events import EVENT_TYPES

DEFAULT_WEBHOOK_EVENTS = (
    "order.filled",
    "risk.state_changed",
    "stop.triggered",
    "model.promoted",
)
"""Forwarded unless `WEBHOOK_EVENTS` says otherwise: fills, trading-state changes, stop
triggers and model promotions."""


class EventbusBridgeSettings(BaseSettings):
    """How the market-data feed and the webhooks run. Built once at start-up from `FEED_*` and
    `WEBHOOK_*` variables."""

    # Never echo an input in a validation error: one of them is the signing secret.
    model_config = SettingsConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    mode: Literal["sim", "replay"] = Field(default="sim", validation_alias="FEED_MODE")
    symbols: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("BTCUSDT", "ETHUSDT", "SOLUSDT"), validation_alias="FEED_SYMBOLS"
    )
    rate_hz: float = Field(default=2.0, gt=0, le=1000, validation_alias="FEED_RATE_HZ")
    """Simulated ticks per second per symbol (wall clock)."""
    speedup: float = Field(default=1.0, gt=0, le=10_000, validation_alias="FEED_SPEEDUP")
    """Market time per wall-clock time: the simulator's dynamics, or the replay's pacing."""
    seed: int = Field(default=42, validation_alias="FEED_SEED")
    csv_path: Path | None = Field(default=None, validation_alias="FEED_CSV")
    """Replay file (ts_ms,symbol,bid,ask,last,volume); the bundled sample when unset."""
    replay_loop: bool = Field(default=True, validation_alias="FEED_REPLAY_LOOP")
    stall_ms: int = Field(default=5_000, gt=0, validation_alias="FEED_STALL_MS")
    """A symbol silent for longer than this (wall clock) is reported as stalled."""

    webhook_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="WEBHOOK_URLS"
    )
    """Receivers of the forwarded events (comma-separated http(s) URLs); none: no webhooks."""
    webhook_events: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_WEBHOOK_EVENTS, validation_alias="WEBHOOK_EVENTS"
    )
    """Event types forwarded (comma-separated names of the event catalogue)."""
    webhook_secret: SecretStr | None = Field(default=None, validation_alias="WEBHOOK_SECRET")
    """The HMAC-SHA256 key that signs every body; required with `WEBHOOK_URLS`."""
    webhook_max_attempts: int = Field(
        default=6, ge=1, le=50, validation_alias="WEBHOOK_MAX_ATTEMPTS"
    )
    """Attempts of one delivery before it is dead-lettered."""
    webhook_backoff_ms: int = Field(default=500, gt=0, validation_alias="WEBHOOK_BACKOFF_MS")
    """Base delay before a retry; doubles on each retry, with jitter."""
    webhook_backoff_max_ms: int = Field(
        default=30_000, gt=0, validation_alias="WEBHOOK_BACKOFF_MAX_MS"
    )
    """Upper bound of one retry delay."""
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=120, validation_alias="WEBHOOK_TIMEOUT_S"
    )
    """Timeout of one HTTP attempt."""
    webhook_queue_size: int = Field(default=1_000, ge=1, validation_alias="WEBHOOK_QUEUE_SIZE")
    """Deliveries waiting at most; past it new ones are dropped (and counted)."""
    webhook_workers: int = Field(default=4, ge=1, le=64, validation_alias="WEBHOOK_WORKERS")
    """Deliveries in flight at once."""

    @field_validator("webhook_urls", "webhook_events", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _http_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"WEBHOOK_URLS: {url.split('?')[0]!r} is not an http(s) URL")
        return value

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"WEBHOOK_EVENTS: unknown event type(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(EVENT_TYPES))}"
            )
        return value

    @model_validator(mode="after")
    def _secret_with_urls(self) -> EventbusBridgeSettings:
        if self.webhook_urls and (
            self.webhook_secret is None or len(self.webhook_secret.get_secret_value()) < 16
        ):
            raise ValueError(
                "WEBHOOK_SECRET: set a signing secret of at least 16 characters with "
                "WEBHOOK_URLS, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        if self.webhook_backoff_max_ms < self.webhook_backoff_ms:
            raise ValueError("WEBHOOK_BACKOFF_MAX_MS must not be below WEBHOOK_BACKOFF_MS")
        return self

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(s.strip().upper() for s in value.split(",") if s.strip())
        if not value:
            raise ValueError("name at least one symbol, e.g. FEED_SYMBOLS=BTCUSDT,ETHUSDT")
        return value

    @field_validator("csv_path")
    @classmethod
    def _csv_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"FEED_CSV={value}: no such file")
        return value

    @property
    def tick_interval_s(self) -> float:
        """Wall-clock time between two simulated steps."""
        return 1.0 / self.rate_hz
