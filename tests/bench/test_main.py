"""`python -m bench`: the benchmarks named, each framed by how fast the machine was."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import bench.__main__ as runner
from bench import _proc


@pytest.fixture
def one_benchmark(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A benchmark `bench.fake` that records the options it was given."""
    calls: list[list[str]] = []
    module = types.ModuleType("bench.fake")

    def main(options: list[str]) -> int:
        calls.append(options)
        print("fake figures")
        return 0

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.fake", module)
    monkeypatch.setattr(runner, "BENCHMARKS", ("bench.fake",))
    monkeypatch.setattr(runner, "NAMES", ("fake",))
    monkeypatch.setattr(_proc, "PROBE_STEPS", 1000)
    monkeypatch.setattr(_proc, "PROBE_ROWS", 100)
    monkeypatch.setattr(_proc, "http_probe_us", lambda: 123.4)
    return calls


def test_each_benchmark_is_framed_by_the_machines_speed_before_and_after(
    one_benchmark: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.main(["fake", "--seconds", "5"]) == 0
    assert one_benchmark == [["--seconds", "5"]]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "== bench.fake =="
    assert lines[1].startswith("machine before: a 1,000-step Python loop took ")
    assert lines[2] == "fake figures"
    assert lines[3].startswith("machine after: a 1,000-step Python loop took ")
    for line in (lines[1], lines[3]):
        assert " s, 100 JSON rows " in line and "load average" in line
        assert ", a bare FastAPI server 123 us of CPU per request, " in line


def test_an_unknown_benchmark_is_named_and_nothing_runs(
    one_benchmark: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.main(["fake", "nosuch"]) == 2
    assert one_benchmark == []
    assert "unknown benchmark nosuch; the benchmarks are: fake" in capsys.readouterr().err


def test_the_share_stolen_by_the_host_is_of_the_busy_ticks_since_the_first_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busy, steal = _proc.cpu_ticks()
    assert busy > 0 and 0 <= steal <= busy  # this machine's /proc/stat
    monkeypatch.setattr(_proc, "PROBE_STEPS", 1000)
    monkeypatch.setattr(_proc, "PROBE_ROWS", 100)
    monkeypatch.setattr(_proc, "http_probe_us", lambda: 123.4)
    monkeypatch.setattr(_proc, "cpu_ticks", lambda: (1000, 50))
    assert _proc.machine_line("after", (600, 10)).endswith(
        ", 10.0 % of the busy time stolen by the host"
    )
    assert "stolen" not in _proc.machine_line("before")


def _http_apps() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"bench.http_app" in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def test_the_http_probe_measures_a_real_server_and_stops_it() -> None:
    before = _http_apps()
    used = _proc.http_probe_us(seconds=0.3, connections=2)
    # A request through uvicorn and FastAPI costs tens to hundreds of microseconds of CPU.
    assert 5 < used < 50_000
    assert _http_apps() <= before
