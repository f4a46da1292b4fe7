"""The installation's secrets: generated once, kept 0600, reused, overridable, never the default."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from backend.trading.approval import DEVELOPMENT_SECRET
from quantum_trader.local_secrets import SecretsError, load_or_create


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_first_load_generates_both_secrets_in_a_file_only_its_owner_can_read(
    tmp_path: Path,
) -> None:
    secrets = load_or_create(tmp_path / "var", environ={})
    assert secrets.created
    assert secrets.path == tmp_path / "var" / "secrets.env"
    assert mode_of(secrets.path) == 0o600
    assert len(secrets.api_token) >= 43 and len(secrets.approval_secret) >= 43
    assert secrets.api_token != secrets.approval_secret
    assert secrets.approval_secret != DEVELOPMENT_SECRET
    assert secrets.environment() == {
        "QT_API_TOKEN": secrets.api_token,
        "RISK_APPROVAL_SECRET": secrets.approval_secret,
    }
    assert list(tmp_path.joinpath("var").iterdir()) == [secrets.path], "no partial file left"


def test_a_later_load_reuses_the_same_secrets_and_does_not_show_the_token(
    tmp_path: Path,
) -> None:
    first = load_or_create(tmp_path, environ={})
    second = load_or_create(tmp_path, environ={})
    assert (second.api_token, second.approval_secret) == (first.api_token, first.approval_secret)
    assert not second.created
    assert first.api_token in first.describe()
    assert str(first.path) in first.describe()
    assert first.api_token not in second.describe()
    assert str(second.path) in second.describe()
    assert first.approval_secret not in first.describe() + second.describe()


def test_each_installation_gets_secrets_of_its_own(tmp_path: Path) -> None:
    one = load_or_create(tmp_path / "one", environ={})
    other = load_or_create(tmp_path / "other", environ={})
    assert one.api_token != other.api_token
    assert one.approval_secret != other.approval_secret


def test_an_explicit_environment_variable_wins_over_the_file(tmp_path: Path) -> None:
    stored = load_or_create(tmp_path, environ={})
    secrets = load_or_create(tmp_path, environ={"QT_API_TOKEN": "  mine  "})
    assert secrets.api_token == "mine"
    assert secrets.approval_secret == stored.approval_secret
    assert "from QT_API_TOKEN" in secrets.describe()
    assert "mine" not in secrets.describe()


def test_the_public_development_secret_is_refused_even_when_set_explicitly(
    tmp_path: Path,
) -> None:
    with pytest.raises(SecretsError, match="public development default"):
        load_or_create(tmp_path, environ={"RISK_APPROVAL_SECRET": DEVELOPMENT_SECRET})


def test_a_file_readable_by_others_is_made_private_again(tmp_path: Path) -> None:
    secrets = load_or_create(tmp_path, environ={})
    secrets.path.chmod(0o644)
    again = load_or_create(tmp_path, environ={})
    assert again.api_token == secrets.api_token
    assert mode_of(secrets.path) == 0o600


def test_a_file_missing_a_secret_is_an_error_naming_it_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("QT_API_TOKEN=abc\n")
    with pytest.raises(SecretsError, match="RISK_APPROVAL_SECRET") as caught:
        load_or_create(tmp_path, environ={})
    assert str(path) in str(caught.value)
    assert path.read_text() == "QT_API_TOKEN=abc\n", "an existing file is never overwritten"
