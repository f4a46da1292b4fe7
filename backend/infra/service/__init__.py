"""Assembles a Quantum Trader service from its parts, so nine services share one skeleton.

    service = Service("risk-safety", database=True, eventbus=True)
    app = service.app                       # FastAPI: observability, health, lifespan
    service.subscribe(OrderFilled, on_fill) # consumer group "risk-safety"
    service.background("refresh", loop)     # a named, supervised task
    service.provide(guard)                  # routes: Depends(provided(RiskGuard))

    if __name__ == "__main__":
        service.run()                       # uvicorn on PORT (default from the port table)

Workers (`kind="worker"`) are the same, with their health and metrics on a side port.
Every route whose method is not GET/HEAD/OPTIONS needs `Authorization: Bearer $QT_API_TOKEN`
(see `_auth.py`); `resources.http` sends it to the sibling services by itself.
"""

from __future__ import annotations

from ._answer import SentAnswer
from ._auth import AUTH_FAILURES, AccessSettings, SiblingBearerAuth, public
from ._catalogue import (
    BUILT_SERVICES,
    SERVICES,
    ServiceKind,
    ServiceSpec,
    UnknownServiceError,
    service_spec,
    url_variable,
)
from ._heap import freeze_startup_heap
from ._route import JsonBodyRoute
from ._service import NotProvided, Resources, Service, provided, resources_of
from ._settings import PORTS, ServiceSettings, service_url
from ._unavailable import dependency_unavailable
from ._wire import Price, Quantity

__all__ = [
    "AUTH_FAILURES",
    "BUILT_SERVICES",
    "PORTS",
    "SERVICES",
    "AccessSettings",
    "JsonBodyRoute",
    "NotProvided",
    "Price",
    "Quantity",
    "Resources",
    "SentAnswer",
    "Service",
    "ServiceKind",
    "ServiceSettings",
    "ServiceSpec",
    "SiblingBearerAuth",
    "UnknownServiceError",
    "dependency_unavailable",
    "freeze_startup_heap",
    "provided",
    "public",
    "resources_of",
    "service_spec",
    "service_url",
    "url_variable",
]
