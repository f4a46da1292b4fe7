"""The observability library's exceptions."""

from __future__ import annotations


class ObservabilityError(Exception):
    """Base class for errors raised by the observability library."""


class ObservabilityConfigError(ObservabilityError, ValueError):
    """A configuration value is invalid; the message names the variable and the value."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        self.variable = variable
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {variable}={value!r}: {reason}")
