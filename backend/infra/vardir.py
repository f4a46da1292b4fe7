"""Where local state lives by default: one absolute directory, whatever the working directory.

`RUN_VAR_DIR` when set (made absolute against the working directory once, at start-up);
otherwise the `var/` directory of the source checkout this code runs from; otherwise (an
installed package) `$XDG_STATE_HOME/quantum-trader` (`~/.local/state/quantum-trader`). The
embedded SQLite files (`<service>.db`) and the embedded Redis (`redis/`) go there, so a
service started from another directory still finds its state instead of silently opening an
empty database.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

VARIABLE = "RUN_VAR_DIR"
_CHECKOUT = Path(__file__).resolve().parents[2]


def var_directory(environ: Mapping[str, str] | None = None) -> Path:
    """The absolute var directory (not created here)."""
    env = os.environ if environ is None else environ
    configured = env.get(VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "backend").is_dir():
        return _CHECKOUT / "var"
    state = env.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(state).expanduser().resolve() / "quantum-trader"
