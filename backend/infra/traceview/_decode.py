"""OTLP trace requests into the span store's records, in this process or in a second one.

Turning protobuf into Python values is most of what ingest costs (about 10 µs a span), and the
store's writer is one thread by design. `Decoder` moves that work into a child process: the
receiving thread only parses the request to check it (protobuf's C code, about 1 µs a span) and
hands over the bytes; the child sends back flat records with everything the writer can compute
without the file (the attribute values already as JSON, the business keys, the span's
importance, its histogram bucket), as one `marshal` blob a request with repeated strings
shared, so the way back is cheap.
"""

from __future__ import annotations

import logging
import marshal
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from ._importance import Importance, key_can_tell, level_of, name_level
from ._queries import BUSINESS_KEYS

__all__ = ["Decoder", "dumpb", "records_of"]

log = logging.getLogger(__name__)

BUCKET_BASE = math.log(1.02)
"""Histogram buckets are 2 % wide: bucket b holds durations in [1.02**b, 1.02**(b+1)) ns."""

Record = tuple[Any, ...]
"""A span on its way to the file, a flat tuple (the writer handles tens of thousands a second):

0 trace id (16 bytes), 1 span id (8 bytes), 2 parent id or None, 3 service, 4 name,
5 OTLP kind, 6 start ns, 7 end ns, 8 error, 9 attribute keys as a JSON list (str) or None,
10 attribute values as a JSON list (bytes) or None, 11 business key values (tuple of str),
12 events/links/status message as JSON or None, 13 linked trace ids, 14 resource as JSON,
15 importance (an `Importance` value), 16 histogram bucket of the duration."""

MINUTE_NS = 60_000_000_000


class Records(list[Record]):
    """The records of one request, with `received`: per (minute, service, name, histogram
    bucket) the number of its spans, the stage histogram's input counted here rather than by
    the store's writer."""

    received: dict[tuple[int, str, str, int], int]


def received_of(records: list[Record]) -> dict[tuple[int, str, str, int], int]:
    counts: dict[tuple[int, str, str, int], int] = {}
    get = counts.get
    for rec in records:
        key = (rec[6] // MINUTE_NS, rec[3], rec[4], rec[16])
        counts[key] = get(key, 0) + 1
    return counts


_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumpb(value: object) -> bytes:
    """Compact JSON as bytes: orjson, or the standard library for what orjson refuses
    (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        import json

        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, default=_json_default
        ).encode()


def value_of(v: Any) -> Any:
    """An OTLP `AnyValue` as a Python value."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def bucket_of(duration_ns: int) -> int:
    return int(math.log(duration_ns) / BUCKET_BASE) if duration_ns > 1 else 0


def extra_of(
    events: Sequence[tuple[Any, ...]], links: list[tuple[str, str]], message: str
) -> bytes | None:
    """Events (name, attributes, time ns), links and the status message (most spans have
    none) as one JSON text."""
    if not (events or links or message):
        return None
    extra: dict[str, Any] = {}
    if events:
        extra["e"] = events
    if links:
        extra["l"] = links
    if message:
        extra["m"] = message
    return dumpb(extra)


class _Shapes:
    """Per attribute key set: its JSON text and the positions of business keys, one shared
    object per distinct key set (a process sees few), so a batch carries each text once."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, ...], tuple[str, tuple[int, ...], bool]] = {}

    def get(self, keys: tuple[str, ...]) -> tuple[str, tuple[int, ...], bool]:
        """(the keys as JSON, the positions of business keys, whether a key can change the
        span's importance: `_importance.key_can_tell`)."""
        found = self.known.get(keys)
        if found is None:
            if len(self.known) > 50_000:
                self.known.clear()
            found = self.known[keys] = (
                dumpb(list(keys)).decode(),
                tuple(i for i, k in enumerate(keys) if k.rsplit(".", 1)[-1] in BUSINESS_KEYS),
                any(key_can_tell(k) for k in keys),
            )
        return found


_shapes = _Shapes()
_strings: dict[str, str] = {}


_names: dict[str, tuple[str, int]] = {}


def _name_of(text: str) -> tuple[str, int]:
    """A span name, shared, with what it alone says about its trace (`name_level`)."""
    if len(_names) > 100_000:
        _names.clear()
    found = _names[text] = (_shared(text), int(name_level(text)))
    return found


def _shared(text: str) -> str:
    found = _strings.get(text)
    if found is None:
        if len(_strings) > 100_000:
            _strings.clear()
        found = _strings[text] = text
    return found


_attributes_seen: dict[bytes, tuple[str, Any]] = {}


def _attribute_of(kv: Any, raw: bytes) -> tuple[str, Any]:
    """An attribute (`KeyValue`) as (key, value); a scalar one is remembered by its encoded
    bytes, so the next span with the same attribute costs one serialisation and a look-up
    rather than four protobuf reads."""
    v = kv.value
    which = v.WhichOneof("value")
    if which not in _SCALARS:
        return kv.key, value_of(v)
    found = (kv.key, getattr(v, which))
    if len(_attributes_seen) > 50_000:
        _attributes_seen.clear()
    _attributes_seen[raw] = found
    return found


def records_of(request: Any) -> Records:
    """The spans of a parsed `ExportTraceServiceRequest`, as records."""
    out = Records()
    append = out.append
    received: dict[tuple[int, str, str, int], int] = {}
    counted = received.get
    shapes = _shapes.get
    known_shapes = _shapes.known
    names = _names
    dumps = orjson.dumps
    log = math.log
    base = BUCKET_BASE
    minute_ns = MINUTE_NS
    important = int(Importance.IMPORTANT)
    seen = _attributes_seen.get
    for rs in request.resource_spans:
        resource = {kv.key: value_of(kv.value) for kv in rs.resource.attributes}
        resource_json = dumpb(resource).decode()
        service = _shared(str(resource.get("service.name", "unknown")))
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs: dict[str, Any] = {}
                for kv in s.attributes:
                    raw = kv.SerializeToString()
                    found = seen(raw)
                    if found is None:
                        found = _attribute_of(kv, raw)
                    attrs[found[0]] = found[1]
                status = s.status
                error = status.code == 2
                # A name seen before: its shared text and what it alone says (`name_level`).
                name, name_says = names.get(s.name) or _name_of(s.name)
                if s.events or s.links or status.message:
                    links = [(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links]
                    extra = extra_of(
                        [
                            (
                                e.name,
                                {kv.key: value_of(kv.value) for kv in e.attributes},
                                e.time_unix_nano,
                            )
                            for e in s.events
                        ],
                        links,
                        status.message,
                    )
                    linked = tuple({lk.trace_id for lk in s.links})
                else:
                    extra, linked = None, ()
                if attrs:
                    keys = tuple(attrs)
                    shape, slots, roles = known_shapes.get(keys) or shapes(keys)
                    values = list(attrs.values())
                    business: tuple[str, ...] = ()
                    if slots:
                        business = tuple(
                            str(values[i])
                            for i in slots
                            if isinstance(values[i], str | int) and values[i] != ""
                        )
                    try:
                        encoded: bytes | None = dumps(values)
                    except TypeError:  # bytes or an integer beyond 64 bits
                        encoded = dumpb(values)
                else:
                    shape, encoded, business, roles = None, None, (), False
                # Without an attribute that can say more, the name (or an error) decides.
                if error:
                    level = important
                elif roles and name_says != important:
                    level = int(level_of(name, attrs, error))
                else:
                    level = name_says
                t0 = s.start_time_unix_nano
                t1 = s.end_time_unix_nano
                duration = t1 - t0
                bucket = int(log(duration) / base) if duration > 1 else 0
                append(
                    (
                        s.trace_id,
                        s.span_id,
                        s.parent_span_id or None,
                        service,
                        name,
                        s.kind,
                        t0,
                        t1,
                        error,
                        shape,
                        encoded,
                        business,
                        extra,
                        linked,
                        resource_json,
                        level,
                        bucket,
                    )
                )
                key = (t0 // minute_ns, service, name, bucket)
                received[key] = counted(key, 0) + 1
    out.received = received
    return out


def _attributes(
    attrs: dict[str, Any],
    shapes: Callable[[tuple[str, ...]], tuple[str, tuple[int, ...], bool]],
) -> tuple[str | None, bytes | None, tuple[str, ...]]:
    """(keys as JSON, values as JSON, business key values) of a span's attributes."""
    if not attrs:
        return None, None, ()
    shape, slots, _ = shapes(tuple(attrs))
    values = list(attrs.values())
    business: tuple[str, ...] = ()
    if slots:
        business = tuple(
            str(values[i]) for i in slots if isinstance(values[i], str | int) and values[i] != ""
        )
    return shape, dumpb(values), business


def record_of_parts(
    *,
    trace_id: bytes,
    span_id: bytes,
    parent: bytes | None,
    service: str,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    error: bool,
    attributes: dict[str, Any],
    extra: bytes | None,
    linked: tuple[bytes, ...],
    resource: dict[str, Any],
) -> Record:
    """A record from a span already in Python values (`SqliteSpanStore.ingest`)."""
    return (
        trace_id,
        span_id,
        parent,
        service,
        name,
        kind,
        start_ns,
        end_ns,
        error,
        *_attributes(attributes, _shapes.get),
        extra,
        linked,
        dumpb(resource).decode(),
        int(level_of(name, attributes, error)),
        bucket_of(end_ns - start_ns),
    )


def _decode_in_child(payload: bytes) -> Records:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return records_of(ExportTraceServiceRequest.FromString(payload))


def _blob_in_child(payload: bytes) -> bytes:
    """The records of a request as one `marshal` blob: the pipe carries one bytes object, and
    the collector reads it back in one C call (pickled tuples cost both sides more)."""
    records = _decode_in_child(payload)
    return marshal.dumps((list(records), records.received))


def _records_of_blob(blob: bytes) -> Records:
    listed, received = marshal.loads(blob)
    out = Records(listed)
    out.received = received
    return out


def _exit_with(parent_pid: int) -> None:
    """In the child: exit when the collector is gone. A pool's worker holds both ends of its
    own call queue, so a collector killed outright (SIGKILL) would leave it waiting forever."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid was reused by another user's process
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-collector", daemon=True).start()


def _warm() -> int:
    _decode_in_child(b"")
    return 0


def _unpack(blob: Future[bytes], done: Future[Records]) -> None:
    try:
        done.set_result(_records_of_blob(blob.result()))
    except BaseException as exc:  # BrokenProcessPool among others: `Decoder.result` decides
        done.set_exception(exc)


class Decoder:
    """Decodes OTLP requests in `processes` child processes (0: in the caller's thread).

    `submit(payload, request)` answers a future of the records. A child that dies is replaced,
    and the request it held is decoded in the caller's thread instead: nothing is lost."""

    def __init__(self, processes: int = 0) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            try:
                self._pool = self._start()
            except Exception:  # a collector that decodes in-thread beats none at all
                log.exception("cannot start an OTLP decoder process; decoding in-thread")

    def _start(self) -> ProcessPoolExecutor:
        # Not fork: the receivers' threads (gRPC, uvicorn) must not be copied mid-flight.
        pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_exit_with,
            initargs=(os.getpid(),),
        )
        pool.submit(_warm).result(timeout=60)
        return pool

    def submit(self, payload: bytes, request: Any) -> Future[Records]:
        pool = self._pool
        done: Future[Records] = Future()
        if pool is not None:
            try:
                blob = pool.submit(_blob_in_child, payload)
            except (BrokenProcessPool, RuntimeError):
                log.warning("the OTLP decoder process is gone; starting another")
                self._restart(pool)
            else:
                # Unpacked by the pool's result thread as the blob arrives, not by the writer.
                blob.add_done_callback(lambda f: _unpack(f, done))
                return done
        done.set_result(records_of(request))
        return done

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                try:
                    self._pool = self._start()
                except Exception:  # decode in-thread from now on rather than lose spans
                    log.exception("cannot start an OTLP decoder process; decoding in-thread")
                    self._pool = None

    def result(self, future: Future[Records], payload: bytes) -> Records:
        """The records of a submitted request; decoded here if its child died."""
        try:
            return future.result()
        except BrokenProcessPool:
            pool = self._pool
            if pool is not None:
                self._restart(pool)
            return _decode_in_child(payload)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
