"""eventbus-bridge as a process: replayed ticks on the bus with one PRODUCER span each, stalls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import redis

from backend.infra.eventbus import EventBusSettings, decode_entry
from backend.trading.marketsim import load_sample_ticks, ticks_to_csv
from tests.acceptance.harness import base_env, json_lines, poll, service
from tests.support.otlp import OtlpReceiver

PRODUCER = 4


def events(url: str, prefix: str, stream: str) -> list[Any]:
    client = redis.Redis.from_url(url)
    try:
        key = EventBusSettings(prefix=prefix).stream_key(stream)
        return [decode_entry(fields, stream=stream) for _id, fields in client.xrange(key)]
    finally:
        client.close()


def test_replay_publishes_the_bundled_file_with_one_producer_span_per_tick(
    redis_url: str, tmp_path: Path
) -> None:
    quotes = sorted(load_sample_ticks(), key=lambda q: q.ts_ms)
    with OtlpReceiver() as otlp:
        env = base_env(redis_url, otlp.http_endpoint) | {
            "FEED_MODE": "replay",
            "FEED_SPEEDUP": "200",
            "FEED_REPLAY_LOOP": "false",
            "FEED_STALL_MS": "300",
        }
        prefix = env["EVENTBUS_PREFIX"]
        with service("eventbus-bridge", tmp_path, env) as (proc, url):
            ticks = poll(
                lambda: (e := events(redis_url, prefix, "market.tick")) and len(e) >= 40 and e,
                20,
                "replayed ticks",
            )
            got = [(t.data.symbol, t.data.last, t.data.ts_ms) for t in ticks[:40]]
            assert got == [(q.symbol, q.last, q.ts_ms) for q in quotes[:40]]
            assert all(t.source == "eventbus-bridge" and t.traceparent for t in ticks)
            poll(lambda: len(events(redis_url, prefix, "market.tick")) == len(quotes), 10, "all")
            # The sentinel: the feed logs that it finished after its last tick, and from then on
            # the stall watch checks nothing. A stall found at any earlier moment was counted in
            # the same step as it was found, so it shows in the metrics by now.
            poll(
                lambda: any(line["message"] == "feed finished" for line in json_lines(proc)),
                10,
                "the replay's end",
            )
            metrics = httpx.get(f"{url}/metrics").text
            assert "feed_stalls_total{" not in metrics, "no stall was ever detected"
            assert events(redis_url, prefix, "feed.stalled") == []
            assert httpx.get(f"{url}/health/ready").status_code == 200, "a finished replay is fine"
            assert 'feed_ticks_published_total{symbol="BTCUSDT"} 150.0' in metrics
            assert "feed_lag_seconds_count" in metrics

        trace_ids = {t.traceparent.split("-")[1] for t in ticks[:40]}
        spans = otlp.wait_for(
            lambda spans: trace_ids <= {s.trace_id for s in spans if s.kind == PRODUCER}
        )
    producers = [s for s in spans if s.trace_id in trace_ids]
    assert len(producers) == 40, "one span per tick, each the root of its own trace"
    assert all(s.kind == PRODUCER and s.parent_span_id == "" for s in producers)
    assert {s.resource["service.name"] for s in producers} == {"eventbus-bridge"}
    assert {s.name for s in producers} == {"send market.tick"}


def test_a_silent_symbol_is_reported_as_a_stall(redis_url: str, tmp_path: Path) -> None:
    quotes = load_sample_ticks()
    first_eth = next(q for q in quotes if q.symbol == "ETHUSDT")
    # ETHUSDT ticks once, BTCUSDT keeps ticking.
    only_btc_after = [first_eth, *(q for q in quotes if q.symbol == "BTCUSDT")]
    csv = tmp_path / "ticks.csv"
    csv.write_text(ticks_to_csv(only_btc_after))
    env = base_env(redis_url, None) | {
        "FEED_MODE": "replay",
        "FEED_CSV": str(csv),
        "FEED_SPEEDUP": "20",
        "FEED_STALL_MS": "1500",
    }
    with service("eventbus-bridge", tmp_path, env) as (proc, url):
        (stall, *_) = poll(
            lambda: events(redis_url, env["EVENTBUS_PREFIX"], "feed.stalled"), 15, "a stall"
        )
        assert stall.data.feed == "market-data" and stall.data.symbol == "ETHUSDT"
        assert stall.data.silent_ms > 1500
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503
        assert "ETHUSDT" in ready.json()["checks"]["feed"]["error"]
        assert 'feed_stalls_total{symbol="ETHUSDT"} 1.0' in httpx.get(f"{url}/metrics").text
        logged = [line for line in json_lines(proc) if line["message"] == "feed stalled"]
        assert logged and logged[0]["symbol"] == "ETHUSDT"
    assert all(
        e.data.symbol == "ETHUSDT"
        for e in events(redis_url, env["EVENTBUS_PREFIX"], "feed.stalled")
    )


def test_a_bad_setting_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.procs import ROOT

    result = subprocess.run(
        [sys.executable, "microservices/eventbus_bridge/main.py"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FEED_RATE_HZ": "fast", "ENABLE_TRACING": "false"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "FEED_RATE_HZ" in result.stderr + result.stdout
