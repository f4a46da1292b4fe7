"""The installation's own secrets for `quantum-trader run`: an API token and an approval secret.

They are generated once, the first time the system is run from a var directory, and kept in
`<var>/secrets.env` (mode 0600, `NAME=value` lines). Every later run reads the same file, so
a token a user copied keeps working and approvals signed before a restart still verify. An
explicit `QT_API_TOKEN` or `RISK_APPROVAL_SECRET` in the environment wins over the file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backend.trading.approval import DEVELOPMENT_SECRET

TOKEN_VARIABLE = "QT_API_TOKEN"
SECRET_VARIABLE = "RISK_APPROVAL_SECRET"
FILE_NAME = "secrets.env"
_VARIABLES = (TOKEN_VARIABLE, SECRET_VARIABLE)


class SecretsError(Exception):
    """The secrets file cannot be read or written, or a secret is unusable."""


@dataclass(frozen=True)
class LocalSecrets:
    """The secrets every child process is given, and where they came from."""

    api_token: str
    approval_secret: str
    path: Path
    # True only on the run that wrote the file: the one run that shows the token.
    created: bool
    # The variables whose value came from the environment instead of the file.
    from_environment: frozenset[str] = frozenset()

    def environment(self) -> dict[str, str]:
        """What a child process needs: `QT_API_TOKEN` and `RISK_APPROVAL_SECRET`."""
        return {TOKEN_VARIABLE: self.api_token, SECRET_VARIABLE: self.approval_secret}

    def describe(self) -> str:
        """Lines for the terminal: the token on the run that creates it, else only its place."""
        if TOKEN_VARIABLE in self.from_environment:
            token = f"  API token: from {TOKEN_VARIABLE}"
        elif self.created:
            token = (
                f"  API token: {self.api_token}\n"
                f"    generated for this installation and kept in {self.path} (mode 0600);\n"
                "    it is shown this once: later runs read it from there"
            )
        else:
            token = f"  API token: in {self.path} ({TOKEN_VARIABLE})"
        source = "from the environment" if SECRET_VARIABLE in self.from_environment else "kept"
        where = "" if SECRET_VARIABLE in self.from_environment else f" in {self.path}"
        return f"{token}\n  approval secret: {source}{where} ({SECRET_VARIABLE})"


def load_or_create(var_dir: Path, environ: Mapping[str, str] | None = None) -> LocalSecrets:
    """The secrets of the installation under `var_dir`, generating the file on first use."""
    environ = os.environ if environ is None else environ
    path = var_dir / FILE_NAME
    created = _create(path)
    stored = _read(path)
    overrides = {
        name: environ[name].strip() for name in _VARIABLES if environ.get(name, "").strip()
    }
    values = {**stored, **overrides}
    if values[SECRET_VARIABLE] == DEVELOPMENT_SECRET:
        raise SecretsError(
            f"{SECRET_VARIABLE} is the public development default; unset it to use the "
            f"secret generated in {path}, or set one of your own"
        )
    return LocalSecrets(
        api_token=values[TOKEN_VARIABLE],
        approval_secret=values[SECRET_VARIABLE],
        path=path,
        created=created,
        from_environment=frozenset(overrides),
    )


def _create(path: Path) -> bool:
    """Write a new secrets file unless one exists; True if this call wrote it."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{name}={secrets.token_urlsafe(32)}\n" for name in _VARIABLES)
    # Written in full under a temporary name, then linked into place: a second launcher
    # starting at the same moment either wins the link or reads a complete file.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.link(partial, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise SecretsError(f"cannot write {path}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return True


def _read(path: Path) -> dict[str, str]:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Readable by others: tighten it rather than refuse, the value is still ours.
            path.chmod(0o600)
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SecretsError(f"cannot read {path}: {exc}") from exc
    values: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() in _VARIABLES and value.strip():
            values[name.strip()] = value.strip()
    missing = [name for name in _VARIABLES if name not in values]
    if missing:
        raise SecretsError(
            f"{path} has no {', '.join(missing)}; delete the file to generate new secrets"
        )
    return values
