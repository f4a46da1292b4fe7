"""Process-wide state set once by `init_observability`."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from ._config import ObservabilityConfig

_CONFIG: ObservabilityConfig | None = None
_RESOURCE_FIELDS: dict[str, str] = {}
# One-element lists so the hot path reads them without a function call or a global rebind.
ACCESS_LOG = [False]
RESOURCE_JSON = ['"service.name":null']
# The OTLP log export queue, when logs also go to a collector: access lines are sent there too.
OTLP_LOGS: list[Any | None] = [None]


def config() -> ObservabilityConfig | None:
    return _CONFIG


def set_config(config: ObservabilityConfig) -> None:
    global _CONFIG, _RESOURCE_FIELDS
    _CONFIG = config
    _RESOURCE_FIELDS = log_resource_fields(config)
    ACCESS_LOG[0] = config.access_log and logging.getLevelName(config.log_level) <= logging.INFO
    RESOURCE_JSON[0] = orjson.dumps(_RESOURCE_FIELDS).decode()[1:-1]


def log_resource_fields(config: ObservabilityConfig) -> dict[str, str]:
    return {
        "service.name": config.service_name,
        "service.version": config.service_version,
        "deployment.environment.name": config.environment,
    }


def resource_fields() -> dict[str, str]:
    return _RESOURCE_FIELDS
