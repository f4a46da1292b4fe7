"""Redaction of credentials inside URLs (`scheme://user:password@host` -> `user:***@`).

Applied where a URL can leave the process: log lines, span attributes and events, readiness
bodies, exception messages. Only the password goes; user, host, port and path stay, so a
message still says which server was meant.
"""

from __future__ import annotations

import re

REDACTED = "***"

# scheme "://" user ":" password "@": the password runs to the LAST "@" before the path (a
# password with an unescaped "@" must not leak its tail), and never across a "/" or blank.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s\"'<>]*):[^/\s\"'<>]*@")
_CREDENTIALS_BYTES = re.compile(_CREDENTIALS.pattern.encode())
_REPLACEMENT = r"\1:" + REDACTED + "@"


def redact_url(url: str) -> str:
    """`url` with the password of its user info replaced by `***` (unchanged without one)."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    # The membership tests are far cheaper than the regex and rule out almost every string.
    if "@" not in text or "://" not in text:
        return text
    return _CREDENTIALS.sub(_REPLACEMENT, text)


def redact_bytes(data: bytes) -> bytes:
    """`redact_text` for an encoded line (UTF-8 or any ASCII-compatible encoding)."""
    if b"@" not in data or b"://" not in data:
        return data
    return _CREDENTIALS_BYTES.sub(_REPLACEMENT.encode(), data)
