"""rl-training assembly: the trainer, its start-up recovery, its shutdown and its routes."""

from __future__ import annotations

from backend.infra.service import Service

from .api import router
from .settings import RlTrainingSettings
from .trainer import Trainer

NAME = "rl-training"


def create_service(settings: RlTrainingSettings | None = None) -> Service:
    """The rl-training HTTP service (port 8005): background training jobs and their policies."""
    service = Service(NAME, database=True)
    trainer = service.provide(
        Trainer(settings or RlTrainingSettings(), service.resources, service.logger, service.tracer)
    )
    service.on_startup(trainer.recover)
    service.on_shutdown(trainer.stop)
    service.app.include_router(router)
    return service
