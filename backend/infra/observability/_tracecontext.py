"""W3C Trace Context (Level 2) parsing: `traceparent` and `tracestate` as the processing model says.

- `traceparent`: optional whitespace around the value is ignored; version `ff`, upper-case hex,
  an all-zero trace id or parent id make it invalid; version `00` is exactly 55 characters; a
  higher version is parsed by the version-00 layout, and anything after the flags must start
  with `-` (and is ignored). Only the flags this level defines (sampled, random) are kept.
  More than one `traceparent` header is invalid. An invalid `traceparent` restarts the trace,
  and `tracestate` is then not parsed at all.
- `tracestate`: several headers are one list, joined in order; empty members and whitespace
  around members are skipped; an empty list is no list. A key that is not a valid simple or
  multi-tenant key, a value with illegal characters, a duplicated key, or more than 32
  members make the whole `tracestate` invalid: it is dropped and the `traceparent` kept.
"""

from __future__ import annotations

import re

# The trace flags W3C Trace Context Level 2 defines: sampled (bit 0) and random (bit 1).
KNOWN_FLAGS = 0x03
MAX_TRACESTATE_MEMBERS = 32

_KEY = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}"
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})\Z"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")


# version, trace id, parent id, flags, then (for a version above 00) anything after a `-`;
# optional whitespace around the value. One match instead of a dozen slices and checks: the
# bus parses one per message.
_TRACEPARENT = re.compile(
    rb"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-[\s\S]*)|[ \t]*)\Z"
)


def parse_traceparent_value(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent id, known flags) of one `traceparent` value, or None if invalid."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (rest is not None and version == b"00"):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags_hex, 16) & KNOWN_FLAGS


def parse_tracestate_values(values: list[bytes]) -> list[tuple[str, str]] | None:
    """The members of the `tracestate` headers `values` (joined in order), or None when the
    list is empty or invalid (the whole list is then dropped, as the processing model says)."""
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for header in values:
        for raw in header.decode("latin-1").split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            key, sep, value = member.partition("=")
            if not sep or not _KEY.match(key) or not _VALUE.match(value) or key in seen:
                return None
            seen.add(key)
            members.append((key, value))
            if len(members) > MAX_TRACESTATE_MEMBERS:
                return None
    return members or None
