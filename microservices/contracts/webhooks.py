"""The outgoing webhook contract of eventbus-bridge: the request it sends, its signature, and
`verify_signature`, which a receiver uses to check one.

A webhook is a `POST` whose body is the event as JSON (`WebhookBody`) and whose
`QT-Webhook-Signature` header reads `t=<unix seconds>,v1=<hex>`: the hex is the HMAC-SHA256,
keyed by the shared secret, of `"<t>.<raw body>"` (the scheme Stripe and GitHub use). Signing
the timestamp with the body makes a captured request useless once it is older than the
receiver's tolerance, and a receiver that also remembers `QT-Webhook-Id` refuses an exact
replay inside it. A receiver needs only this module and the standard library:

    from microservices.contracts.webhooks import SIGNATURE_HEADER, verify_signature

    verify_signature(raw_body, request.headers[SIGNATURE_HEADER], secret)  # raises if bad
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

SIGNATURE_HEADER = "QT-Webhook-Signature"
"""`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (several `v1` while rotating)."""
ID_HEADER = "QT-Webhook-Id"
"""The event id: the same on every attempt, so a receiver can drop a repeat."""
EVENT_HEADER = "QT-Webhook-Event"
"""The event type, e.g. `order.filled`."""
ATTEMPT_HEADER = "QT-Webhook-Attempt"
"""1 on the first attempt, then 2, 3, ...; `redelivery` when an operator sends a dead letter
again."""
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
"""How old a signature a receiver accepts by default (and how far in the future)."""


class WebhookBody(BaseModel):
    """The JSON body: the event in CloudEvents' structured form, with its trace context."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: str = "1.0"
    id: str
    type: str
    source: str
    time: str
    data: dict[str, Any]
    traceparent: str | None = None


class WebhookSignatureError(ValueError):
    """A webhook's signature is missing, malformed, outside the tolerance, or does not match."""


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>.<body>"` keyed by `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `QT-Webhook-Signature` header value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={compute_signature(secret, t, body)}"


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str | Sequence[str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check a webhook's signature; returns its timestamp, or raises `WebhookSignatureError`.

    `body` must be the raw bytes as received (not re-serialised JSON). `secret` may be several
    secrets while one is being rotated: any of them may match any `v1` of the header. The
    comparison is constant-time.
    """
    if not header:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookSignatureError("the timestamp is not an integer") from None
        elif key == SCHEME:
            candidates.append(value)
    if timestamp is None:
        raise WebhookSignatureError("the signature has no timestamp")
    if not candidates:
        raise WebhookSignatureError(f"the signature has no {SCHEME} value")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookSignatureError(
            f"the timestamp is {int(current - timestamp)} s away from now "
            f"(tolerance {tolerance_s} s): a replay, or a clock off"
        )
    secrets = [secret] if isinstance(secret, str) else list(secret)
    for key in secrets:
        expected = compute_signature(key, timestamp, body)
        if any(hmac.compare_digest(expected, c) for c in candidates):
            return timestamp
    raise WebhookSignatureError("no signature matches the body")
