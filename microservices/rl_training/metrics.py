"""rl-training's metrics (Prometheus default registry): jobs, progress, steps and results."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("rl_jobs_total", "Training jobs finished, by final status.", ["status"])
JOBS_RUNNING = Gauge("rl_jobs_running", "Training jobs running now.")
PROGRESS = Gauge(
    "rl_job_progress_ratio", "Share of its generations the latest-reporting job has done (0-1)."
)
GENERATIONS = Counter("rl_generations_total", "CEM generations trained.")
ENV_STEPS = Counter("rl_env_steps_total", "Environment steps taken in training.")
BEST_RETURN = Gauge("rl_generation_best_return", "Best episode log-return of the last generation.")
DURATION = Histogram(
    "rl_job_duration_seconds",
    "Wall time of a training job, training and evaluation.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
HOLDOUT_RETURN = Gauge(
    "rl_policy_holdout_return",
    "Held-out return of the latest registered policy, and baselines.",
    ["policy"],
)
POLICIES = Counter("rl_policies_registered_total", "Policies registered (new versions only).")
JOB_TASK_FAILURES = Counter(
    "rl_job_task_failures_total",
    "Job tasks that failed outside the training itself (e.g. the database was unreachable).",
)
SWEEP_TRIALS = Counter(
    "rl_sweep_trials_total", "Trials of sweep jobs finished, by outcome.", ["status"]
)
