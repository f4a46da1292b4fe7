"""ai-engine assembly: the model server, its readiness, its start-up load and its routes."""

from __future__ import annotations

from backend.infra.observability import ReadinessCheck
from backend.infra.service import Service

from .api import router
from .server import ModelServer
from .settings import AiEngineSettings

NAME = "ai-engine"


def create_service(settings: AiEngineSettings | None = None) -> Service:
    """The ai-engine HTTP service (port 8001): direction signals from the registry's model."""
    service = Service(NAME, database=True, eventbus=True)
    server = service.provide(
        ModelServer(
            settings or AiEngineSettings(), service.resources, service.logger, service.tracer
        )
    )
    service.add_readiness_check(ReadinessCheck("model", server.check_loaded))
    service.on_startup(server.ensure_model)
    service.background("model-refresh", server.refresh)
    service.on_shutdown(server.drain)
    service.app.include_router(router)
    return service
