"""Tracer provider set-up, tracers, W3C propagation helpers and the no-op fallback."""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from ._config import ObservabilityConfig
from ._otel import (
    ALWAYS_OFF,
    ALWAYS_ON,
    HAS_API,
    HAS_SDK,
    INSTALL_HINT,
    InstrumentationScope,
    ParentBased,
    ReadableSpan,
    Resource,
    SpanKind,
    SpanProcessor,
    Status,
    StatusCode,
    TraceIdRatioBased,
    TracerProvider,
    otel_baggage,
    otel_context,
    otel_extract,
    otel_inject,
    otel_trace,
)
from ._redact import scrubber
from ._tracecontext import parse_traceparent_value, parse_tracestate_values

LIBRARY_SCOPE = "backend.infra.observability"
# The most attributes a lean span's lazily made attributes (`ServerSpan._lazy`) may have: a
# count limit under it makes them when the span ends, so that the limit applies.
LAZY_ATTRIBUTES_MAX = 16
_TRACE_ID_MASK = (1 << 64) - 1


@dataclass
class TracingRuntime:
    """What `init_observability` set up for tracing in this process."""

    provider: Any
    processor: Any | None
    resource: Any
    scope: Any
    sampled_bound: int
    parent_based: bool
    # A sampler other than the built-in ones, asked for every request (the slower path).
    custom_sampler: Any | None = None
    # The SDK's span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, ..._VALUE_LENGTH_LIMIT).
    max_attributes: int | None = None
    max_attribute_length: int | None = None
    max_links: int | None = None
    # The processor tuple last seen (the SDK replaces it when one is added), the export queue
    # when it is the only processor, and the processors that implement `on_start`.
    _seen: Any = None
    _direct: Any | None = None
    _starters: tuple[Any, ...] = ()

    def emit(self, span: Any) -> None:
        """Hand a finished span to the provider's processors, as an SDK span's `end()` does."""
        self.provider._active_span_processor.on_end(span)

    def _refresh(self) -> None:
        """Re-read what the provider's processors are, once per change of the set."""
        processors = self.provider._active_span_processor._span_processors
        if processors is self._seen:
            return
        processor = self.processor
        self._direct = (
            processor
            if processor is not None and len(processors) == 1 and processors[0] is processor
            else None
        )
        self._starters = tuple(
            p for p in processors if type(p).on_start is not SpanProcessor.on_start
        )
        self._seen = processors

    def export_directly(self) -> Any | None:
        """The export queue, when it is the provider's only processor (the usual case): a
        finished lean span then goes straight to it, without the `ReadableSpan` copy that
        other processors are given (~5 µs a span)."""
        self._refresh()
        return self._direct

    def start_processors(self) -> tuple[Any, ...]:
        """The registered processors that implement `on_start` (re-read when one is added).

        The export queue and the test capture do nothing on start, so the common case costs
        one identity comparison per span.
        """
        self._refresh()
        return self._starters

    def should_sample(self, trace_id: int, parent: Any | None) -> bool:
        """The configured sampler's decision, inlined for the per-request server span."""
        if parent is not None and self.parent_based:
            return bool(parent.trace_flags.sampled)
        return (trace_id & _TRACE_ID_MASK) < self.sampled_bound


_RUNTIME: TracingRuntime | None = None
# True when OTEL_PROPAGATORS asks for something other than W3C trace context and baggage: the
# request middleware then extracts incoming context with the configured propagators.
CUSTOM_PROPAGATORS = [False]
_DEFAULT_PROPAGATORS = ({"tracecontext", "baggage"}, {"tracecontext"})


def runtime() -> TracingRuntime | None:
    return _RUNTIME


def _build_sampler(config: ObservabilityConfig) -> tuple[Any, bool, float]:
    if config.custom_sampler is not None:
        from ._config import _sampler_entry_point

        name, arg = config.custom_sampler
        entry_point: Any = _sampler_entry_point(name)
        # The SDK's convention: the entry point is a factory taking OTEL_TRACES_SAMPLER_ARG.
        return entry_point.load()(arg), False, 1.0
    name = config.sampler
    parent_based = name.startswith("parentbased_")
    root: Any
    if name.endswith("always_on"):
        rate = 1.0
        root = ALWAYS_ON
    elif name.endswith("always_off"):
        rate = 0.0
        root = ALWAYS_OFF
    else:
        rate = config.sample_rate
        root = TraceIdRatioBased(rate)
    return (ParentBased(root) if parent_based else root), parent_based, rate


def resource_attributes(config: ObservabilityConfig) -> dict[str, str]:
    return {
        **config.resource_attributes,
        "service.name": config.service_name,
        "service.version": config.service_version,
        "deployment.environment.name": config.environment,
    }


def setup_tracing(config: ObservabilityConfig) -> TracingRuntime | None:
    """Create and install the global tracer provider; None when tracing is off or absent."""
    global _RUNTIME
    if not config.tracing_enabled:
        return None
    if not HAS_SDK:
        if config.otlp_endpoint:
            logging.getLogger(LIBRARY_SCOPE).warning(
                "OTLP endpoint %s is set but the OpenTelemetry SDK is not installed; "
                "tracing is a no-op (%s)",
                config.otlp_endpoint,
                INSTALL_HINT,
            )
        return None
    from . import _export

    sampler, parent_based, rate = _build_sampler(config)
    resource = Resource.create(resource_attributes(config))
    provider = TracerProvider(resource=resource, sampler=sampler)
    processor = None
    if config.otlp_endpoint is not None:
        transport = _export.make_transport(
            config.otlp_endpoint,
            config.otlp_protocol,
            config.otlp_insecure,
            config.otlp_headers,
            config.otlp_timeout_s,
            config.otlp_compression,
            _export.TlsFiles(
                config.otlp_certificate, config.otlp_client_key, config.otlp_client_certificate
            ),
        )
        processor = _export.ExportQueue(
            transport,
            max_queue_size=config.export_queue_size,
            max_batch_size=config.export_batch_size,
            delay_ms=config.export_delay_ms,
            timeout_s=config.otlp_timeout_s,
        )
        provider.add_span_processor(processor)
    otel_trace.set_tracer_provider(provider)
    from importlib.metadata import PackageNotFoundError, version

    try:
        lib_version = version("quantum-trader")
    except PackageNotFoundError:  # running from a source tree that is not installed
        lib_version = "0"
    import os

    names = {p.strip() for p in os.environ.get("OTEL_PROPAGATORS", "").split(",") if p.strip()}
    CUSTOM_PROPAGATORS[0] = bool(names) and names not in _DEFAULT_PROPAGATORS
    limits = provider._span_limits
    _RUNTIME = TracingRuntime(
        custom_sampler=sampler if config.custom_sampler is not None else None,
        provider=provider,
        processor=processor,
        resource=resource,
        scope=InstrumentationScope(LIBRARY_SCOPE, lib_version),
        sampled_bound=TraceIdRatioBased.get_bound_for_rate(rate),
        parent_based=parent_based,
        max_attributes=limits.max_span_attributes,
        max_attribute_length=limits.max_span_attribute_length,
        max_links=limits.max_links,
    )
    return _RUNTIME


def shutdown_tracing(timeout_ms: int = 5000) -> None:
    """Flush queued spans and stop the exporter. Safe to call more than once."""
    rt = _RUNTIME
    if rt is not None and rt.processor is not None:
        rt.processor.shutdown(timeout_ms)


def flush_for_shutdown(timeout_ms: int = 5000) -> bool:
    """Flush before the process stops, starting the one shutdown deadline that a later
    `shutdown_tracing` keeps to as well (so flush + shutdown together take `timeout_ms`)."""
    rt = _RUNTIME
    if rt is None or rt.processor is None:
        return True
    rt.processor.begin_shutdown(timeout_ms)
    return bool(rt.processor.force_flush(timeout_ms))


def force_flush(timeout_ms: int = 5000) -> bool:
    rt = _RUNTIME
    if rt is None or rt.processor is None:
        return True
    return bool(rt.processor.force_flush(timeout_ms))


# --- Tracers -----------------------------------------------------------------------------------


class _NoopSpan:
    """A span that records nothing; used when not even `opentelemetry-api` is installed."""

    def set_attribute(self, key: str, value: Any) -> None: ...
    def set_attributes(self, attributes: Mapping[str, Any]) -> None: ...
    def add_event(self, name: str, attributes: Any = None, timestamp: Any = None) -> None: ...
    def add_link(self, context: Any, attributes: Any = None) -> None: ...
    def update_name(self, name: str) -> None: ...
    def set_status(self, status: Any, description: str | None = None) -> None: ...
    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None: ...
    def end(self, end_time: int | None = None) -> None: ...

    def is_recording(self) -> bool:
        return False

    def get_span_context(self) -> None:
        return None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_SPAN = _NoopSpan()


class NoopTracer:
    """The tracer `get_tracer` returns without OpenTelemetry: same calls, no effect."""

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> _NoopSpan:
        return _NOOP_SPAN

    @contextmanager
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[_NoopSpan]:
        yield _NOOP_SPAN


def get_tracer(name: str, version: str | None = None) -> Any:
    """A tracer for `name` (usually `__name__`): the seed's P2 `start_as_current_span` works.

    Without OpenTelemetry installed, or before `init_observability`, spans are no-ops.
    """
    if not HAS_API:
        return NoopTracer()
    return otel_trace.get_tracer(name, version)


# --- Errors ------------------------------------------------------------------------------------


def exception_type_name(exc: BaseException) -> str:
    """`exception.type` as the SDK writes it: the qualified name, with its module unless builtin."""
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def exception_event_attributes(exc: BaseException) -> dict[str, Any]:
    """The `exception` event's attributes, scrubbed, without the deprecated `exception.escaped`."""
    scrub = scrubber().text
    return {
        "exception.type": exception_type_name(exc),
        "exception.message": scrub(str(exc)),
        "exception.stacktrace": scrub("".join(traceback.format_exception(exc))),
    }


def record_error(span: Any, exc: BaseException, error_type: str | None = None) -> None:
    """Record `exc` on `span` as the conventions ask: an `exception` event, `error.type`, and
    the ERROR status described by the (scrubbed) message alone, not repeating the type.

    `error_type` defaults to the exception's qualified name. No `exception.escaped`: the
    attribute is deprecated.
    """
    if not span.is_recording():
        return
    attributes = exception_event_attributes(exc)
    span.add_event("exception", attributes)
    span.set_attribute("error.type", error_type or type(exc).__qualname__)
    message = attributes["exception.message"]
    span.set_status(Status(StatusCode.ERROR, message.split("\n", 1)[0] or None))


# --- Propagation -------------------------------------------------------------------------------


def inject_trace_context(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write `traceparent`/`tracestate`/`baggage` of the active context into `carrier`."""
    if not HAS_API:
        return carrier
    if CUSTOM_PROPAGATORS[0] or otel_baggage.get_all():
        otel_inject(carrier)
        return carrier
    # The W3C propagators with no baggage: what `TraceContextTextMapPropagator.inject`
    # writes, without the propagators' dispatch (every outbox event stores its context).
    ctx = otel_trace.get_current_span().get_span_context()
    if ctx.is_valid:
        carrier["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
    return carrier


def extract_trace_context(carrier: Mapping[str, str]) -> Any:
    """The context `carrier` holds (pass it as `context=` when starting a span); None without
    OpenTelemetry. Malformed values are ignored, as W3C Trace Context requires."""
    if not HAS_API:
        return None
    return otel_extract(carrier)


def new_trace_context() -> Any:
    """An empty context (pass it as `context=` when starting a span): the span starts a trace
    of its own whatever span is current. None without OpenTelemetry."""
    if not HAS_API:
        return None
    return otel_context.Context()


def links_from_traceparent(
    traceparent: str | None, attributes: Mapping[str, Any] | None = None
) -> list[Any]:
    """Span links (`links=` of `start_as_current_span`) to the span a stored `traceparent`
    names: how work done later (a resting order's fill) points at the trace that caused it.
    Empty for None, a malformed value, or without OpenTelemetry."""
    if not HAS_API or not traceparent:
        return []
    parent = _LINKED.get(traceparent)
    if parent is None:
        parent = parse_traceparent(traceparent.encode("ascii", "replace"))
        if parent is None:
            return []
        if len(_LINKED) >= _LINKED_MAX:
            _LINKED.clear()
        _LINKED[traceparent] = parent
    return [otel_trace.Link(parent, dict(attributes) if attributes else None)]


# Span contexts parsed by `links_from_traceparent`, by `traceparent`: a consumer links each
# message twice (from the batch's `receive` span and from its `process` span). Bounded.
_LINKED: dict[str, Any] = {}
_LINKED_MAX = 4096


@contextmanager
def use_trace_context(
    traceparent: str | None, tracestate: str | None = None, baggage: str | None = None
) -> Iterator[None]:
    """Make a stored W3C context (and baggage) the active one for the block, so spans started
    inside (a relay's PRODUCER spans) continue the trace that stored it. Nothing happens for
    None, a malformed value, or without OpenTelemetry."""
    if not HAS_API or not traceparent:
        yield
        return
    if tracestate or baggage or CUSTOM_PROPAGATORS[0]:
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        if baggage:
            carrier["baggage"] = baggage
        context = otel_extract(carrier)
    else:
        # A lone `traceparent` under the W3C propagators: what their `extract` makes (the
        # relay publishes one event per stored context, and the propagators cost ~20 µs).
        parent = _LINKED.get(traceparent) or parse_traceparent(
            traceparent.encode("ascii", "replace")
        )
        if parent is None:
            yield
            return
        context = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(parent))
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def span_context_from_traceparent(traceparent: str, tracestate: str | None = None) -> Any | None:
    """The remote `SpanContext` a stored W3C `traceparent` (and `tracestate`) names, or None
    for a malformed value or without OpenTelemetry (an invalid `tracestate` is dropped)."""
    if not HAS_API:
        return None
    return remote_parent(
        [traceparent.encode("ascii", "replace")],
        [tracestate.encode("ascii", "replace")] if tracestate else None,
    )


def activate_span(span: Any, context: Any = None) -> AbstractContextManager[Any]:
    """Make `span` the current span for the block (inside `context` when given, else the
    current context) and end it on exit; an exception is neither recorded nor set as the
    status (the caller records what it wants). For spans of `start_lean_span`."""
    return _Activation(span, context)


class _Activation(AbstractContextManager[Any]):
    """`activate_span`'s block: a class, not a generator, as it is entered once per message."""

    __slots__ = ("_context", "_span", "_token")

    def __init__(self, span: Any, context: Any) -> None:
        self._span = span
        self._context = context
        self._token: Any = None

    def __enter__(self) -> Any:
        if HAS_API:
            self._token = enter_span(self._span, self._context)
        return self._span

    def __exit__(self, *exc: object) -> None:
        try:
            self._span.end()
        finally:
            if self._token is not None:
                exit_span(self._token)


def lean_span(
    tracer: Any,
    name: str,
    attributes: dict[str, Any] | None = None,
    *,
    links: list[Any] | None = None,
) -> AbstractContextManager[Any]:
    """An INTERNAL span of `start_lean_span` (a fraction of an SDK span's cost), current for
    the block and ended on exit, with an exception that escapes the block recorded on it, as
    an SDK span's block records it. For a service's own spans on a hot path."""
    span = start_lean_span(tracer, name, SpanKind.INTERNAL, attributes or {}, links=links)
    return _RecordedActivation(span, None)


class _RecordedActivation(_Activation):
    """`lean_span`'s block: `activate_span`'s, recording an escaping exception first."""

    __slots__ = ()

    def __exit__(self, *exc: object) -> None:
        if isinstance(exc[1], BaseException):
            record_error(self._span, exc[1])
        super().__exit__(*exc)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the active span, or None outside a valid span."""
    if not HAS_API:
        return None
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


# --- The per-request server span ----------------------------------------------------------------

CURRENT_SPAN: Any = object()
"""`start_lean_span`'s default parent: whatever span is current."""


def parse_traceparent(value: bytes) -> Any | None:
    """A remote `SpanContext` from a W3C `traceparent` header value, or None if invalid."""
    parsed = parse_traceparent_value(value)
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    return otel_trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=otel_trace.TraceFlags(flags)
    )


def extract_with_propagators(headers: list[tuple[bytes, bytes]]) -> tuple[Any | None, Any]:
    """The remote parent and context that the configured `OTEL_PROPAGATORS` read from
    `headers` (`none` reads nothing): the slower path, taken only for a custom setting."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        carrier[key] = f"{carrier[key]},{text}" if key in carrier else text
    context = otel_extract(carrier)
    parent = otel_trace.get_current_span(context).get_span_context()
    return (parent if parent.is_valid else None), context


def remote_parent(traceparents: list[bytes], tracestates: list[bytes] | None) -> Any | None:
    """The remote parent the W3C headers of a request name, or None to start a new trace.

    More than one `traceparent` header is invalid; `tracestate` is only read for a valid
    parent, and an invalid `tracestate` is dropped without losing the parent.
    """
    if len(traceparents) != 1:
        return None
    parent = parse_traceparent(traceparents[0])
    if parent is None or not tracestates:
        return parent
    members = parse_tracestate_values(tracestates)
    if members is None:
        return parent
    return otel_trace.SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=parent.trace_flags,
        trace_state=otel_trace.TraceState(members),
    )


def _start_with_tracer(
    tracer: Any,
    name: str,
    kind: Any,
    attributes: dict[str, Any],
    parent: Any,
    links: list[Any] | None,
    start_time: int | None = None,
) -> Any:
    """`start_lean_span` through the tracer itself (no SDK, or a custom sampler)."""
    if not HAS_API:
        return tracer.start_span(name)
    if parent is CURRENT_SPAN:
        context = None
    elif parent is None:
        context = otel_context.Context()
    else:
        context = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(parent))
    return tracer.start_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        links=links or (),
        start_time=start_time,
    )


if not HAS_SDK:

    def start_lean_span(
        tracer: Any,
        name: str,
        kind: Any,
        attributes: dict[str, Any],
        parent: Any = CURRENT_SPAN,
        links: list[Any] | None = None,
        start_time: int | None = None,
    ) -> Any:
        return _start_with_tracer(tracer, name, kind, attributes, parent, links, start_time)


if HAS_API:

    def enter_span(span: Any, base: Any | None = None) -> Any:
        """Make `span` current (in `base` when given, else in the current context), as
        `attach(set_span_in_context(span, base))` does; returns the token for `exit_span`."""
        return otel_context.attach(otel_trace.set_span_in_context(span, base))

    def exit_span(token: Any) -> None:
        """Restore the context `enter_span` replaced."""
        otel_context.detach(token)


if HAS_SDK:
    from opentelemetry.sdk.trace import Event as _Event

    class ServerSpan(otel_trace.Span):
        """A lean recording span for the middleware's one SERVER span per request.

        An SDK span costs ~125 µs of CPU to create and end on this project's machines; this
        one is a few attribute stores, and on end becomes the same `ReadableSpan` an SDK span
        hands to the processors, so exporters and in-memory test exporters see no difference.
        Child spans started inside the request are ordinary SDK spans.
        """

        __slots__ = (
            "_attributes",
            "_context",
            "_end_time",
            "_events",
            "_instrumentation_scope",
            "_kind",
            "_lazy",
            "_links",
            "_name",
            "_parent",
            "_resource",
            "_runtime",
            "_start_time",
            "_status",
        )
        _attributes: dict[str, Any]
        _context: Any
        _end_time: int | None
        _events: Sequence[Any]
        _instrumentation_scope: Any
        _kind: Any
        _lazy: tuple[Callable[..., dict[str, Any]], tuple[Any, ...]] | None
        _links: Sequence[Any]
        _name: str
        _parent: Any | None
        _resource: Any
        _runtime: TracingRuntime
        _start_time: int
        _status: Any

        def __init__(
            self,
            rt: TracingRuntime,
            name: str,
            context: Any,
            parent: Any | None,
            attributes: dict[str, Any],
            start_time: int,
            kind: Any = SpanKind.SERVER,
            links: list[Any] | None = None,
            scope: Any = None,
            lazy: tuple[Callable[..., dict[str, Any]], tuple[Any, ...]] | None = None,
        ) -> None:
            _init_span(
                self, rt, name, context, parent, attributes, start_time, kind, links, scope, lazy
            )

        def _materialize(self) -> None:
            lazy = self._lazy
            if lazy is not None:
                attributes = lazy[0](*lazy[1])
                attributes.update(self._attributes)
                # In this order: the export thread may be encoding the span, reading `_lazy`
                # first, then (when it is None) `_attributes`.
                self._attributes = attributes
                self._lazy = None

        def get_span_context(self) -> Any:
            return self._context

        # What processors read in on_start, as on an SDK span.
        @property
        def name(self) -> str:
            return self._name

        @property
        def attributes(self) -> Mapping[str, Any]:
            if self._lazy is not None:
                self._materialize()
            return self._attributes

        @property
        def context(self) -> Any:
            return self._context

        @property
        def parent(self) -> Any | None:
            return self._parent

        @property
        def kind(self) -> Any:
            return self._kind

        @property
        def start_time(self) -> int:
            return self._start_time

        @property
        def resource(self) -> Any:
            return self._runtime.resource

        @property
        def instrumentation_scope(self) -> Any:
            return self._instrumentation_scope

        def set_attribute(self, key: str, value: Any) -> None:
            if self._end_time is None and value is not None:
                if self._lazy is not None:
                    self._materialize()
                self._attributes[key] = value

        def set_attributes(self, attributes: Mapping[str, Any]) -> None:
            for key, value in attributes.items():
                self.set_attribute(key, value)

        def add_event(
            self, name: str, attributes: Any = None, timestamp: int | None = None
        ) -> None:
            if self._end_time is None:
                event = _Event(name, attributes, timestamp or time.time_ns())
                if self._events:
                    self._events.append(event)  # type: ignore[attr-defined]
                else:
                    self._events = [event]

        def add_link(self, context: Any, attributes: Any = None) -> None:
            if self._end_time is None:
                link = otel_trace.Link(context, attributes)
                if self._links:
                    self._links.append(link)  # type: ignore[attr-defined]
                else:
                    self._links = [link]

        def update_name(self, name: str) -> None:
            if self._end_time is None:
                self._name = name

        def is_recording(self) -> bool:
            return self._end_time is None

        def set_status(self, status: Any, description: str | None = None) -> None:
            if self._end_time is not None:
                return
            if isinstance(status, StatusCode):
                status = Status(status, description)
            # OK is final; UNSET never overrides (the OTel API's rules).
            if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
                return
            self._status = status

        def record_exception(
            self,
            exception: BaseException,
            attributes: Any = None,
            timestamp: int | None = None,
            escaped: bool = False,
        ) -> None:
            # `escaped` is accepted for the API's sake; `exception.escaped` is deprecated.
            attrs = exception_event_attributes(exception)
            if attributes:
                attrs.update(attributes)
            self.add_event("exception", attrs, timestamp)

        def end(self, end_time: int | None = None) -> None:
            if self._end_time is not None:
                return
            self._end_time = end_time or time.time_ns()
            rt = self._runtime
            # `rt.export_directly()` inlined (it runs once per span): the export queue, when
            # it is the provider's only processor.
            if rt.provider._active_span_processor._span_processors is rt._seen:
                queue = rt._direct
            else:
                queue = rt.export_directly()
            if queue is None:
                self._materialize()  # other processors get the attributes as a dict
            length, count = rt.max_attribute_length, rt.max_attributes
            if length is not None or (
                count is not None and (count < LAZY_ATTRIBUTES_MAX or len(self._attributes) > count)
            ):
                self._materialize()  # the limits may cut them
                if length is not None or (count is not None and len(self._attributes) > count):
                    self._attributes = _apply_limits(self._attributes, rt)
            if queue is not None:
                # Ended, so immutable from here on (every setter checks `_end_time`): the
                # encoder reads the same fields it reads on a `ReadableSpan`.
                if self._context[3] & 0x01:
                    queue.add(self)
                return
            rt.emit(
                ReadableSpan(
                    name=self._name,
                    context=self._context,
                    parent=self._parent,
                    resource=rt.resource,
                    attributes=self.attributes,
                    events=self._events,
                    links=self._links,
                    kind=self._kind,
                    status=self._status,
                    start_time=self._start_time,
                    end_time=self._end_time,
                    instrumentation_scope=self._instrumentation_scope,
                )
            )

    def _init_span(
        span: Any,
        rt: TracingRuntime,
        name: str,
        context: Any,
        parent: Any | None,
        attributes: dict[str, Any],
        start_time: int,
        kind: Any,
        links: list[Any] | None,
        scope: Any = None,
        lazy: tuple[Callable[..., dict[str, Any]], tuple[Any, ...]] | None = None,
    ) -> Any:
        """A `ServerSpan`'s fields. The library makes its spans with `object.__new__` and
        this function: calling the class runs its Python `__init__` through the type's
        slot, about twice the cost, on every sampled request and message."""
        span._runtime = rt
        span._name = name
        span._context = context
        span._parent = parent
        span._kind = kind
        span._attributes = attributes
        # A list only once one is added: most spans have neither (two allocations fewer).
        span._events = ()
        span._links = links if links is not None else ()
        span._status = _UNSET
        span._start_time = start_time
        span._end_time = None
        # Read by the OTLP encoder when the span is queued for export as it is.
        span._resource = rt.resource
        span._instrumentation_scope = scope if scope is not None else rt.scope
        # `(build, args)`: the attributes are `build(*args)`, made only when something
        # reads or changes them; the encoder encodes them once per distinct pair.
        span._lazy = lazy
        return span

    _FLAGS = tuple(otel_trace.TraceFlags(n) for n in range(4))
    _NO_ATTRIBUTES: dict[str, Any] = {}
    _UNSET = Status(StatusCode.UNSET)

    def _apply_limits(attributes: dict[str, Any], rt: TracingRuntime) -> dict[str, Any]:
        """The SDK's attribute limits: the first `max_attributes` kept, strings truncated."""
        if rt.max_attributes is not None and len(attributes) > rt.max_attributes:
            attributes = dict(list(attributes.items())[: rt.max_attributes])
        length = rt.max_attribute_length
        if length is not None:
            attributes = {
                k: v[:length] if isinstance(v, str) and len(v) > length else v
                for k, v in attributes.items()
            }
        return attributes

    def start_server_span(
        rt: TracingRuntime,
        name: str,
        parent: Any | None,
        make_attributes: Callable[..., tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]],
        attribute_args: tuple[Any, ...] = (),
    ) -> Any:
        """Start the request's span: recording when sampled, else a non-recording carrier.

        `make_attributes(*attribute_args)` is only called for a sampled span. It returns a
        hashable `(build, args)` pair, and the span's attributes are `build(*args)`: made only
        when something reads or changes them, while the exporter encodes them once per
        distinct pair (a service answers the same few requests over and over). An unsampled
        request still gets ids, so its logs and outgoing calls carry the trace (with the
        sampled flag off). A function and its arguments rather than a closure: a closure
        over the request's values costs its cells on every request, sampled or not.
        """
        # A SpanContext is a tuple: read by index, not through its properties.
        trace_id = parent[0] if parent is not None else random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        trace_state = parent[4] if parent is not None else None
        if rt.custom_sampler is not None:
            build, args = make_attributes(*attribute_args)
            started = _start_with_sampler(rt, name, parent, build(*args), trace_id, span_id)
            if isinstance(started, ServerSpan):
                _notify_start(rt, started, parent)
            return started
        if parent is not None:
            parent_flags = parent[3]
            sampled = (
                parent_flags & 0x01
                if rt.parent_based
                else (trace_id & _TRACE_ID_MASK) < rt.sampled_bound
            )
            # Level 2's random flag says the trace id is random: set for the traces we start
            # (as the SDK does), kept as received for the traces we continue.
            flags = _FLAGS[(parent_flags & 0x02) | sampled]
        else:
            sampled = (trace_id & _TRACE_ID_MASK) < rt.sampled_bound
            flags = _FLAGS[0x02 | sampled]
            trace_state = _EMPTY_STATE
        ctx = _new_span_context(trace_id, span_id, flags, trace_state)
        if not sampled:
            return _non_recording(ctx)
        span = _init_span(
            _new_object(ServerSpan),
            rt,
            name,
            ctx,
            parent,
            _NO_ATTRIBUTES,  # never written to: a lazy span makes its own dict first
            time.time_ns(),
            SpanKind.SERVER,
            None,
            None,
            make_attributes(*attribute_args),
        )
        # `rt.start_processors()` inlined: usually no processor implements `on_start`.
        if rt.provider._active_span_processor._span_processors is not rt._seen or rt._starters:
            _notify_start(rt, span, parent)
        return span

    _SCOPES: dict[tuple[str, Any], Any] = {}

    def start_lean_span(
        tracer: Any,
        name: str,
        kind: Any,
        attributes: dict[str, Any],
        parent: Any = CURRENT_SPAN,
        links: list[Any] | None = None,
        start_time: int | None = None,
    ) -> Any:
        """Start a span the way `tracer.start_span` would, for the per-message spans of the
        event bus: the lean recording span of the request middleware when the built-in
        sampler decides (about 40x cheaper than an SDK span), else the tracer's own span.

        `parent` is the span context to continue (a remote one read from a message), None
        for a new trace, or, by default, the current span. The span's instrumentation scope
        is the tracer's name. `attributes` is kept, not copied; None values are dropped as the
        SDK drops them.
        """
        rt = _RUNTIME
        if rt is None or rt.custom_sampler is not None:
            return _start_with_tracer(tracer, name, kind, attributes, parent, links, start_time)
        if parent is CURRENT_SPAN:
            current = otel_trace.get_current_span().get_span_context()
            parent = current if current.is_valid else None
        if parent is not None:
            # A SpanContext is a tuple: read in one unpacking, not six property calls.
            trace_id, _span, _remote, parent_flags, trace_state, _valid = parent
            sampled = (
                parent_flags & 0x01
                if rt.parent_based
                else (trace_id & _TRACE_ID_MASK) < rt.sampled_bound
            )
            flags = _FLAGS[(parent_flags & 0x02) | sampled]
        else:
            trace_id = random.getrandbits(128) or 1
            sampled = (trace_id & _TRACE_ID_MASK) < rt.sampled_bound
            flags = _FLAGS[0x02 | sampled]
            trace_state = _EMPTY_STATE
        ctx = _new_span_context(trace_id, random.getrandbits(64) or 1, flags, trace_state)
        if not sampled:
            return _non_recording(ctx)
        if None in attributes.values():
            attributes = {k: v for k, v in attributes.items() if v is not None}
        scope = getattr(tracer, "_instrumentation_scope", None)
        if scope is None:
            scope = _proxy_scope(tracer)
        if links and rt.max_links is not None and len(links) > rt.max_links:
            links = links[-rt.max_links :]  # the SDK's link limit keeps the last ones
        span = _init_span(
            _new_object(ServerSpan),
            rt,
            name,
            ctx,
            parent,
            attributes,
            start_time or time.time_ns(),
            kind,
            links,
            scope,
        )
        if rt.start_processors():
            _notify_start(rt, span, parent)
        return span

    from opentelemetry.trace.span import DEFAULT_TRACE_STATE as _EMPTY_STATE

    _new_tuple = tuple.__new__
    _SpanContext = otel_trace.SpanContext

    _new_object = object.__new__

    def _non_recording(ctx: Any) -> Any:
        """`NonRecordingSpan(ctx)`, without the call of its Python `__init__` (which stores
        `_context` and nothing else): the carrier of every unsampled request and message."""
        span = _new_object(otel_trace.NonRecordingSpan)
        span._context = ctx
        return span

    def _new_span_context(trace_id: int, span_id: int, flags: Any, trace_state: Any) -> Any:
        """A local, valid `SpanContext` for ids known to be in range (the constructor's
        checks skipped: it is built once per span on the bus's hot path)."""
        return _new_tuple(_SpanContext, (trace_id, span_id, False, flags, trace_state, True))

    def _proxy_scope(tracer: Any) -> Any:
        """The scope of a proxy tracer (one made before the provider was set)."""
        name = str(getattr(tracer, "_instrumenting_module_name", LIBRARY_SCOPE))
        version = getattr(tracer, "_instrumenting_library_version", None)
        scope = _SCOPES.get((name, version))
        if scope is None:
            scope = _SCOPES[(name, version)] = InstrumentationScope(name, version)
        return scope

    def _notify_start(rt: TracingRuntime, span: Any, parent: Any | None) -> None:
        """`on_start` of the registered processors that implement it (usually none)."""
        starters = rt.start_processors()
        if starters:
            parent_context = (
                otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(parent))
                if parent is not None
                else None
            )
            for processor in starters:
                processor.on_start(span, parent_context=parent_context)

    def _start_with_sampler(
        rt: TracingRuntime,
        name: str,
        parent: Any | None,
        attributes: dict[str, Any],
        trace_id: int,
        span_id: int,
    ) -> Any:
        """`start_server_span` asking a custom sampler, with the arguments an SDK span gives."""
        parent_context = (
            otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(parent))
            if parent is not None
            else None
        )
        result = rt.custom_sampler.should_sample(  # type: ignore[union-attr]
            parent_context, trace_id, name, SpanKind.SERVER, attributes, None
        )
        sampled = result.decision.is_sampled()
        random_flag = parent.trace_flags & 0x02 if parent is not None else 0x02
        trace_state = result.trace_state
        if trace_state is None and parent is not None:
            trace_state = parent.trace_state
        ctx = otel_trace.SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=_FLAGS[random_flag | sampled],
            trace_state=trace_state,
        )
        if not result.decision.is_recording():
            return otel_trace.NonRecordingSpan(ctx)
        if result.attributes:
            attributes.update(result.attributes)
        return ServerSpan(rt, name, ctx, parent, attributes, time.time_ns())

    NonRecordingSpan = otel_trace.NonRecordingSpan
    set_span_in_context = otel_trace.set_span_in_context
    attach = otel_context.attach
    detach = otel_context.detach

    from opentelemetry.context import _RUNTIME_CONTEXT
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    from opentelemetry.trace.propagation import _SPAN_KEY

    _Context = otel_context.Context

    if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext:
        # The default runtime context (OTEL_PYTHON_CONTEXT unset): its context variable is
        # set and reset directly, the same `Context` values without the five Python calls
        # of `set_span_in_context` + `attach` and `detach` on every request and bus message.
        _CURRENT = _RUNTIME_CONTEXT._current_context
        _CONTEXT_LOG = logging.getLogger("opentelemetry.context")

        def enter_span(span: Any, base: Any | None = None) -> Any:
            current = _CURRENT.get() if base is None else base
            if current:
                values = dict(current)
                values[_SPAN_KEY] = span
                return _CURRENT.set(_Context(values))
            return _CURRENT.set(_Context({_SPAN_KEY: span}))

        def exit_span(token: Any) -> None:
            try:
                _CURRENT.reset(token)
            except ValueError:  # a token of another context: logged, as `detach` does
                _CONTEXT_LOG.exception("Failed to detach context")
