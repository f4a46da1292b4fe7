"""Observability settings read from the environment, validated once at start-up.

Precedence, for every setting (documented in docs/OBSERVABILITY_README.md):
an explicit argument to `init_observability` > the seed's variable (`ENABLE_TRACING`,
`OTLP_ENDPOINT`, ...) > the standard `OTEL_*` equivalent > the built-in default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from ._errors import ObservabilityConfigError

Protocol = Literal["grpc", "http/protobuf"]
Compression = Literal["gzip", "none"]
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LEVELS = {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"}
_SAMPLERS: tuple[SamplerName, ...] = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True)
class ObservabilityConfig:
    """Everything the library needs to know, resolved from arguments and environment."""

    service_name: str
    service_version: str = "1.0.0"
    environment: str = "dev"
    log_level: str = "INFO"
    tracing_enabled: bool = True
    metrics_enabled: bool = True
    otlp_endpoint: str | None = None
    otlp_protocol: Protocol = "http/protobuf"
    otlp_insecure: bool = True
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    otlp_timeout_s: float = 10.0
    otlp_compression: Compression = "none"
    otlp_certificate: str | None = None
    otlp_client_key: str | None = None
    otlp_client_certificate: str | None = None
    sampler: SamplerName = "parentbased_traceidratio"
    # (name, OTEL_TRACES_SAMPLER_ARG) of a sampler loaded from the SDK's entry points.
    custom_sampler: tuple[str, str | None] | None = None
    sample_rate: float = 1.0
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    access_log: bool = True
    export_queue_size: int = 2048
    export_batch_size: int = 512
    export_delay_ms: int = 500
    http_known_methods: frozenset[str] | None = None
    scrubbing: bool = True
    scrub_patterns: tuple[str, ...] = ()
    client_access_log: bool = True
    baggage_log_keys: frozenset[str] = frozenset()
    otlp_metrics_endpoint: str | None = None
    otlp_logs_endpoint: str | None = None
    metric_export_interval_ms: int = 60000

    @property
    def exporting(self) -> bool:
        """Spans leave the process only when tracing is on and an endpoint is set."""
        return self.tracing_enabled and self.otlp_endpoint is not None


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ObservabilityConfigError(name, value, "expected true or false")


SAMPLER_ENTRY_POINTS = "opentelemetry_traces_sampler"


def _sampler_entry_point(name: str) -> object | None:
    """The installed entry point of a sampler named `name`, or None."""
    from importlib.metadata import entry_points

    return next(iter(entry_points(group=SAMPLER_ENTRY_POINTS, name=name)), None)


def _first_set(env: Mapping[str, str], *names: str) -> str | None:
    """The first of `names` (most specific first) that is set to a non-blank value."""
    return next((name for name in names if _get(env, name)), None)


def _parse_rate(name: str, value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise ObservabilityConfigError(name, value, "expected a number between 0 and 1") from None
    if not 0.0 <= rate <= 1.0:
        raise ObservabilityConfigError(name, value, "expected a number between 0 and 1")
    return rate


def _parse_positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ObservabilityConfigError(name, value, "expected a positive integer") from None
    if number <= 0:
        raise ObservabilityConfigError(name, value, "expected a positive integer")
    return number


def _parse_key_values(name: str, value: str) -> dict[str, str]:
    """Parse the W3C-baggage-like `k=v,k2=v2` lists used by `OTEL_RESOURCE_ATTRIBUTES`."""
    result: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ObservabilityConfigError(name, value, f"entry {item!r} is not key=value")
        result[unquote(key.strip())] = unquote(val.strip())
    return result


def _parse_endpoint(name: str, value: str) -> str:
    # The specification's endpoints are URLs: a value without a scheme (`notaurl`,
    # `collector:4317`) is refused at start-up rather than guessed at and failing later.
    parts = urlsplit(value)
    if "://" not in value or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ObservabilityConfigError(
            name, value, "expected an http:// or https:// URL such as http://collector:4318"
        )
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError:
        raise ObservabilityConfigError(name, value, "the port is not a number") from None
    return parts.geturl()


def _infer_protocol(endpoint: str) -> Protocol:
    """`http/protobuf`, the specification's default, except for the port IANA assigned to
    OTLP/gRPC (4317): the seed documents `OTLP_ENDPOINT=http://jaeger:4317` without a protocol."""
    parts = urlsplit(endpoint)
    if parts.port == 4317 and not parts.path.rstrip("/").endswith("/v1/traces"):
        return "grpc"
    return "http/protobuf"


def _signal_endpoint(
    env: Mapping[str, str],
    signal: str,
    base: str | None,
    base_var: str | None,
    protocol: Protocol,
) -> str | None:
    """Where `signal` (metrics, logs) goes over OTLP, or None when it is not exported.

    `OTEL_{SIGNAL}_EXPORTER=otlp` sends it (to `OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`, else the
    base endpoint with `/v1/{signal}` for HTTP); `none` (or `prometheus` for metrics) keeps it
    local. Unset, it is sent when a standard endpoint for all signals or for this one is set
    (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`), but not for the
    seed's `OTLP_ENDPOINT` alone: the seed points that at Jaeger, which takes traces only.
    """
    upper = signal.upper()
    exporter_var = f"OTEL_{upper}_EXPORTER"
    specific_var = f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"
    raw = _get(env, exporter_var)
    if raw is None:
        if not (_get(env, specific_var) or _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")):
            return None
        raw = "otlp"
    exporters = [e.strip() for e in raw.split(",") if e.strip()]
    allowed = {"otlp", "none", "prometheus"} if signal == "metrics" else {"otlp", "none"}
    for name in exporters:
        if name not in allowed:
            raise ObservabilityConfigError(exporter_var, name, f"expected one of {sorted(allowed)}")
    if "otlp" not in exporters:
        return None
    specific = _get(env, specific_var)
    if specific is not None:
        return _parse_endpoint(specific_var, specific)
    if base is None or base_var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
        return None
    if protocol == "http/protobuf":
        base = base.rstrip("/")
        if base.endswith("/v1/traces"):
            base = base[: -len("/v1/traces")]
        return f"{base}/v1/{signal}"
    return base


def load_config(
    service_name: str | None = None,
    log_level: str | None = None,
    enable_tracing: bool | None = None,
    enable_metrics: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> ObservabilityConfig:
    """Resolve the configuration; raise `ObservabilityConfigError` naming a bad variable."""
    env = os.environ if env is None else env

    resource_raw = _get(env, "OTEL_RESOURCE_ATTRIBUTES")
    resource = _parse_key_values("OTEL_RESOURCE_ATTRIBUTES", resource_raw) if resource_raw else {}

    name = (
        service_name
        or _get(env, "SERVICE_NAME")
        or _get(env, "OTEL_SERVICE_NAME")
        or resource.get("service.name")
        or "unknown_service"
    )
    version = _get(env, "SERVICE_VERSION") or resource.get("service.version") or "1.0.0"
    environment = (
        _get(env, "ENVIRONMENT")
        or resource.get("deployment.environment.name")
        or resource.get("deployment.environment")
        or "dev"
    )

    level = (log_level or _get(env, "LOG_LEVEL") or "INFO").upper()
    if level not in _LEVELS:
        source = "log_level" if log_level else "LOG_LEVEL"
        raise ObservabilityConfigError(source, level, f"expected one of {sorted(_LEVELS)}")
    level = "WARNING" if level == "WARN" else level

    # Tracing: the argument and the environment must both allow it.
    tracing = True if enable_tracing is None else bool(enable_tracing)
    seed_switch = _get(env, "ENABLE_TRACING")
    if seed_switch is not None:
        tracing = tracing and _parse_bool("ENABLE_TRACING", seed_switch)
    else:
        disabled = _get(env, "OTEL_SDK_DISABLED")
        if disabled is not None and _parse_bool("OTEL_SDK_DISABLED", disabled):
            tracing = False

    metrics = True if enable_metrics is None else bool(enable_metrics)

    endpoint: str | None = None
    endpoint_var = next(
        (
            var
            for var in (
                "OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            )
            if _get(env, var)
        ),
        None,
    )
    if endpoint_var is not None:
        endpoint = _parse_endpoint(endpoint_var, _get(env, endpoint_var) or "")

    protocol: Protocol
    protocol_var = _first_set(
        env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if protocol_var is not None:
        raw_protocol = _get(env, protocol_var) or ""
        if raw_protocol not in ("grpc", "http/protobuf"):
            raise ObservabilityConfigError(
                protocol_var,
                raw_protocol,
                "expected grpc or http/protobuf (http/json is not supported)",
            )
        protocol = raw_protocol  # type: ignore[assignment]
    else:
        protocol = _infer_protocol(endpoint) if endpoint else "http/protobuf"

    signal_endpoints = {
        signal: _signal_endpoint(env, signal, endpoint, endpoint_var, protocol)
        for signal in ("metrics", "logs")
    }
    interval_ms = _parse_positive_int(
        "OTEL_METRIC_EXPORT_INTERVAL", _get(env, "OTEL_METRIC_EXPORT_INTERVAL") or "60000"
    )

    if endpoint and protocol == "http/protobuf":
        path = urlsplit(endpoint).path.rstrip("/")
        # A signal-specific endpoint is used as given; a base endpoint gets the signal path.
        if endpoint_var != "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" and not path.endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"

    insecure_raw = _get(env, "OTLP_INSECURE")
    insecure_var = "OTLP_INSECURE"
    if insecure_raw is None:
        insecure_var = "OTEL_EXPORTER_OTLP_INSECURE"
        insecure_raw = _get(env, insecure_var)
    insecure = True if insecure_raw is None else _parse_bool(insecure_var, insecure_raw)

    # Signal-specific variables win over the generic ones, as the specification orders them.
    headers_var = _first_set(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    headers = _parse_key_values(headers_var, _get(env, headers_var) or "") if headers_var else {}

    timeout_s = 10.0
    timeout_var = _first_set(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if timeout_var is not None:
        timeout_s = _parse_positive_int(timeout_var, _get(env, timeout_var) or "") / 1000.0

    compression: Compression = "none"
    compression_var = _first_set(
        env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
    )
    if compression_var is not None:
        raw_compression = (_get(env, compression_var) or "").lower()
        if raw_compression not in ("gzip", "none"):
            raise ObservabilityConfigError(
                compression_var, raw_compression, "expected gzip or none"
            )
        compression = raw_compression  # type: ignore[assignment]

    tls_files: dict[str, str | None] = {}
    for setting in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
        var = _first_set(
            env, f"OTEL_EXPORTER_OTLP_TRACES_{setting}", f"OTEL_EXPORTER_OTLP_{setting}"
        )
        tls_file = _get(env, var) if var else None
        if var is not None and tls_file is not None and not os.path.isfile(tls_file):
            raise ObservabilityConfigError(var, tls_file, "no such file")
        tls_files[setting] = tls_file
    if (tls_files["CLIENT_KEY"] is None) != (tls_files["CLIENT_CERTIFICATE"] is None):
        raise ObservabilityConfigError(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            tls_files["CLIENT_KEY"],
            "a client key and a client certificate go together; set both or neither",
        )

    sampler: SamplerName = "parentbased_traceidratio"
    custom_sampler: tuple[str, str | None] | None = None
    rate = 1.0
    rate_raw = _get(env, "TRACE_SAMPLE_RATE")
    if rate_raw is not None:
        rate = _parse_rate("TRACE_SAMPLE_RATE", rate_raw)
    else:
        sampler_raw = _get(env, "OTEL_TRACES_SAMPLER")
        arg_raw = _get(env, "OTEL_TRACES_SAMPLER_ARG")
        if sampler_raw is not None:
            if sampler_raw in _SAMPLERS:
                sampler = sampler_raw
            elif _sampler_entry_point(sampler_raw) is not None:
                # A sampler installed under the SDK's entry-point group (xray, ...): the
                # server span asks it, the slower path.
                custom_sampler = (sampler_raw, arg_raw)
            else:
                raise ObservabilityConfigError(
                    "OTEL_TRACES_SAMPLER",
                    sampler_raw,
                    f"expected one of {list(_SAMPLERS)} or an installed sampler "
                    f"(entry point group {SAMPLER_ENTRY_POINTS})",
                )
        if arg_raw is not None and sampler.endswith("traceidratio") and not custom_sampler:
            rate = _parse_rate("OTEL_TRACES_SAMPLER_ARG", arg_raw)
        elif sampler.endswith("always_off"):
            rate = 0.0

    access_raw = _get(env, "ACCESS_LOG")
    access_log = True if access_raw is None else _parse_bool("ACCESS_LOG", access_raw)

    queue_size = _parse_positive_int(
        "OTEL_BSP_MAX_QUEUE_SIZE", _get(env, "OTEL_BSP_MAX_QUEUE_SIZE") or "2048"
    )
    batch_size = _parse_positive_int(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _get(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE") or "512"
    )
    delay_ms = _parse_positive_int(
        "OTEL_BSP_SCHEDULE_DELAY", _get(env, "OTEL_BSP_SCHEDULE_DELAY") or "500"
    )

    known_methods = None
    known_raw = _get(env, "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS")
    if known_raw is not None:
        # Case-sensitive, as the conventions define methods; the list replaces the default.
        known_methods = frozenset(m.strip() for m in known_raw.split(",") if m.strip())

    scrub_raw = _get(env, "OBSERVABILITY_SCRUB")
    scrubbing = True if scrub_raw is None else _parse_bool("OBSERVABILITY_SCRUB", scrub_raw)
    patterns: tuple[str, ...] = ()
    patterns_raw = _get(env, "OBSERVABILITY_SCRUB_PATTERNS")
    if patterns_raw is not None:
        patterns = tuple(p.strip() for p in patterns_raw.split(",") if p.strip())
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ObservabilityConfigError(
                    "OBSERVABILITY_SCRUB_PATTERNS", pattern, f"not a regular expression: {exc}"
                ) from None

    client_raw = _get(env, "CLIENT_ACCESS_LOG")
    client_access_log = True if client_raw is None else _parse_bool("CLIENT_ACCESS_LOG", client_raw)

    baggage_raw = _get(env, "OBSERVABILITY_BAGGAGE_LOG_KEYS")
    baggage_keys = frozenset(k.strip() for k in (baggage_raw or "").split(",") if k.strip())

    extra_resource = {
        k: v
        for k, v in resource.items()
        if k
        not in (
            "service.name",
            "service.version",
            "deployment.environment",
            "deployment.environment.name",
        )
    }
    return ObservabilityConfig(
        service_name=name,
        service_version=version,
        environment=environment,
        log_level=level,
        tracing_enabled=tracing,
        metrics_enabled=metrics,
        otlp_endpoint=endpoint,
        otlp_protocol=protocol,
        otlp_insecure=insecure,
        otlp_headers=headers,
        otlp_timeout_s=timeout_s,
        otlp_compression=compression,
        otlp_certificate=tls_files["CERTIFICATE"],
        otlp_client_key=tls_files["CLIENT_KEY"],
        otlp_client_certificate=tls_files["CLIENT_CERTIFICATE"],
        sampler=sampler,
        custom_sampler=custom_sampler,
        sample_rate=rate,
        resource_attributes=extra_resource,
        access_log=access_log,
        export_queue_size=queue_size,
        export_batch_size=min(batch_size, queue_size),
        export_delay_ms=delay_ms,
        http_known_methods=known_methods,
        scrubbing=scrubbing,
        scrub_patterns=patterns,
        client_access_log=client_access_log,
        baggage_log_keys=baggage_keys,
        otlp_metrics_endpoint=signal_endpoints["metrics"] if metrics else None,
        otlp_logs_endpoint=signal_endpoints["logs"],
        metric_export_interval_ms=interval_ms,
    )
