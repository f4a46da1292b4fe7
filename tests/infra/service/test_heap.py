"""A served process freezes its start-up heap (see backend/infra/service/_heap.py)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from backend.infra.service import freeze_startup_heap
from tests.acceptance.harness import base_env, service


def test_a_served_service_freezes_what_it_holds_at_start_up(redis_url: str, tmp_path: Path) -> None:
    with service("risk-safety", tmp_path, base_env(redis_url, None)):
        pass
    lines = [json.loads(line) for line in (tmp_path / "logs" / "risk-safety.log").open()]
    (frozen,) = [line for line in lines if line.get("message") == "start-up heap frozen"]
    # The modules, models and routes of a service: far more than a bare interpreter's.
    assert frozen["objects"] > 50_000, frozen


def test_the_freeze_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_FREEZE_AFTER_START", "false")
    before = gc.get_freeze_count()
    assert freeze_startup_heap() == 0
    assert gc.get_freeze_count() == before
