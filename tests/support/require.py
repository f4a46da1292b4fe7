"""The rule for tests that need a real server: skip with the reason, or fail where required."""

from __future__ import annotations

import os

import pytest


def require_service(available: bool, reason: str) -> None:
    """Skip (printing why) when a real server is unreachable; fail instead on CI.

    `.ci/run` sets QT_REQUIRE_SERVICES=1 so CI cannot pass by skipping.
    """
    if available:
        return
    if os.environ.get("QT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)
