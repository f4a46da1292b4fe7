"""The OTLP log records the services send, as a collector's protobuf classes read them."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as service
from opentelemetry.proto.common.v1 import common_pb2 as common
from opentelemetry.proto.logs.v1 import logs_pb2 as pb
from opentelemetry.proto.resource.v1 import resource_pb2

from backend.infra.observability._signals import _LINE_FIELDS, encode_logs

RESOURCE = {"service.name": "execution", "service.version": "1.0.0", "empty": ""}
SCOPE = ("backend.infra.observability", "1.2.3")


def _value(value: Any) -> common.AnyValue:
    if isinstance(value, bool):
        return common.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common.AnyValue(int_value=value)
    if isinstance(value, float):
        return common.AnyValue(double_value=value)
    return common.AnyValue(string_value=str(value))


def _pairs(attributes: dict[str, Any]) -> list[common.KeyValue]:
    return [
        common.KeyValue(key=k, value=_value(v))
        for k, v in attributes.items()
        if v is not None and v != ""
    ]


def expected(
    records: list[tuple[int, int, str, dict[str, Any]]],
) -> service.ExportLogsServiceRequest:
    """What the records mean, built with the protobuf classes field by field."""
    out = []
    for time_ns, _levelno, levelname, fields in records:
        attributes = {k: v for k, v in fields.items() if k not in _LINE_FIELDS}
        exception = fields.get("exception")
        if exception:
            attributes.update({f"exception.{k}": exception.get(k) for k in ("type", "message")})
            attributes["exception.stacktrace"] = exception.get("stacktrace")
        record = pb.LogRecord(
            time_unix_nano=time_ns,
            observed_time_unix_nano=time_ns,
            severity_number={"INFO": 9, "WARNING": 13, "ERROR": 17}[levelname],  # type: ignore[arg-type]
            severity_text=levelname,
            body=common.AnyValue(string_value=fields["message"]),
            attributes=_pairs(attributes),
        )
        if fields.get("trace_id"):
            record.trace_id = bytes.fromhex(fields["trace_id"])
            record.span_id = bytes.fromhex(fields["span_id"])
            record.flags = int(fields["trace_flags"], 16)
        out.append(record)
    return service.ExportLogsServiceRequest(
        resource_logs=[
            pb.ResourceLogs(
                resource=resource_pb2.Resource(attributes=_pairs(RESOURCE)),
                scope_logs=[
                    pb.ScopeLogs(
                        scope=common.InstrumentationScope(name=SCOPE[0], version=SCOPE[1]),
                        log_records=out,
                    )
                ],
            )
        ]
    )


def test_records_read_back_as_the_protobuf_classes_build_them() -> None:
    long_text = "x" * 300  # past the one-byte length prefixes
    records = [
        (
            1_796_440_707_389_759_278,
            20,
            "INFO",
            {
                "time": "2026-12-05T03:02:35.895Z",
                "level": "INFO",
                "logger": "microservices.execution",
                "message": "order placed",
                "service.name": "execution",
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                "span_id": "b7ad6b7169203331",
                "trace_flags": "01",
                "client_order_id": "qt-3f2a-1",
                "quantity": "0.1",
                "attempt": 3,
                "negative": -7,
                "ratio": 0.25,
                "retried": False,
                "reason": None,
                "detail": "",
                "note": long_text,
                "unicode": "prix: 12 €",
            },
        ),
        (
            5,
            40,
            "ERROR",
            {
                "logger": "app",
                "message": "order failed " + long_text,
                "trace_id": None,
                "exception": {"type": "ValueError", "message": "bad", "stacktrace": "Trace…"},
            },
        ),
        (6, 30, "WARNING", {"logger": "app", "message": "", "trace_id": None}),
    ]
    payload = encode_logs(records, RESOURCE, SCOPE)
    assert service.ExportLogsServiceRequest.FromString(payload) == expected(records)


def test_lists_are_array_values() -> None:
    payload = encode_logs(
        [(1, 20, "INFO", {"logger": "app", "message": "m", "ids": ["a", "b"]})], {}, SCOPE
    )
    (record,) = (
        service.ExportLogsServiceRequest.FromString(payload)
        .resource_logs[0]
        .scope_logs[0]
        .log_records
    )
    (ids,) = (kv for kv in record.attributes if kv.key == "ids")
    assert [v.string_value for v in ids.value.array_value.values] == ["a", "b"]
