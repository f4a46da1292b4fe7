"""A short soak of the whole system (`bench/soak.py`): memory, descriptors and stream lengths
stay bounded and the books reconcile. `make soak` runs the long one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import Sample, Thresholds, slope_per_min, verdict
from tests.support.procs import ROOT
from tests.test_run import INHERITED_NOT, free_offset


def test_slope_and_verdict_flag_growth_only_in_the_second_half() -> None:
    assert slope_per_min([(0, 0), (60, 10), (120, 20)]) == 10.0
    # Warm-up in the first half, flat afterwards: bounded.
    flat = [
        Sample(t * 10.0, {"execution": 100.0 if t > 3 else 50.0 + t}, {}, {}, {}) for t in range(8)
    ]
    assert verdict(flat, Thresholds()) == []
    # A stream that grows 60 entries a second is not.
    growing = [Sample(t * 10.0, {}, {}, {"events:market.tick": 600 * t}, {}) for t in range(8)]
    assert verdict(growing, Thresholds()) == [
        "stream events:market.tick: +3600.0 entries/min (limit 600)"
    ]


@pytest.mark.timeout(330)
def test_short_soak_is_bounded_and_reconciles(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_NOT}
    out = tmp_path / "soak.json"
    # Warm-up growth of a fresh Python process is steep in the first minute; the long run
    # (`make soak`) holds the default thresholds, this one checks the streams strictly.
    command = [
        sys.executable,
        "-m",
        "bench.soak",
        "--seconds",
        "60",
        "--interval",
        "3",
        "--feed-hz",
        "20",
        "--orders-per-s",
        "2",
        "--port-offset",
        str(free_offset()),
        "--var-dir",
        str(tmp_path / "var"),
        "--max-rss-mb-per-min",
        "40",
        "--max-fds-per-min",
        "20",
        "--json",
        str(out),
    ]
    soak = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = soak.communicate(timeout=300)
    finally:
        if soak.poll() is None:
            # SIGTERM: the soak stops the launcher (and so every service) and its Redis.
            soak.terminate()
            soak.communicate(timeout=90)
    text = output.decode(errors="replace")
    assert soak.returncode == 0, text[-6000:]
    result = json.loads(out.read_text())
    books = result["reconciliation"]
    assert books["ok"] and books["fills"] == books["ledger_rows"] > 0
    assert books["load_accepted"] > 0 and books["load_accepted_not_persisted"] == 0
    ticks = [s["streams"].get("events:market.tick", 0) for s in result["samples"]]
    # 3 symbols at 20 Hz add 60 ticks a second; trimmed, the stream stays far below 60 s of them.
    assert max(ticks) < 60 * 20, ticks
    assert result["unbounded"] == []
