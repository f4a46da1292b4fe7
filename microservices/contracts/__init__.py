"""The public HTTP contracts of the services: request and response models, and typed clients.

A service's `api.py` declares its routes with these models, and every caller imports the same
models through the service's client (`ExecutionClient`, `RiskSafetyClient`,
`PortfolioClient`, `AiEngineClient`). Contracts are not internals: importing them keeps
"no service imports another service" true, and a change to a contract shows up in every
caller's type check and tests at once.
"""

from __future__ import annotations

from ._client import (
    MalformedAnswer,
    Refused,
    ServiceClient,
    UpstreamError,
    answer_upstream_errors,
)

__all__ = [
    "MalformedAnswer",
    "Refused",
    "ServiceClient",
    "UpstreamError",
    "answer_upstream_errors",
]
