"""Screenshots kept as test artifacts (the `artifacts` fixture's folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
