"""Event bus settings: one frozen object, read from the environment once and validated loudly."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ._errors import EventBusConfigError

# A name, or a name in braces: a Redis Cluster hash tag, which puts every key of the bus in one
# hash slot so that multi-key commands (one read over several streams, the idempotency marks
# with the acknowledgements in one MULTI) work on a cluster.
_PREFIX_RE = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}|\{[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\})$"
)


@dataclass(frozen=True, slots=True)
class EventBusSettings:
    """How the bus names its keys, trims its streams, reads, retries and gives up.

    Every field has an environment variable (see `from_env`); `docs/EVENTBUS.md` explains each.
    """

    prefix: str = "qt"
    """Namespace of every key the bus writes (`{prefix}:events:{type}`, ...). On a Redis
    Cluster it must be a hash tag (`{qt}`), so that every key of the bus is in one slot."""
    max_len: int = 100_000
    """Approximate MAXLEN of each stream: older entries are trimmed past it."""
    batch_size: int = 256
    """Entries read (XREADGROUP COUNT) and published per pipeline at most."""
    block_ms: int = 1_000
    """How long one XREADGROUP waits for new entries."""
    max_deliveries: int = 5
    """Deliveries of one entry before it is moved to the dead-letter stream."""
    retry_backoff_ms: int = 100
    """Delay before the first retry of a failed handler; doubles on each retry."""
    retry_backoff_max_ms: int = 5_000
    """Upper bound of the retry delay; must stay below `claim_idle_ms`."""
    claim_idle_ms: int = 30_000
    """Idle time after which another consumer may take over a pending entry (XAUTOCLAIM)."""
    claim_interval_ms: int = 5_000
    """How often a consumer looks for entries abandoned by dead consumers."""
    reconnect_timeout_s: float = 30.0
    """How long an operation keeps retrying while Redis is unreachable before it raises."""
    dedup_ttl_s: int = 7 * 24 * 3600
    """How long processed event ids are remembered by the idempotency helper."""
    metrics_interval_s: float = 5.0
    """How often a consumer refreshes its pending and lag gauges."""
    trim_interval_s: float = 5.0
    """How often a consumer trims its streams to what every group still needs (XTRIM MINID
    below the oldest entry a group has not acknowledged); 0 disables it (MAXLEN still applies)."""
    consumer_name: str = ""
    """This replica's consumer name in its groups; empty: the host name. It must not change
    when the process restarts (a restarted consumer first handles what is pending under its
    name) and must differ between replicas of one service."""

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise EventBusConfigError(
                f"EVENTBUS_PREFIX={self.prefix!r}: use 1-64 letters, digits, '_', '.' or '-', "
                "optionally in braces (a Redis Cluster hash tag: '{qt}')"
            )
        for name in (
            "max_len",
            "batch_size",
            "max_deliveries",
            "retry_backoff_ms",
            "retry_backoff_max_ms",
            "claim_idle_ms",
            "claim_interval_ms",
            "dedup_ttl_s",
        ):
            if getattr(self, name) <= 0:
                raise EventBusConfigError(f"{_env_name(name)} must be positive")
        if self.block_ms < 0:
            raise EventBusConfigError("EVENTBUS_BLOCK_MS must not be negative")
        if self.trim_interval_s < 0:
            raise EventBusConfigError("EVENTBUS_TRIM_INTERVAL_S must not be negative")
        if self.reconnect_timeout_s <= 0 or self.metrics_interval_s <= 0:
            raise EventBusConfigError(
                "EVENTBUS_RECONNECT_TIMEOUT_S and EVENTBUS_METRICS_INTERVAL_S must be positive"
            )
        # A consumer backing off before a retry must not look dead to the others.
        if self.retry_backoff_max_ms >= self.claim_idle_ms:
            raise EventBusConfigError(
                "EVENTBUS_RETRY_BACKOFF_MAX_MS must be below EVENTBUS_CLAIM_IDLE_MS "
                f"({self.retry_backoff_max_ms} >= {self.claim_idle_ms})"
            )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: object
    ) -> EventBusSettings:
        """Settings from `EVENTBUS_*` variables (e.g. `EVENTBUS_PREFIX`), then `overrides`.

        A value that does not parse raises `EventBusConfigError` naming the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(_env_name(f.name))
            if raw is None or not raw.strip():
                continue
            raw = raw.strip()
            kind: type[int | float | str] = type(f.default)  # type: ignore[assignment]
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise EventBusConfigError(
                    f"{_env_name(f.name)}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    # Key names -------------------------------------------------------------------------------

    def stream_key(self, stream: str) -> str:
        """The Redis key of a logical stream."""
        return f"{self.prefix}:events:{stream}"

    def dead_letter_key(self, stream: str) -> str:
        """The Redis key of the dead-letter stream that collects `stream`'s failures."""
        return f"{self.prefix}:deadletter:{stream}"

    def processed_key(self, scope: str, event_id: str) -> str:
        """The Redis key remembering that `scope` (a consumer group) processed `event_id`."""
        return f"{self.prefix}:processed:{scope}:{event_id}"


def _env_name(field_name: str) -> str:
    return "EVENTBUS_" + field_name.upper()
