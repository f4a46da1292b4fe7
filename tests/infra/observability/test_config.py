"""Configuration: the seed's variables, the OTEL_* equivalents, precedence and clear errors."""

from __future__ import annotations

import pytest

from backend.infra.observability import ObservabilityConfigError
from backend.infra.observability._config import load_config


def test_seed_defaults() -> None:
    c = load_config("risk-safety", env={})
    assert c.service_name == "risk-safety"
    assert c.service_version == "1.0.0"
    assert c.environment == "dev"
    assert c.log_level == "INFO"
    assert c.tracing_enabled is True
    assert c.otlp_endpoint is None and not c.exporting
    assert c.otlp_insecure is True
    assert c.sample_rate == 1.0
    assert c.sampler == "parentbased_traceidratio"


def test_seed_variables_are_read() -> None:
    c = load_config(
        "execution",
        env={
            "OTLP_ENDPOINT": "http://jaeger:4317",
            "TRACE_SAMPLE_RATE": "0.25",
            "SERVICE_VERSION": "2.3.4",
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "warning",
            "OTLP_INSECURE": "false",
        },
    )
    assert c.otlp_endpoint == "http://jaeger:4317"
    assert c.otlp_protocol == "grpc"
    assert c.sample_rate == 0.25
    assert (c.service_version, c.environment, c.log_level) == ("2.3.4", "production", "WARNING")
    assert c.otlp_insecure is False


def test_standard_otel_variables_are_honoured() -> None:
    c = load_config(
        None,
        env={
            "OTEL_SERVICE_NAME": "portfolio",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "OTEL_RESOURCE_ATTRIBUTES": "service.version=9.9,deployment.environment.name=staging,"
            "k8s.pod.name=pod-1",
        },
    )
    assert c.service_name == "portfolio"
    assert c.otlp_endpoint == "http://collector:4318/v1/traces"
    assert c.otlp_protocol == "http/protobuf"
    assert c.sample_rate == 0.1
    assert c.service_version == "9.9" and c.environment == "staging"
    assert c.resource_attributes == {"k8s.pod.name": "pod-1"}


def test_the_deprecated_deployment_environment_attribute_is_still_read() -> None:
    old = load_config("svc", env={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"})
    assert old.environment == "prod" and old.resource_attributes == {}
    both = load_config(
        "svc",
        env={
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,"
            "deployment.environment.name=staging"
        },
    )
    assert both.environment == "staging" and both.resource_attributes == {}


def test_the_resource_names_the_environment_by_the_current_convention() -> None:
    from backend.infra.observability._tracing import resource_attributes

    attrs = resource_attributes(load_config("svc", env={"ENVIRONMENT": "prod"}))
    assert attrs["deployment.environment.name"] == "prod"
    assert "deployment.environment" not in attrs


def test_seed_variable_wins_over_its_otel_equivalent() -> None:
    c = load_config(
        "svc",
        env={
            "OTLP_ENDPOINT": "http://seed:4317",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
            "TRACE_SAMPLE_RATE": "0.5",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "SERVICE_VERSION": "1.2",
            "OTEL_RESOURCE_ATTRIBUTES": "service.version=3.4",
            "ENABLE_TRACING": "true",
            "OTEL_SDK_DISABLED": "true",
        },
    )
    assert c.otlp_endpoint == "http://seed:4317"
    assert c.sample_rate == 0.5
    assert c.service_version == "1.2"
    assert c.tracing_enabled is True


def test_argument_wins_over_environment_for_the_service_name() -> None:
    c = load_config("ai-engine", env={"SERVICE_NAME": "x", "OTEL_SERVICE_NAME": "y"})
    assert c.service_name == "ai-engine"


def test_tracing_can_be_switched_off_either_way() -> None:
    assert not load_config("s", env={"ENABLE_TRACING": "false"}).tracing_enabled
    assert not load_config("s", env={"OTEL_SDK_DISABLED": "true"}).tracing_enabled
    assert not load_config("s", enable_tracing=False, env={}).tracing_enabled


def test_protocol_is_inferred_from_the_port_when_not_given() -> None:
    assert load_config("s", env={"OTLP_ENDPOINT": "http://c:4318"}).otlp_protocol == "http/protobuf"
    assert load_config("s", env={"OTLP_ENDPOINT": "http://c:4317"}).otlp_protocol == "grpc"
    signal = load_config(
        "s",
        env={
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9999/custom/path",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
    )
    assert signal.otlp_endpoint == "http://c:9999/custom/path"


@pytest.mark.parametrize(
    "endpoint", ["http://c:24318", "http://c", "https://collector.example.com/otlp"]
)
def test_the_default_protocol_is_http_protobuf_as_the_specification_says(endpoint: str) -> None:
    # gRPC only for the port IANA assigned to OTLP/gRPC (the seed's `http://jaeger:4317`).
    config = load_config("s", env={"OTLP_ENDPOINT": endpoint})
    assert config.otlp_protocol == "http/protobuf"
    assert config.otlp_endpoint == endpoint.rstrip("/") + "/v1/traces"
    assert load_config("s", env={}).otlp_protocol == "http/protobuf"


@pytest.mark.parametrize("value", ["notaurl", "collector:4317", "localhost", "//host:4318"])
def test_an_endpoint_that_is_not_a_url_is_a_start_up_error(value: str) -> None:
    with pytest.raises(ObservabilityConfigError) as info:
        load_config("s", env={"OTLP_ENDPOINT": value})
    assert info.value.variable == "OTLP_ENDPOINT"


def test_exporter_settings_follow_the_specification() -> None:
    c = load_config(
        "s",
        env={
            "OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=generic",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=tr%20aces,tenant=t1",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "20000",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3000",
        },
    )
    assert c.otlp_compression == "gzip"
    assert c.otlp_headers == {"api-key": "tr aces", "tenant": "t1"}
    assert c.otlp_timeout_s == 3.0


def test_tls_files_must_exist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    c = load_config("s", env={"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(ca)})
    assert c.otlp_certificate == str(ca)
    with pytest.raises(ObservabilityConfigError) as info:
        load_config("s", env={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "none.pem")})
    assert info.value.variable == "OTEL_EXPORTER_OTLP_CERTIFICATE"
    with pytest.raises(ObservabilityConfigError):
        load_config("s", env={"OTEL_EXPORTER_OTLP_CLIENT_KEY": str(ca)})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRACE_SAMPLE_RATE", "1.5"),
        ("TRACE_SAMPLE_RATE", "lots"),
        ("ENABLE_TRACING", "maybe"),
        ("OTLP_INSECURE", "2"),
        ("OTLP_ENDPOINT", "ftp://jaeger:4317"),
        ("OTLP_ENDPOINT", "http://jaeger:notaport"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "bar"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-5"),
        ("OTLP_ENDPOINT", "notaurl"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "-1"),
        ("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign"),
        ("LOG_LEVEL", "LOUD"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
    ],
)
def test_bad_value_is_an_error_naming_the_variable(variable: str, value: str) -> None:
    env = {variable: value}
    if variable == "OTEL_TRACES_SAMPLER_ARG":
        env["OTEL_TRACES_SAMPLER"] = "traceidratio"
    with pytest.raises(ObservabilityConfigError) as info:
        load_config("svc", env=env)
    assert info.value.variable == variable
    assert variable in str(info.value) and value in str(info.value)
