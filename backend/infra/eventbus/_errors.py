"""The event bus's exception tree; Redis errors are translated into it at the boundary."""

from __future__ import annotations


class EventBusError(Exception):
    """Base class of every error the event bus raises."""


class EventBusConfigError(EventBusError, ValueError):
    """A setting is invalid; the message names the environment variable or argument."""


class EventBusUnavailable(EventBusError):
    """Redis could not be reached (or kept failing) within the allowed time."""


class RedisCommandError(EventBusError):
    """Redis refused a command (for example a key of the wrong type)."""


class PublishError(EventBusError):
    """An event could not be stored; it may or may not have reached the stream."""


class UnknownEventType(EventBusError, KeyError):
    """An event type or data model that the catalogue does not list."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MalformedEvent(EventBusError):
    """A stream entry that cannot be decoded into an event.

    `reason` is a short, stable code (used as a metric label and in the dead-letter entry);
    `detail` says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EmbeddedRedisError(EventBusError):
    """The embedded Redis server could not be started or stopped."""
