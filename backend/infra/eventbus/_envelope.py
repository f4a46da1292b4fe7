"""The event envelope (CloudEvents attributes plus trace context) and its stream encoding.

An entry holds one field, `event`: the event in CloudEvents' JSON "structured mode", with the
distributed-tracing extension attributes (`traceparent`, `tracestate`) and `baggage` beside
the CloudEvents attributes. One field rather than one per attribute because redis-py parses
replies in pure Python, one call per field name and value: at the bus's rates the per-entry
parsing cost would otherwise exceed everything else the consumer does.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

import orjson
from pydantic import ValidationError

from ._errors import MalformedEvent
from .catalogue import Catalogue, EventData, EventSpec, default_catalogue

DataT = TypeVar("DataT", bound=EventData)

SPEC_VERSION = "1.0"
EVENT_FIELD = b"event"

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class Event(Generic[DataT]):
    """One event: CloudEvents attributes, validated `data`, and the producer's trace context.

    `stream`, `entry_id` and `deliveries` are filled in by the consumer: where the event was
    read from and how many times Redis has delivered that entry (1 on the first delivery).
    """

    specversion: ClassVar[str] = SPEC_VERSION

    id: str
    type: str
    source: str
    time: datetime
    data: DataT
    schema_version: int = 1
    traceparent: str | None = None
    tracestate: str | None = None
    baggage: str | None = None
    stream: str | None = None
    entry_id: str | None = None
    deliveries: int = 0


def new_event_id() -> str:
    """A fresh, globally unique event id (a random UUID in hex)."""
    return uuid.uuid4().hex


def valid_traceparent(value: str) -> bool:
    """True when `value` is a W3C `traceparent` this bus accepts (version 00 or a later one)."""
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        return False
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return False
    return trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC, as CloudEvents' `time` attribute wants it."""
    if value.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_event(
    spec: EventSpec,
    event_id: str,
    source: str,
    time: datetime,
    data: EventData,
    traceparent: str | None,
    tracestate: str | None,
    baggage: str | None,
) -> bytes:
    """The `event` field of a stream entry."""
    doc: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "type": spec.type,
        "source": source,
        "time": format_time(time),
        "schemaversion": spec.version,
    }
    if traceparent:
        doc["traceparent"] = traceparent
    if tracestate:
        doc["tracestate"] = tracestate
    if baggage:
        doc["baggage"] = baggage
    # The model serialises itself (Decimal as strings); orjson splices the bytes in unchanged.
    doc["data"] = orjson.Fragment(spec.model.__pydantic_serializer__.to_json(data))
    return orjson.dumps(doc)


_REQUIRED = ("id", "type", "source", "time", "specversion", "data")
_OPTIONAL_STR = ("traceparent", "tracestate", "baggage")


def decode_entry(
    fields: Mapping[bytes, bytes],
    *,
    stream: str | None = None,
    entry_id: str | None = None,
    deliveries: int = 0,
    catalogue: Catalogue | None = None,
) -> Event[Any]:
    """Decode and validate one stream entry; `MalformedEvent` (with a reason code) if it is bad.

    When `stream` is given, the event's type must be the one that stream carries.
    """
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        names = sorted(k.decode("utf-8", "replace") for k in fields)
        raise MalformedEvent("missing_field", f"entry has no 'event' field (fields: {names})")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent("bad_json", f"'event' is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("bad_json", f"'event' is a JSON {type(doc).__name__}, not an object")
    missing = [name for name in _REQUIRED if name not in doc]
    if missing:
        raise MalformedEvent("missing_field", f"event lacks {', '.join(missing)}")
    for name in ("id", "type", "source", "time", "specversion"):
        if not isinstance(doc[name], str) or not doc[name]:
            raise MalformedEvent("invalid_attribute", f"{name} must be a non-empty string")
    if doc["specversion"] != SPEC_VERSION:
        raise MalformedEvent(
            "unsupported_specversion", f"specversion {doc['specversion']!r} is not {SPEC_VERSION}"
        )
    spec = (catalogue or default_catalogue()).by_type.get(doc["type"])
    if spec is None:
        raise MalformedEvent("unknown_type", f"unknown event type {doc['type']!r}")
    if stream is not None and spec.stream != stream:
        raise MalformedEvent(
            "wrong_stream", f"{spec.type} belongs on stream {spec.stream!r}, not {stream!r}"
        )
    version = doc.get("schemaversion", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MalformedEvent("invalid_attribute", f"schemaversion {version!r} is not a version")
    if version > spec.version:
        raise MalformedEvent(
            "unsupported_schema_version",
            f"{spec.type} version {version} is newer than the known {spec.version}",
        )
    try:
        time = datetime.fromisoformat(doc["time"])
    except ValueError:
        raise MalformedEvent("invalid_attribute", f"time {doc['time']!r} is not RFC 3339") from None
    if time.tzinfo is None:
        raise MalformedEvent("invalid_attribute", f"time {doc['time']!r} has no UTC offset")
    for name in _OPTIONAL_STR:
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedEvent(
                "bad_traceparent" if name == "traceparent" else "invalid_attribute",
                f"{name} must be a string",
            )
    traceparent = doc.get("traceparent")
    if traceparent is not None and not valid_traceparent(traceparent):
        raise MalformedEvent("bad_traceparent", f"traceparent {traceparent!r} is not W3C")
    try:
        data = spec.model.model_validate(doc["data"])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(data)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise MalformedEvent("invalid_data", f"{spec.type} data is invalid: {problems}") from None
    return Event(
        id=doc["id"],
        type=spec.type,
        source=doc["source"],
        time=time,
        data=data,
        schema_version=version,
        traceparent=traceparent,
        tracestate=doc.get("tracestate"),
        baggage=doc.get("baggage"),
        stream=spec.stream,
        entry_id=entry_id,
        deliveries=deliveries,
    )
