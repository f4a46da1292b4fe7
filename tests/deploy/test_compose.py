"""compose.yaml parses, pins its images, mounts files that exist, and keeps secrets out of git."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from backend.infra.service import BUILT_SERVICES

from .conftest import DEPLOY, ROOT, load_yaml, require_tool

PINNED = re.compile(r"^[\w./-]+:(v?\d+(\.\d+){1,2}[\w.-]*)(@sha256:[0-9a-f]{64})?$")
OBSERVABILITY = {"otel-collector", "tempo", "prometheus", "loki", "alloy", "grafana"}


def compose() -> dict[str, Any]:
    return load_yaml("compose.yaml")  # type: ignore[no-any-return]


def dclint(path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("dclint", "npm install -g dclint@3.1.0")
    return subprocess.run(
        [tool, "--no-color", "-c", str(DEPLOY / "dclint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_passes_the_compose_schema_and_dclint() -> None:
    result = dclint(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dclint_rejects_what_the_compose_schema_forbids(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["redis"]["restart_policy"] = "always"  # not a Compose key
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = dclint(path)
    assert result.returncode != 0
    assert "invalid-schema" in result.stdout, result.stdout


def test_every_image_is_pinned_to_an_exact_version() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        assert PINNED.match(image), f"{name}: {image} is not pinned to an exact version"
        assert not image.endswith(":latest")


def test_every_bind_mounted_file_exists() -> None:
    checked = 0
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")) and not source.startswith("/var/run/"):
                path = (DEPLOY / source).resolve()
                assert path.exists(), f"{name} mounts {source}, which does not exist"
                checked += 1
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    assert checked >= 8


def test_the_stack_has_the_services_their_dependencies_and_the_observability_back_ends() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "migrate"} | OBSERVABILITY | {
        s.name for s in BUILT_SERVICES
    } == set(services)
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes", "Redis keeps the streams on disk"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in [s.name for s in BUILT_SERVICES] + ["migrate"]:
        app = services[name]
        assert app["read_only"] is True
        assert app["cap_drop"] == ["ALL"]
        assert app["security_opt"] == ["no-new-privileges:true"]
    for spec in BUILT_SERVICES:
        app = services[spec.name]
        assert app["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert app["environment"]["OTLP_ENDPOINT"] == "http://otel-collector:4317"
        assert app["labels"]["io.quantum-trader.logs"] == "json", "Alloy ships its stdout"


def test_risk_safety_keeps_its_state_journal_on_a_named_volume_not_on_tmpfs() -> None:
    """tmpfs is emptied each time the container stops: a halt the database refused would be
    gone after the restart the `restart` policy gives a crashed risk-safety."""
    stack = compose()
    app = stack["services"]["risk-safety"]
    journal = app["environment"]["RISK_STATE_JOURNAL"]
    mounts = dict(reversed(v.split(":", 1)) for v in app["volumes"])
    (directory,) = [d for d in mounts if journal.startswith(d + "/")]
    assert mounts[directory] in stack["volumes"], "a named volume, declared at the top level"
    assert not [t for t in app["tmpfs"] if journal.startswith(t.rstrip("/") + "/")]
    # A new named volume takes the image directory's owner: the service's user.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"install -d -o (\d+) -g \1 .*{re.escape(directory)}\n", dockerfile)


def test_secrets_come_from_git_ignored_files_that_make_secrets_writes(tmp_path: Path) -> None:
    stack = compose()
    text = (DEPLOY / "compose.yaml").read_text()
    for word in ("QT_API_TOKEN", "RISK_APPROVAL_SECRET", "POSTGRES_PASSWORD:", "DATABASE_URL"):
        assert word not in text, f"{word} is set in compose.yaml instead of a secret file"
    env_files = {f for s in stack["services"].values() for f in s.get("env_file", [])}
    secret_files = {s["file"] for s in stack["secrets"].values()}
    assert env_files == {"secrets.env"}
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(env_files | secret_files)],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert sorted(ignored) == sorted(env_files | secret_files), "secret files must be git-ignored"

    # make-secrets.sh writes exactly what compose reads, with the variables the services need.
    copy = tmp_path / "deploy"
    copy.mkdir()
    shutil.copy(DEPLOY / "make-secrets.sh", copy)
    subprocess.run(["bash", str(copy / "make-secrets.sh")], check=True, capture_output=True)
    for path in env_files | secret_files:
        assert (copy / path).is_file(), path
        assert (copy / path).stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    env = dict(
        line.split("=", 1) for line in (copy / "secrets.env").read_text().splitlines() if line
    )
    assert set(env) == {"QT_API_TOKEN", "RISK_APPROVAL_SECRET", "DATABASE_URL"}
    password = (copy / "secrets" / "postgres-password").read_text()
    assert env["DATABASE_URL"] == f"postgresql+asyncpg://trader:{password}@postgres:5432/trader"
    assert len(env["QT_API_TOKEN"]) >= 32
    # A second run refuses to overwrite (rotation is deliberate: --force).
    again = subprocess.run(
        ["bash", str(copy / "make-secrets.sh")], capture_output=True, check=False
    )
    assert again.returncode != 0


def test_the_example_env_file_names_the_same_variables() -> None:
    example = (DEPLOY / "secrets.env.example").read_text()
    names = {
        line.split("=", 1)[0] for line in example.splitlines() if "=" in line and line[0] != "#"
    }
    assert names == {"QT_API_TOKEN", "RISK_APPROVAL_SECRET", "DATABASE_URL"}


def test_grafana_mounts_the_provisioning_and_dashboards_it_points_at() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml("grafana/provisioning/dashboards/dashboards.yaml")["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


def test_the_image_is_built_from_the_repository_root_with_its_dockerignore() -> None:
    migrate = compose()["services"]["migrate"]["build"]
    assert (DEPLOY / migrate["context"]).resolve() == ROOT
    assert (ROOT / ".dockerignore").is_file()
