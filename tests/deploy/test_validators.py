"""A validator that is missing skips the check on a user's machine and fails it on CI."""

from __future__ import annotations

import pytest

from .conftest import require_tool


def test_a_missing_validator_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("QT_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="promtool is not installed"):
        require_tool("promtool", "apt-get install prometheus")


@pytest.mark.parametrize(("variable", "value"), [("CI", "true"), ("QT_REQUIRE_SERVICES", "1")])
def test_a_missing_validator_fails_on_ci(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("QT_REQUIRE_SERVICES", raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(pytest.fail.Exception, match="required validator missing"):
        require_tool("promtool", "apt-get install prometheus")
