"""The service catalogue: the one table of every Quantum Trader service, its kind and its port.

Everything that needs to know which services exist reads this table: the service settings
(`PORTS`, `service_url`), the `quantum-trader` command (`serve`, `run`), the Kubernetes
renderer, and the tests that check docker-compose and Prometheus against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ServiceKind = Literal["http", "worker"]


def url_variable(name: str) -> str:
    """The environment variable holding a service's base URL: `risk-safety` -> `RISK_SAFETY_URL`."""
    return name.upper().replace("-", "_") + "_URL"


@dataclass(frozen=True)
class ServiceSpec:
    """One service: what it is called, how it runs, where it listens and where its code is."""

    name: str
    kind: ServiceKind
    # An HTTP service's port; a worker's side port, where it serves health and metrics.
    port: int
    built: bool = True

    @property
    def package(self) -> str:
        """The Python package under `microservices/`: `risk-safety` -> `risk_safety`."""
        return self.name.replace("-", "_")

    @property
    def module(self) -> str:
        """The module whose `create_service()` assembles the service."""
        return f"microservices.{self.package}.service"

    @property
    def script(self) -> str:
        """The seed's way to start it, relative to the repository root."""
        return f"microservices/{self.package}/main.py"

    @property
    def url_variable(self) -> str:
        return url_variable(self.name)


# Start order: what the others call first. Ports are the seed's; workers' side ports follow 8010.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ai-engine", "http", 8001),
    ServiceSpec("execution", "http", 8002),
    ServiceSpec("risk-safety", "http", 8003),
    ServiceSpec("portfolio-intelligence", "http", 8004),
    ServiceSpec("rl-training", "http", 8005),
    ServiceSpec("trading-bot", "http", 8006),
    ServiceSpec("clm", "worker", 8011),
    ServiceSpec("eventbus-bridge", "worker", 8012),
    ServiceSpec("position-monitor", "worker", 8013),
)

BUILT_SERVICES: tuple[ServiceSpec, ...] = tuple(s for s in SERVICES if s.built)


class UnknownServiceError(LookupError):
    """A name that is not a built service of the catalogue; the message lists the ones there are."""

    def __init__(self, name: str, *, built_only: bool) -> None:
        names = ", ".join(s.name for s in (BUILT_SERVICES if built_only else SERVICES))
        known = any(s.name == name for s in SERVICES)
        reason = "is not built yet" if known else "is not a service"
        listed = "the built services are" if built_only else "the services are"
        super().__init__(f"{name!r} {reason}; {listed}: {names}")
        self.name = name


def service_spec(name: str, *, built_only: bool = False) -> ServiceSpec:
    """The catalogue entry of `name`; `UnknownServiceError` (a `LookupError`) if there is none."""
    for spec in SERVICES:
        if spec.name == name and (spec.built or not built_only):
            return spec
    raise UnknownServiceError(name, built_only=built_only)
