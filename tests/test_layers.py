"""The layers import only downwards: read from the source, so a new import that breaks one fails.

The domain (`backend/trading`) imports no infrastructure; the event bus imports no domain
module; a service imports another service's contract (`microservices/contracts`), never its
package; the contracts import no service.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(package: str) -> Iterator[tuple[Path, str]]:
    """(file, imported module) for every absolute import under `package` (a path from ROOT)."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path, module in imports(package)
        if module.startswith(forbidden)
    ]


def test_the_domain_imports_no_infrastructure_and_no_service() -> None:
    assert offenders("backend/trading", ("backend.infra", "microservices", "fastapi")) == []


def test_the_event_bus_imports_no_domain_module() -> None:
    assert offenders("backend/infra/eventbus", ("backend.trading", "microservices")) == []


def test_services_meet_only_through_their_contracts() -> None:
    services = [p.name for p in (ROOT / "microservices").iterdir() if (p / "main.py").exists()]
    found = []
    for name in services:
        others = tuple(f"microservices.{other}" for other in services if other != name)
        found += offenders(f"microservices/{name}", others)
    found += offenders("microservices/contracts", tuple(f"microservices.{s}" for s in services))
    assert found == []
