"""Scrubbing of span attributes on their way out: secret keys, URLs and free text."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from backend.infra.observability import get_tracer
from backend.infra.observability._export import encode_spans
from backend.infra.observability._redact import Scrubber


def test_exported_span_attributes_are_scrubbed(span_exporter) -> None:  # type: ignore[no-untyped-def]
    with get_tracer("scrub").start_as_current_span("call") as span:
        span.set_attribute("http.request.header.authorization", "Bearer abc.def")
        span.set_attribute("app.api_key", "k-1")
        span.set_attribute("url.full", "https://h/p?X-Amz-Signature=sig1&page=2")
        span.set_attribute("app.note", "retry with token=tok-1 later")
        span.set_attribute("app.count", 3)
    payload = encode_spans(span_exporter.named("call"))
    for secret in (b"abc.def", b"k-1", b"sig1", b"tok-1"):
        assert secret not in payload
    (exported,) = (
        ExportTraceServiceRequest.FromString(payload).resource_spans[0].scope_spans[0].spans
    )
    attributes = {kv.key: kv.value for kv in exported.attributes}
    assert attributes["http.request.header.authorization"].string_value == "REDACTED"
    assert attributes["url.full"].string_value == "https://h/p?X-Amz-Signature=REDACTED&page=2"
    assert attributes["app.note"].string_value == "retry with token=REDACTED later"
    assert attributes["app.count"].int_value == 3


def test_the_default_patterns_match_secrets_and_spare_look_alikes() -> None:
    scrub = Scrubber()
    for key in (
        "password",
        "db_passwd",
        "client_secret",
        "access_token",
        "api-key",
        "apikey",
        "Authorization",
        "cookie",
        "session_id",
        "credentials",
        "private_key",
        "jwt",
        "X-CSRF-Token",
        "sig",
    ):
        assert scrub.is_secret_key(key), key
    for key in ("author", "authors", "design", "signal", "http.route", "messaging.message.id"):
        assert not scrub.is_secret_key(key), key
    assert scrub.text("Authorization: Bearer abc.def") == "Authorization: REDACTED REDACTED"
    assert scrub.url("https://u:pw@h/x?token=1") == "https://u:***@h/x?token=REDACTED"
    assert Scrubber(enabled=False).text("password=x") == "password=x"
