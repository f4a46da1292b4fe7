"""Outbox settings: one frozen object, read from the environment once and validated loudly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class OutboxConfigError(ValueError):
    """An outbox setting has a bad value; the message names the variable."""


_VARIABLES = {
    "batch_size": ("OUTBOX_BATCH_SIZE", int),
    "publish_timeout_s": ("OUTBOX_PUBLISH_TIMEOUT_S", float),
    "retry_backoff_s": ("OUTBOX_RETRY_BACKOFF_S", float),
    "retry_backoff_max_s": ("OUTBOX_RETRY_BACKOFF_MAX_S", float),
    "retention_s": ("OUTBOX_RETENTION_S", float),
    "claim_s": ("OUTBOX_CLAIM_S", float),
    "reply_hold_s": ("OUTBOX_REPLY_HOLD_S", float),
    "mark_delay_s": ("OUTBOX_MARK_DELAY_S", float),
}


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """How much the outbox publishes at once, how long it waits on Redis and how it retries."""

    batch_size: int = 100
    """Rows read and published per round trip."""
    publish_timeout_s: float = 5.0
    """Upper bound of one publish attempt; the rows stay pending for the relay after it."""
    retry_backoff_s: float = 0.5
    """The relay's first delay after a failed round; doubles per failure."""
    retry_backoff_max_s: float = 1.0
    """Upper bound of the relay's delay, so also of how late it notices that Redis is back."""
    retention_s: float = 7 * 24 * 3600.0
    """How long published rows are kept (for audits) before the relay deletes them."""
    claim_s: float = 15.0
    """How long a relay's claim on the rows it is publishing lasts: another relay (a replica)
    leaves them alone meanwhile, and takes them over once it expired (their relay died)."""
    reply_hold_s: float = 0.05
    """Longest the relay waits, after a commit, for the requests holding it (`Outbox.hold`) to
    send their answers; past it the events go out whatever the requests do."""
    mark_delay_s: float = 0.2
    """Longest the relay leaves events it published from memory unmarked, so that the marks of
    the commits of that span take one transaction; a crash in it republishes them (same ids,
    dropped by consumers' idempotency), as a crash between a publish and its mark always could."""

    def __post_init__(self) -> None:
        for name, (variable, _kind) in _VARIABLES.items():
            if getattr(self, name) <= 0:
                raise OutboxConfigError(f"{variable}={getattr(self, name)!r}: must be positive")
        if self.claim_s <= self.publish_timeout_s:
            raise OutboxConfigError(
                "OUTBOX_CLAIM_S must be above OUTBOX_PUBLISH_TIMEOUT_S (a claim outlives a publish)"
            )
        if self.mark_delay_s >= self.claim_s:
            raise OutboxConfigError(
                "OUTBOX_MARK_DELAY_S must be below OUTBOX_CLAIM_S (rows stay claimed until marked)"
            )
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise OutboxConfigError(
                "OUTBOX_RETRY_BACKOFF_MAX_S must not be below OUTBOX_RETRY_BACKOFF_S"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OutboxSettings:
        """Settings from `OUTBOX_*` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, int | float] = {}
        for name, (variable, kind) in _VARIABLES.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                raise OutboxConfigError(f"{variable}={raw!r}: not a number") from None
        return cls(**values)  # type: ignore[arg-type]
