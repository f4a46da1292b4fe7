"""Event bus test fixtures; Redis, the prefix, settings and clients come from the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]
