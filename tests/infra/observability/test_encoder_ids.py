"""Id-valued attributes (a new value on every span) once their key's cache budget is spent."""

from __future__ import annotations

from backend.infra.observability import _export, get_tracer
from backend.infra.observability._export import encode_spans

from .test_encoder import _as_reference_writes_it

# Values the id path must leave to the general one: something to scrub or a blank in them,
# a separator the pattern rejects, non-ASCII text, or too long for a one-byte length.
NOT_IDS = ["a=b", "k: v", "x y", "user@host", "why?", "tab\there", "\x1cfs", "é-1", "9" * 130]


def test_ids_past_the_budget_skip_the_tables_and_encode_as_the_reference(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("encoder-id-keys")
    budget = _export._Caches.VALUES_PER_KEY
    for n in range(budget + 40):
        with tracer.start_as_current_span("send", attributes={"message.id": f"{17 * n}-{n % 3}"}):
            pass
    spans = list(span_exporter.get_finished_spans())
    ours = encode_spans(spans)
    assert ours == _as_reference_writes_it(spans, ours)
    assert "message.id" in _export._CACHES.id_keys
    assert len(_export._CACHES.pairs[0x4A]["message.id"]) == budget
    # Encoded again, now by the id path: the same bytes.
    assert encode_spans(spans) == ours


def test_the_id_path_writes_what_the_general_path_writes_or_declines() -> None:
    caches = _export._CACHES.current()
    key_field = _export._str_field(0x0A, "message.id")
    for value in ["1733312345678-0", "05ff7989668d4fd5a7139f2e16196d5e", "", *NOT_IDS]:
        fast = _export._id_pair(0x4A, key_field, value)
        if value in NOT_IDS:
            assert fast is None, value
        else:
            assert fast == _export._pair(0x4A, "message.id", value, caches), value


def test_a_secret_key_never_takes_the_id_path(span_exporter) -> None:  # type: ignore[no-untyped-def]
    tracer = get_tracer("encoder-id-secrets")
    for n in range(_export._Caches.VALUES_PER_KEY + 20):
        with tracer.start_as_current_span("call", attributes={"app.api_token": f"tok{n}x"}):
            pass
    payload = encode_spans(list(span_exporter.get_finished_spans()))
    assert b"tok270x" not in payload
    assert "app.api_token" not in _export._CACHES.id_keys
