"""The embedded trace collector and viewer: OTLP in (gRPC 4317, HTTP 4318 and 16686), spans on
disk, pages for trading questions out.

    quantum-trader traceview        # collector + viewer; `quantum-trader run` starts it too

Services send spans to `OTLP_ENDPOINT=http://127.0.0.1:4318` (or the viewer's own port
16686, or OTLP/gRPC on 4317); `SqliteSpanStore` keeps them on disk with bounded,
importance-aware retention (docs/TRACEVIEW.md). The viewer reads the store through
`SpanQueries` only. `decode_spans` turns one OTLP/protobuf export request into plain
`OtlpSpan`s; the test suite's OTLP receiver uses it too. `TraceStore` is a small in-memory
store for tests and tools that need no file.
"""

from __future__ import annotations

from ._app import create_app
from ._collector import GrpcReceiver, ingest_app, ingest_routes
from ._serve import Retention, serve
from ._sqlstore import MalformedPayload, SqliteSpanStore
from ._store import TraceStore
from .otlp import OtlpSpan, decode_spans

__all__ = [
    "GrpcReceiver",
    "MalformedPayload",
    "OtlpSpan",
    "Retention",
    "SqliteSpanStore",
    "TraceStore",
    "create_app",
    "decode_spans",
    "ingest_app",
    "ingest_routes",
    "serve",
]
