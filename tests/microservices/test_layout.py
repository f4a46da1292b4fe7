"""Every service package has the same shape, so a new service copies one obvious pattern."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backend.infra.service import BUILT_SERVICES, ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PY_MAX_LINES = 40

# Which module alone may import what: SQL in store.py, Prometheus in metrics.py, routes in api.py.
OWNERS = {
    "sqlalchemy": "store.py",
    "prometheus_client": "metrics.py",
    "fastapi.APIRouter": "api.py",
}


def package_dir(spec: ServiceSpec) -> Path:
    return ROOT / "microservices" / spec.package


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imports_of(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SPECS = pytest.mark.parametrize("spec", BUILT_SERVICES, ids=lambda s: s.name)


@SPECS
def test_every_package_has_the_common_modules_each_saying_what_it_is_for(spec: ServiceSpec) -> None:
    modules = {p.name for p in package_dir(spec).glob("*.py")}
    assert {"__init__.py", "main.py", "service.py", "settings.py", "metrics.py"} <= modules
    if spec.kind == "http":
        assert "api.py" in modules
    for name in sorted(modules):
        assert ast.get_docstring(parsed(package_dir(spec) / name)), f"{spec.package}/{name}"


@SPECS
def test_service_py_only_assembles(spec: ServiceSpec) -> None:
    path = package_dir(spec) / "service.py"
    assert len(path.read_text().splitlines()) <= SERVICE_PY_MAX_LINES
    tree = parsed(path)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert [f.name for f in functions] == ["create_service"]
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)]
    nested = [
        n.name
        for n in ast.walk(functions[0])
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n is not functions[0]
    ]
    assert nested == [], f"routes or hooks defined inside create_service: {nested}"


@SPECS
def test_sql_prometheus_and_routes_each_live_in_one_module(spec: ServiceSpec) -> None:
    for path in sorted(package_dir(spec).glob("*.py")):
        imported = imports_of(parsed(path))
        for name, owner in OWNERS.items():
            if name in imported:
                assert path.name == owner, f"{spec.package}/{path.name} imports {name}"


@SPECS
def test_settings_are_named_after_the_service(spec: ServiceSpec) -> None:
    expected = "".join(part.capitalize() for part in spec.name.split("-")) + "Settings"
    classes = [
        n.name
        for n in parsed(package_dir(spec) / "settings.py").body
        if isinstance(n, ast.ClassDef)
    ]
    assert classes == [expected]


@SPECS
def test_routes_reach_the_core_object_by_type_not_by_a_string_key(spec: ServiceSpec) -> None:
    for path in sorted(package_dir(spec).glob("*.py")):
        assert "extras[" not in path.read_text(), f"{spec.package}/{path.name}"
