"""Service settings: host, port and where the other services are, from the environment."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The seed's ports for the HTTP services; workers get side ports for health and metrics.
PORTS: dict[str, int] = {
    "ai-engine": 8001,
    "execution": 8002,
    "risk-safety": 8003,
    "portfolio-intelligence": 8004,
    "rl-training": 8005,
    "trading-bot": 8006,
    "clm": 8011,
    "eventbus-bridge": 8012,
    "position-monitor": 8013,
}


def _env_name(service: str) -> str:
    return service.upper().replace("-", "_")


def service_url(service: str) -> str:
    """Base URL of another service: `<NAME>_URL` (e.g. `RISK_SAFETY_URL`) or localhost:port."""
    explicit = os.environ.get(f"{_env_name(service)}_URL", "").strip()
    if explicit:
        return explicit.rstrip("/")
    return f"http://127.0.0.1:{PORTS[service]}"


class ServiceSettings(BaseSettings):
    """Network settings of one service process (built once at start-up, frozen)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", validation_alias="HOST")
    port: int = Field(default=0, ge=0, le=65535, validation_alias="PORT")
    shutdown_timeout_s: float = Field(default=20.0, gt=0, validation_alias="SHUTDOWN_TIMEOUT_S")
    http_timeout_s: float = Field(default=5.0, gt=0, validation_alias="HTTP_TIMEOUT_S")

    def port_for(self, service: str) -> int:
        return self.port or PORTS[service]
