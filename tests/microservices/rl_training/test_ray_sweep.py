"""The Ray path (issue 10, acceptance test 3): a sweep of four trials on a local Ray instance
(`RAY_ADDRESS=local`, 2 CPUs), followed through the same job API, registers the best policy;
it picks what the same sweep picks in-process. Skipped, with the reason, without the `ray`
extra (CI installs it)."""

from __future__ import annotations

import importlib.util
import threading

import pytest

from backend.trading.venue import VenueConfig
from microservices.contracts.rl_training import JobCreate
from microservices.rl_training.service import create_service
from microservices.rl_training.sweep import sweep_in_process
from tests.microservices.rl_training.test_sweep import SWEEP, follow, succeeded_trials
from tests.support.inprocess import ServiceHarness

if importlib.util.find_spec("ray") is None:
    pytest.skip(
        "ray is not installed: pip install -e '.[ray]' (.ci/run installs it)",
        allow_module_level=True,
    )


@pytest.mark.timeout(300)  # a cold Ray start is slow on a loaded 2-core machine
def test_a_sweep_on_a_local_ray_instance_reports_progress_and_registers_the_best(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setenv("RL_RAY_NUM_CPUS", "2")
    with harness.run(create_service, timeout_s=60.0) as client:
        before = succeeded_trials(client.get("/metrics").text)
        queued = client.post("/jobs", json=SWEEP)
        assert queued.status_code == 202, queued.text
        job, seen = follow(client, queued.json()["id"])
        policies = client.get("/policies").json()["data"]
        metrics = client.get("/metrics").text

    assert job["status"] == "succeeded", job["error"]
    sweep = job["result"]["sweep"]
    assert sweep["backend"] == "ray"
    assert sweep["trials"] == 4 and sweep["trials_failed"] == 0
    assert len(sweep["trial_results"]) == 4
    # Progress through the job API: trials done of the total, and the best so far.
    assert seen and seen[-1]["trials_done"] == 4 and seen[-1]["fraction"] == 1.0
    done = [p["trials_done"] for p in seen]
    assert done == sorted(done)
    assert seen[-1]["best_trial"] == sweep["best_trial"]
    # The best registered, with its metrics.
    policy = job["result"]["policy"]
    assert policy["new"] is True
    (row,) = [p for p in policies if p["version"] == policy["version"]]
    assert row["metrics"]["holdout"] == job["result"]["evaluation"]["policy"]
    assert succeeded_trials(metrics) - before == 4

    # Trials are pure functions of their request: Ray picks what the service alone picks.
    local = sweep_in_process(
        JobCreate.model_validate(SWEEP), VenueConfig(), lambda _p: None, threading.Event()
    )
    assert local.best is not None
    assert sweep["best_trial"] == local.best.summary()
    assert [t["validation_return"] for t in sweep["trial_results"]] == [
        r.validation["return"] for r in sorted(local.results, key=lambda r: r.index)
    ]
