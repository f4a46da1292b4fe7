"""Fixtures of the deployment tests: the deploy/ tree, its renderer, and external validators."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

__all__ = ["DEPLOY", "ROOT", "load_yaml", "render_module", "require_tool"]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def require_tool(name: str, install_hint: str) -> str:
    """The path of the executable `name`; skip (saying how to get it) when it is missing.

    On CI (CI=true, or QT_REQUIRE_SERVICES=1 as .ci/run sets) a missing validator fails the
    test instead: a check that did not run must not pass.
    """
    # Validators from PyPI (the dev extra) sit beside the interpreter, on PATH or not.
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is not None:
        return path
    reason = f"{name} is not installed ({install_hint})"
    if os.environ.get("CI") == "true" or os.environ.get("QT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required validator missing: {reason}")
    pytest.skip(reason)


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text())


def render_module() -> ModuleType:
    """deploy/render.py as a module (it is a script, not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: its dataclasses resolve their module by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def render() -> ModuleType:
    return render_module()
