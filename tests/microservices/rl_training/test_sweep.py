"""rl-training sweeps without Ray: a grid times seeds in one job, progress per trial, the best on
validation evaluated on the held-out window and registered; bad sweeps are refused."""

from __future__ import annotations

from typing import Any

import pytest

from microservices.rl_training.service import create_service
from tests.support.inprocess import ServiceHarness
from tests.support.polling import wait_until

TINY = {"bars": 800, "total_steps": 512, "population": 4, "elite": 1, "episode_steps": 64}
SWEEP = {**TINY, "sweep": {"seeds": [3, 4], "grid": {"window": [4, 8]}}}


def succeeded_trials(metrics: str) -> float:
    """`rl_sweep_trials_total{status="succeeded"}` (the registry is the process's: a delta)."""
    for line in metrics.splitlines():
        if line.startswith('rl_sweep_trials_total{status="succeeded"} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def follow(client: Any, job_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The finished job, and every distinct progress seen on the way."""
    seen: list[dict[str, Any]] = []

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["progress"] and (not seen or seen[-1] != job["progress"]):
            seen.append(job["progress"])
        return job if job["status"] not in ("queued", "running") else None

    return wait_until(done, 90.0, f"job {job_id} to finish", 0.02), seen


def test_a_sweep_trains_every_trial_and_registers_the_best_on_validation(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with harness.run(create_service) as client:
        before = succeeded_trials(client.get("/metrics").text)
        queued = client.post("/jobs", json=SWEEP)
        assert queued.status_code == 202, queued.text
        job, seen = follow(client, queued.json()["id"])
        again, _ = follow(client, client.post("/jobs", json=SWEEP).json()["id"])
        policies = client.get("/policies").json()["data"]
        metrics = client.get("/metrics").text

    assert job["status"] == "succeeded", job["error"]
    sweep = job["result"]["sweep"]
    assert sweep["backend"] == "in-process" and sweep["trials"] == 4
    trials = sweep["trial_results"]
    assert [(t["window"], t["seed"]) for t in trials] == [(4, 3), (4, 4), (8, 3), (8, 4)]
    best = max(trials, key=lambda t: t["validation_return"])
    assert sweep["best_trial"] == best
    # Progress per trial, the last one complete.
    assert [p["trials_done"] for p in seen][-1] == 4
    assert all(p["trials"] == 4 for p in seen)
    assert seen[-1]["best_validation_return"] == best["validation_return"]
    # The best trial is evaluated on the held-out window and registered with its metrics.
    policy = job["result"]["policy"]
    (row,) = [p for p in policies if p["version"] == policy["version"]]
    assert row["metrics"]["holdout"] == job["result"]["evaluation"]["policy"]
    assert set(row["metrics"]["baselines"]) == {"buy_and_hold", "flat", "momentum"}
    assert row["metrics"]["seed"] == best["seed"]
    # The same sweep picks the same policy.
    assert again["result"]["policy"]["version"] == policy["version"]
    assert again["result"]["policy"]["new"] is False
    assert succeeded_trials(metrics) - before == 8


def test_a_sweep_beyond_the_limits_or_of_invalid_trials_is_refused(
    harness: ServiceHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RL_MAX_SWEEP_TRIALS", "3")
    with harness.run(create_service) as client:
        too_many = client.post("/jobs", json=SWEEP)
        assert too_many.status_code == 422 and "RL_MAX_SWEEP_TRIALS" in too_many.text
        bad_grid = client.post("/jobs", json={**TINY, "sweep": {"grid": {"elite": [1, 9]}}})
        assert bad_grid.status_code == 422 and "not a valid job" in bad_grid.text
        unknown = client.post("/jobs", json={**TINY, "sweep": {"grid": {"seed": [1]}}})
        assert unknown.status_code == 422 and "cannot vary seed" in unknown.text
        assert client.get("/jobs").json()["count"] == 0


def test_a_sweep_can_be_canceled(harness: ServiceHarness) -> None:
    big = {"total_steps": 2_000_000, "sweep": {"seeds": [1, 2]}}
    with harness.run(create_service) as client:
        job = client.post("/jobs", json=big).json()
        wait_until(
            lambda: client.get(f"/jobs/{job['id']}").json()["status"] == "running",
            30.0,
            "the sweep to start",
        )
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
        done, _ = follow(client, job["id"])
        assert done["status"] == "canceled" and "canceled after 0 of 2 trials" in done["error"]
        assert client.get("/policies").json()["count"] == 0


def test_one_champion_at_a_time_on_either_database(harness_database: ServiceHarness) -> None:
    runs = [{**TINY, "seed": seed} for seed in (5, 6)]
    with harness_database.run(create_service) as client:
        a, b = (follow(client, client.post("/jobs", json=r).json()["id"])[0] for r in runs)
        va, vb = (job["result"]["policy"]["version"] for job in (a, b))
        assert client.post(f"/policies/{va}/promote").json()["status"] == "champion"
        assert client.post(f"/policies/{vb}/promote").json()["status"] == "champion"
        assert client.post(f"/policies/{vb}/promote").json()["status"] == "champion"
        statuses = {p["version"]: p["status"] for p in client.get("/policies").json()["data"]}
        assert statuses == {va: "candidate", vb: "champion"}
        champion = client.get("/policies/champion").json()
        assert champion["version"] == vb
        assert champion["artifact_sha256"] == b["result"]["policy"]["artifact_sha256"]
