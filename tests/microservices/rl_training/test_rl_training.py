"""rl-training (issue 10, acceptance test 3): a job trains in the background, reports its
progress, is evaluated against the baselines and registers a policy; the same seed gives the
same policy, byte for byte."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from backend.infra.db import (
    DatabaseSettings,
    create_engine,
    create_session_factory,
    migrate,
    session_scope,
)
from backend.infra.db.models import TrainingJob
from microservices.rl_training.service import create_service
from tests.acceptance.harness import base_env, http, json_lines, service
from tests.support.inprocess import ServiceHarness
from tests.support.otlp import OtlpReceiver
from tests.support.polling import wait_until

# Small enough to train in well under a second: 3 generations of 4 episodes of 128 steps.
SMALL_JOB = {
    "bars": 1_200,
    "total_steps": 1_536,
    "population": 4,
    "elite": 1,
    "episode_steps": 128,
}
BASELINES = {"buy_and_hold", "flat", "momentum"}
FIGURES = {"return", "sharpe", "max_drawdown", "turnover"}


def finished(client: Any, job_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    return wait_until(done, 60.0, f"job {job_id} to finish")


def test_a_job_trains_reports_progress_evaluates_and_registers_the_same_policy_for_a_seed(
    redis_url: str, tmp_path: Path
) -> None:
    with OtlpReceiver() as otlp:
        env = base_env(redis_url, otlp.http_endpoint)
        with service("rl-training", tmp_path, env) as (proc, url):
            client = httpx.Client(base_url=url, headers=http.headers, timeout=5.0)
            queued = client.post("/jobs", json={**SMALL_JOB, "seed": 11})
            assert queued.status_code == 202, queued.text
            first = finished(client, queued.json()["id"])
            again = finished(
                client, client.post("/jobs", json={**SMALL_JOB, "seed": 11}).json()["id"]
            )
            other = finished(
                client, client.post("/jobs", json={**SMALL_JOB, "seed": 12}).json()["id"]
            )
            policies = client.get("/policies").json()
            artifact = client.get(f"/policies/{first['result']['policy']['version']}/artifact")
            metrics = client.get("/metrics").text
            spans = otlp.wait_for(lambda s: sum(x.name == "training" for x in s) >= 3)

            def job_logged() -> list[str] | None:
                # INFO lines are written by the log sink's thread, within 200 ms.
                messages = [line["message"] for line in json_lines(proc)]
                return messages if "training job succeeded" in messages else None

            log = wait_until(job_logged, 5, "the job's log line")

    assert first["status"] == "succeeded", first["error"]
    progress = first["progress"]
    assert progress["generation"] == progress["generations"] == 3
    assert progress["env_steps"] >= SMALL_JOB["total_steps"] and progress["fraction"] == 1.0

    evaluation = first["result"]["evaluation"]
    assert set(evaluation["baselines"]) == BASELINES
    assert set(evaluation["policy"]) == FIGURES
    assert all(set(b) == FIGURES for b in evaluation["baselines"].values())
    flat = evaluation["baselines"]["flat"]
    assert flat["return"] == flat["turnover"] == flat["max_drawdown"] == 0.0
    assert evaluation["baselines"]["buy_and_hold"]["turnover"] > 0.9

    # Registered once, as a candidate, with its metrics; the same seed is the same policy.
    policy = first["result"]["policy"]
    assert policy["new"] is True and policy["status"] == "candidate"
    assert again["result"]["policy"]["artifact_sha256"] == policy["artifact_sha256"]
    assert again["result"]["policy"]["version"] == policy["version"]
    assert again["result"]["policy"]["new"] is False
    assert other["result"]["policy"]["artifact_sha256"] != policy["artifact_sha256"]
    assert [p["version"] for p in policies["data"]] == [
        policy["version"],
        other["result"]["policy"]["version"],
    ]
    (row,) = [p for p in policies["data"] if p["version"] == policy["version"]]
    assert row["artifact_sha256"] == policy["artifact_sha256"]
    assert row["metrics"]["holdout"] == evaluation["policy"]
    assert row["job_id"] == first["id"]
    assert artifact.status_code == 200
    assert artifact.json()["artifact"]["training"]["seed"] == 11

    # Progress as a metric and as span events, one per generation.
    assert "rl_generations_total 9.0" in metrics
    assert "rl_job_progress_ratio 1.0" in metrics
    assert 'rl_jobs_total{status="succeeded"} 3.0' in metrics
    assert "rl_policies_registered_total 2.0" in metrics
    (training, *_) = [s for s in spans if s.name == "training"]
    generations = [attrs for name, attrs in training.events if name == "generation"]
    assert [g["generation"] for g in generations] == [1, 2, 3]
    assert {s.name for s in spans} >= {"training", "evaluation", "policy.register"}
    (evaluation_span,) = [
        s for s in spans if s.name == "evaluation" and s.parent_span_id == training.span_id
    ]
    assert evaluation_span.trace_id == training.trace_id
    assert "training job succeeded" in log


def test_a_long_job_can_be_canceled_while_the_service_keeps_answering(
    harness: ServiceHarness,
) -> None:
    with harness.run(create_service) as client:
        job = client.post("/jobs", json={"total_steps": 2_000_000, "seed": 1}).json()
        wait_until(
            lambda: (client.get(f"/jobs/{job['id']}").json()["progress"] or {}).get("generation"),
            30.0,
            "a first generation",
        )
        # Training runs off the event loop: the service answers while it trains.
        assert client.get("/health/ready").status_code == 200
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
        done = finished(client, job["id"])
        assert done["status"] == "canceled" and done["result"] is None
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
        assert client.get("/jobs/999").status_code == 404
        assert client.get("/policies").json()["count"] == 0


def test_jobs_need_the_token_and_a_valid_request(harness: ServiceHarness) -> None:
    with harness.run(create_service) as client:
        stranger = client.post("/jobs", json={}, headers={"Authorization": "Bearer wrong"})
        assert stranger.status_code == 403
        wrong = {"Authorization": "Bearer wrong"}
        assert client.post("/policies/rl-x/promote", headers=wrong).status_code == 403
        assert client.get("/policies/champion").status_code == 404
        assert client.post("/jobs", json={"symbol": "DOGEUSDT"}).status_code == 422
        assert client.post("/jobs", json={"population": 4, "elite": 4}).status_code == 422
        assert client.get("/jobs").json()["count"] == 0
        client.headers.pop("Authorization")
        assert client.post("/jobs", json={}).status_code == 401
        assert client.get("/jobs").json()["count"] == 0


def test_a_job_left_open_by_a_stopped_process_is_marked_failed_at_the_next_start(
    harness: ServiceHarness,
) -> None:
    async def leave_open() -> None:
        await migrate(harness.database_url)
        engine = create_engine(DatabaseSettings(url=harness.database_url))
        try:
            async with session_scope(create_session_factory(engine)) as session:
                session.add(TrainingJob(algorithm="cem-linear", status="running", config={}))
        finally:
            await engine.dispose()

    asyncio.run(leave_open())
    with harness.run(create_service) as client:
        (job,) = client.get("/jobs").json()["data"]
        assert job["status"] == "failed" and "interrupted" in job["error"]
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
