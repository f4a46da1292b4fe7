"""Service settings: host, port and where the other services are, from the environment."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._catalogue import SERVICES, service_spec

# Name -> port, for callers that only need the number (the catalogue is where it is written).
PORTS: dict[str, int] = {spec.name: spec.port for spec in SERVICES}


def service_url(service: str) -> str:
    """Base URL of another service: `<NAME>_URL` (e.g. `RISK_SAFETY_URL`) or localhost:port."""
    spec = service_spec(service)
    explicit = os.environ.get(spec.url_variable, "").strip()
    if explicit:
        return explicit.rstrip("/")
    return f"http://127.0.0.1:{spec.port}"


class ServiceSettings(BaseSettings):
    """Network settings of one service process (built once at start-up, frozen)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", validation_alias="HOST")
    port: int = Field(default=0, ge=0, le=65535, validation_alias="PORT")
    shutdown_timeout_s: float = Field(default=20.0, gt=0, validation_alias="SHUTDOWN_TIMEOUT_S")
    http_timeout_s: float = Field(default=5.0, gt=0, validation_alias="HTTP_TIMEOUT_S")
    off_path_tick_defer_ms: int = Field(
        default=25, ge=0, le=1000, validation_alias="OFF_PATH_TICK_DEFER_MS"
    )
    """How long after their arrival a service whose ticks are not on the way to an order (the
    portfolio's marks, clm's drift) handles them: every tick wakes six readers on two cores at
    once, and the bot's path through ai-engine, risk-safety and execution then gets them first.
    0: at once."""

    def port_for(self, service: str) -> int:
        """`PORT` when set, else the service's port in the catalogue."""
        return self.port or service_spec(service).port
