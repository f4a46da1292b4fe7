"""An embedded trace collector and viewer for a laptop: OTLP/HTTP in, a waterfall page out.

    python -m backend.infra.traceview --port 16686

Services send spans to `OTLP_ENDPOINT=http://127.0.0.1:16686` (OTLP/HTTP, protobuf); the
page at the same address lists recent traces, finds them by trace id or by any attribute value
(a client order id, a symbol) and draws one trace across all services. Memory is bounded: the
oldest traces are forgotten first. In production use Jaeger, Tempo or an OpenTelemetry
Collector instead (docs/OBSERVABILITY_README.md). `decode_spans` turns one OTLP/protobuf export
request into plain `OtlpSpan`s; the test suite's OTLP receiver uses it too.
"""

from __future__ import annotations

from ._app import create_app
from ._store import TraceStore
from .otlp import OtlpSpan, decode_spans

__all__ = ["OtlpSpan", "TraceStore", "create_app", "decode_spans"]
