"""Redaction of credentials inside URLs (`scheme://user:password@host` -> `user:***@`).

Applied where a URL can leave the process: log lines, span attributes and events, readiness
bodies, exception messages. Only the password goes; user, host, port and path stay, so a
message still says which server was meant.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "***"

# scheme "://" user ":" password "@": the password runs to the LAST "@" before the path (a
# password with an unescaped "@" must not leak its tail), and never across a "/" or blank.
# (The scheme is bounded: an unbounded one made hostile text quadratic to scan.)
_CREDENTIALS = re.compile(
    r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]{0,30}://[^:/@\s\"'<>]*):[^/\s\"'<>]*@"
)
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


# --- Scrubbing: values of keys that look like secrets -------------------------------------------
#
# On by default, in the spirit of Logfire's scrubbing: a value whose key matches one of these
# patterns is replaced by `REDACTED` in span attributes, log fields, exception messages and URL
# query strings. `OBSERVABILITY_SCRUB_PATTERNS` adds patterns; `OBSERVABILITY_SCRUB=false`
# switches scrubbing off (URL passwords above are always redacted).

SCRUBBED = "REDACTED"

DEFAULT_SCRUB_PATTERNS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    r"api[._ -]?key",
    r"auth(?!ors?\b)",
    "credential",
    r"private[._ -]?key",
    "cookie",
    "session",
    "jwt",
    "csrf",
    "xsrf",
    "signature",
    # A URL signature's usual parameter names (`sig`, `X-Amz-Signature`, `X-Goog-Signature`).
    r"(?:^|[^a-z])sig(?:$|[^a-z])",
)


class Scrubber:
    """Decides which keys are secret and removes their values from text and URLs."""

    def __init__(self, patterns: tuple[str, ...] = DEFAULT_SCRUB_PATTERNS, enabled: bool = True):
        self.enabled = enabled
        self.patterns = patterns
        self._key = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
        # `key=value`, `key: value`, `"key": "value"`, `key='value'` inside free text. Any
        # key-like word is matched and then checked with `is_secret_key`: putting the
        # patterns inside this expression made it backtrack quadratically on hostile text.
        self._pairs = re.compile(
            r"(?<![\w.\-])(?P<key>[\w.\-]{1,128})[\"']?[ \t]{0,8}[=:][ \t]{0,8}"
        )
        self._value = re.compile(r"\"[^\"]{0,4096}\"|'[^']{0,4096}'|[^\s,;&\"'}\])]+")
        self._bearer = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{4,}", re.IGNORECASE)
        self._keys: dict[str, bool] = {}

    def is_secret_key(self, key: str) -> bool:
        """True when `key` (an attribute, field or parameter name) looks like a secret's."""
        if not self.enabled:
            return False
        known = self._keys.get(key)
        if known is None:
            known = self._key.search(key) is not None
            if len(self._keys) < 4096:
                self._keys[key] = known
        return known

    def text(self, text: str) -> str:
        """`text` with URL passwords, bearer tokens and `secret=value` pairs redacted."""
        text = redact_text(text)
        if not self.enabled or not text:
            return text
        if " " in text:
            text = self._bearer.sub(r"\1 " + SCRUBBED, text)
        if "?" in text and "://" in text:
            text = _URL_QUERY.sub(lambda m: m.group(1) + self.query(m.group(2)), text)
        if "=" in text or ":" in text:
            text = self._scrub_pairs(text)
        return text

    def query(self, query: str) -> str:
        """A URL query string (`a=1&token=x`) with the values of secret parameters redacted."""
        if not self.enabled or not query:
            return query
        parts = query.split("&")
        changed = False
        for i, part in enumerate(parts):
            name, sep, value = part.partition("=")
            if sep and value and self.is_secret_key(unquote_plus(name)):
                parts[i] = f"{name}={SCRUBBED}"
                changed = True
        return "&".join(parts) if changed else query

    def url(self, url: str) -> str:
        """`url` with its password and the values of secret query parameters redacted."""
        url = redact_text(url)
        if not self.enabled or "?" not in url:
            return url
        base, _, rest = url.partition("?")
        query, hash_, fragment = rest.partition("#")
        return f"{base}?{self.query(query)}{hash_}{fragment}"

    def value(self, key: str, value: Any) -> Any:
        """An attribute or field value as it may leave the process."""
        if self.is_secret_key(key) and value not in (None, "", True, False):
            return SCRUBBED
        if isinstance(value, str):
            if key in _URL_KEYS:
                return self.url(value)
            if key == "url.query":
                return self.query(value)
            return self.text(value)
        return value

    def _scrub_pairs(self, text: str) -> str:
        """Replace the values that follow secret keys (`key=`, `key: `, `"key": `).

        Only `key` + separator is matched, so a key inside another pair's value (`refused:
        api_key=x`) is still seen; the value is then matched from where its key ended.
        """
        out: list[str] = []
        done = 0
        for match in self._pairs.finditer(text):
            start = match.end()
            if start < done or not self.is_secret_key(match.group("key")):
                continue
            value = self._value.match(text, start)
            if value is None:
                continue
            quote = value.group(0)[0] if value.group(0)[0] in "\"'" else ""
            out.append(text[done:start])
            out.append(f"{quote}{SCRUBBED}{quote}")
            done = value.end()
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)


# Attributes whose values are URLs (query strings are scrubbed); any other text has its
# `secret=value` pairs and the query strings of the URLs inside it scrubbed.
_URL_KEYS = frozenset({"url.full", "http.url", "url.original", "http.target"})
_URL_QUERY = re.compile(
    r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s?#\"'<>]+\?)([^\s#\"'<>]+)"
)

_SCRUBBER = [Scrubber()]


def scrubber() -> Scrubber:
    """The process's scrubber (configured by `init_observability`)."""
    return _SCRUBBER[0]


def configure_scrubbing(enabled: bool = True, extra_patterns: tuple[str, ...] = ()) -> Scrubber:
    """Switch scrubbing on or off and add key patterns to the defaults.

    Log lines still queued are written first, scrubbed as they were when logged."""
    from ._logging import SINK  # imported here: the log sink depends on this module

    SINK.flush()
    _SCRUBBER[0] = Scrubber(DEFAULT_SCRUB_PATTERNS + tuple(extra_patterns), enabled)
    return _SCRUBBER[0]


def scrub_text(text: str) -> str:
    """`Scrubber.text` of the process's scrubber."""
    return _SCRUBBER[0].text(text)
