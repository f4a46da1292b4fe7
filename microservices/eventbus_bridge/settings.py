"""eventbus-bridge settings: feed mode, symbols, rate, speed-up, replay file and stall threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class EventbusBridgeSettings(BaseSettings):
    """How the market-data feed runs. Built once at start-up from `FEED_*` variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

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
