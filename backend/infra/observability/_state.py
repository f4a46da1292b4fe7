"""Process-wide state set once by `init_observability`."""

from __future__ import annotations

import logging

from ._config import ObservabilityConfig

_CONFIG: ObservabilityConfig | None = None
_RESOURCE_FIELDS: dict[str, str] = {}
_ACCESS_LOG = False


def config() -> ObservabilityConfig | None:
    return _CONFIG


def set_config(config: ObservabilityConfig) -> None:
    global _CONFIG, _RESOURCE_FIELDS, _ACCESS_LOG
    _CONFIG = config
    _RESOURCE_FIELDS = log_resource_fields(config)
    _ACCESS_LOG = config.access_log and logging.INFO >= logging.getLevelName(config.log_level)


def log_resource_fields(config: ObservabilityConfig) -> dict[str, str]:
    return {
        "service.name": config.service_name,
        "service.version": config.service_version,
        "deployment.environment": config.environment,
    }


def resource_fields() -> dict[str, str]:
    return _RESOURCE_FIELDS


def access_log_enabled() -> bool:
    return _ACCESS_LOG
