"""The trainer, rl-training's core object: queues training jobs, runs each in a worker thread
(so the event loop keeps serving), reports its progress per generation, evaluates the policy on
the held-out window against the baselines and registers it as a candidate."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from backend.infra.db import IntegrityViolationError
from backend.infra.observability import BoundLogger
from backend.infra.service import Resources
from backend.trading.rlenv import TradingEnv
from backend.trading.rlpolicy import (
    LinearPolicy,
    Progress,
    TrainingCanceled,
    bars_per_year,
    baselines,
    evaluate,
    policy_artifact,
    train_cem,
)
from backend.trading.types import Quote, Symbol
from backend.trading.venue import VenueConfig
from microservices.contracts.rl_training import JobCreate

from . import metrics
from .data import BAR_MS, job_configs, job_windows
from .settings import RlTrainingSettings
from .store import CANCELED, FAILED, OPEN, SUCCEEDED, TrainingStore
from .sweep import (
    RayCluster,
    RayUnavailable,
    SweepCanceled,
    SweepProgress,
    TrialResult,
    import_ray,
    sweep_in_process,
)

PROGRESS_WRITE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0


class JobRefused(ValueError):
    """A job the service will not run (a symbol the venue does not trade, too many steps)."""


class UnknownJob(LookupError):
    """No job with this id."""


class JobNotCancelable(RuntimeError):
    """The job has finished, or runs in another process."""


@dataclass(frozen=True, slots=True)
class TrainingOutcome:
    """What a finished training produced: the artifact and its held-out evaluation."""

    artifact: dict[str, Any]
    evaluation: dict[str, Any]
    generations: int
    env_steps: int


def train_and_evaluate(
    request: JobCreate, on_progress: Any, tracer: Any, venue: VenueConfig
) -> TrainingOutcome:
    """The whole job, blocking: simulated prices, CEM training, held-out evaluation."""
    train_quotes, holdout = job_windows(request)
    env_config, cem = job_configs(request)
    policy, history = train_cem(
        TradingEnv(train_quotes, env_config, venue), cem, seed=request.seed, on_progress=on_progress
    )
    last = history[-1]
    return evaluate_on_holdout(
        request,
        policy,
        holdout,
        tracer,
        venue,
        generations=last.generations,
        env_steps=last.env_steps,
    )


def evaluate_on_holdout(
    request: JobCreate,
    policy: LinearPolicy,
    holdout: list[Quote],
    tracer: Any,
    venue: VenueConfig,
    *,
    generations: int,
    env_steps: int,
    sweep: dict[str, Any] | None = None,
) -> TrainingOutcome:
    """The policy and the baselines over the held-out window, and the policy's artifact."""
    env_config, cem = job_configs(request)
    with tracer.start_as_current_span("evaluation") as span:
        env = TradingEnv(holdout, env_config, venue)
        per_year = bars_per_year(holdout)
        result = evaluate(env, policy.act, bars_per_year=per_year).as_dict()
        compared = {
            name: evaluate(env, act, bars_per_year=per_year).as_dict()
            for name, act in baselines(env_config).items()
        }
        beaten = sorted(n for n, b in compared.items() if result["return"] > b["return"])
        span.set_attribute("holdout_bars", len(holdout))
        span.set_attribute("policy_return", result["return"])
        span.set_attribute("baselines_beaten", ",".join(beaten))
    training: dict[str, Any] = {
        "algorithm": "cem-linear",
        "seed": request.seed,
        "data": {
            "source": "simulated",
            "symbol": request.symbol,
            "data_seed": request.data_seed,
            "bars": request.bars,
            "bar_ms": BAR_MS,
            "holdout_fraction": request.holdout_fraction,
        },
        "cem": asdict(cem),
        "env": {
            "window": env_config.window,
            "episode_steps": env_config.episode_steps,
            "initial_cash": str(env_config.initial_cash),
            "rebalance_band": env_config.rebalance_band,
        },
        "venue": {
            "taker_fee_bps": str(venue.taker_fee_bps),
            "impact_bps": str(venue.impact_bps),
            "max_slippage_bps": str(venue.max_slippage_bps),
        },
    }
    if sweep is not None:
        training["sweep"] = sweep
    evaluation = {
        "window": {
            "bars": len(holdout),
            "from_ms": holdout[0].ts_ms,
            "to_ms": holdout[-1].ts_ms,
        },
        "policy": result,
        "baselines": compared,
        "beats": beaten,
    }
    return TrainingOutcome(
        policy_artifact(policy, env_config, training=training),
        evaluation,
        generations,
        env_steps,
    )


def evaluate_best(
    request: JobCreate, progress: SweepProgress, tracer: Any, venue: VenueConfig
) -> TrainingOutcome:
    """The sweep's best trial on the held-out window, as a single job's policy would be."""
    best: TrialResult | None = progress.best
    assert request.sweep is not None and best is not None
    trial = JobCreate.model_validate(best.request)
    _, holdout = job_windows(trial)
    return evaluate_on_holdout(
        trial,
        best.policy(),
        holdout,
        tracer,
        venue,
        generations=best.generations,
        env_steps=progress.env_steps,
        sweep={
            "trials": progress.trials,
            "trial": best.index,
            "validation_fraction": request.sweep.validation_fraction,
            "validation": best.validation,
        },
    )


class Trainer:
    """Runs training jobs in worker threads, at most `RL_WORKERS` at a time, and registers
    their policies; a job is canceled between two generations."""

    def __init__(
        self,
        settings: RlTrainingSettings,
        resources: Resources,
        logger: BoundLogger,
        tracer: Any,
        venue: VenueConfig | None = None,
    ) -> None:
        self.settings = settings
        self.store = TrainingStore(resources, settings.policy_name)
        self.log = logger
        self.tracer = tracer
        self.venue = venue or VenueConfig()
        self._slots = asyncio.Semaphore(settings.workers)
        self._cancels: dict[int, threading.Event] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.ray = (
            RayCluster(settings.ray_address, settings.ray_num_cpus)
            if (settings.ray_address)
            else None
        )

    # Lifecycle -------------------------------------------------------------------------------

    async def recover(self, _resources: Resources | None = None) -> None:
        """Start-up: a job left open by a stopped process is marked failed, never resumed."""
        failed = await self.store.fail_interrupted()
        if failed:
            self.log.warning("jobs interrupted by a restart marked failed", job_ids=failed)

    async def stop(self, _resources: Resources | None = None) -> None:
        """Shutdown: cancel every job and wait for the threads to notice."""
        for cancel in self._cancels.values():
            cancel.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        if self.ray is not None:
            await asyncio.to_thread(self.ray.shutdown)

    # Jobs ------------------------------------------------------------------------------------

    async def submit(self, request: JobCreate) -> int:
        """Queue a job; its id. Raises `JobRefused`."""
        if request.total_steps > self.settings.max_total_steps:
            raise JobRefused(
                f"total_steps {request.total_steps} is above RL_MAX_TOTAL_STEPS "
                f"({self.settings.max_total_steps})"
            )
        if self.venue.instruments.get(Symbol(request.symbol)) is None:
            known = ", ".join(self.venue.instruments.symbols)
            raise JobRefused(f"the paper venue does not trade {request.symbol}; it trades {known}")
        if request.sweep is not None:
            self._check_sweep(request)
        row = await self.store.create_job(request.model_dump())
        job_id = row.id
        self._cancels[job_id] = threading.Event()
        task = asyncio.create_task(self._run(job_id, request), name=f"rl-job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda t: self._forget(job_id, t))
        self.log.info("training job queued", job_id=job_id, seed=request.seed)
        return job_id

    def _check_sweep(self, request: JobCreate) -> None:
        assert request.sweep is not None
        trials = request.sweep.trials
        if trials > self.settings.max_sweep_trials:
            raise JobRefused(
                f"the sweep has {trials} trials, above RL_MAX_SWEEP_TRIALS "
                f"({self.settings.max_sweep_trials})"
            )
        try:
            configs = request.trial_configs()
        except ValidationError as exc:
            raise JobRefused(f"a trial of the sweep is not a valid job: {exc}") from exc
        biggest = max(c.total_steps for c in configs)
        if biggest > self.settings.max_total_steps:
            raise JobRefused(
                f"a trial of the sweep asks for total_steps {biggest}, above "
                f"RL_MAX_TOTAL_STEPS ({self.settings.max_total_steps})"
            )
        if self.ray is not None:
            try:
                import_ray()
            except RayUnavailable as exc:
                raise JobRefused(f"RAY_ADDRESS is set but {exc}") from exc

    def _forget(self, job_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._cancels.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            # The job's own failures are recorded by `_train`; this is the bookkeeping around
            # it failing (the database gone mid-job): the row stays open until a restart.
            metrics.JOB_TASK_FAILURES.inc()
            self.log.error("training job task failed", job_id=job_id, error=repr(task.exception()))

    async def cancel(self, job_id: int) -> None:
        """Ask a job to stop after its current generation. Raises `UnknownJob`,
        `JobNotCancelable`."""
        row = await self.store.job(job_id)
        if row is None:
            raise UnknownJob(job_id)
        if row.status not in OPEN:
            raise JobNotCancelable(f"job {job_id} is {row.status}")
        cancel = self._cancels.get(job_id)
        if cancel is None:
            raise JobNotCancelable(f"job {job_id} runs in another process")
        cancel.set()
        self.log.info("training job cancel requested", job_id=job_id)

    async def _run(self, job_id: int, request: JobCreate) -> None:
        cancel = self._cancels[job_id]
        async with self._slots:
            if cancel.is_set():
                await self.store.finish_job(job_id, CANCELED, error="canceled before it started")
                metrics.JOBS.labels(CANCELED).inc()
                return
            if request.sweep is not None:
                await self._sweep(job_id, request, cancel)
            else:
                await self._train(job_id, request, cancel)

    async def _end_unfinished(self, job_id: int, span: Any, kind: str, exc: Exception) -> None:
        """Record a job that did not finish: canceled (on request), or failed (the error kept
        on the row, the span and the log). Called from the `except` that caught `exc`."""
        if isinstance(exc, TrainingCanceled | SweepCanceled):
            span.set_attribute("status", CANCELED)
            await self.store.finish_job(job_id, CANCELED, error=str(exc))
            metrics.JOBS.labels(CANCELED).inc()
            self.log.info(f"{kind} job canceled", job_id=job_id)
            return
        span.record_exception(exc)
        span.set_attribute("status", FAILED)
        await self.store.finish_job(job_id, FAILED, error=f"{type(exc).__name__}: {exc}")
        metrics.JOBS.labels(FAILED).inc()
        self.log.exception(f"{kind} job failed", job_id=job_id)

    async def _train(self, job_id: int, request: JobCreate, cancel: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        with self.tracer.start_as_current_span("training") as span:
            span.set_attribute("job_id", job_id)
            span.set_attribute("algorithm", "cem-linear")
            span.set_attribute("seed", request.seed)
            span.set_attribute("total_steps", request.total_steps)
            span.set_attribute("symbol", request.symbol)
            await self.store.start_job(job_id)
            self.log.info("training job started", job_id=job_id, seed=request.seed)
            steps_seen = [0]

            def on_progress(progress: Progress) -> bool:
                # In the worker thread: metrics and span events are thread-safe; the row is
                # written on the loop, and waited for, so progress rows arrive in order.
                metrics.PROGRESS.set(progress.fraction)
                metrics.GENERATIONS.inc()
                metrics.ENV_STEPS.inc(progress.env_steps - steps_seen[0])
                metrics.BEST_RETURN.set(progress.best_return)
                steps_seen[0] = progress.env_steps
                span.add_event("generation", progress.as_dict())
                write = asyncio.run_coroutine_threadsafe(
                    self.store.update_job(job_id, progress=progress.as_dict()), loop
                )
                try:
                    write.result(PROGRESS_WRITE_TIMEOUT_S)
                except Exception as exc:  # progress is advisory: training goes on without it
                    self.log.warning("progress not stored", job_id=job_id, error=repr(exc))
                return not cancel.is_set()

            metrics.JOBS_RUNNING.inc()
            try:
                outcome = await asyncio.to_thread(
                    train_and_evaluate, request, on_progress, self.tracer, self.venue
                )
            except Exception as exc:  # a failed job is recorded, never takes the service down
                await self._end_unfinished(job_id, span, "training", exc)
                return
            finally:
                metrics.JOBS_RUNNING.dec()
            result = await self._register(job_id, outcome)
            seconds = time.perf_counter() - started
            result["training"] = {
                "generations": outcome.generations,
                "env_steps": outcome.env_steps,
                "seconds": round(seconds, 3),
            }
            await self.store.finish_job(job_id, SUCCEEDED, result=result)
            span.set_attribute("status", SUCCEEDED)
            span.set_attribute("policy_version", result["policy"]["version"])
        metrics.JOBS.labels(SUCCEEDED).inc()
        metrics.DURATION.observe(seconds)
        self.log.info(
            "training job succeeded",
            job_id=job_id,
            policy_version=result["policy"]["version"],
            holdout_return=outcome.evaluation["policy"]["return"],
            beats=outcome.evaluation["beats"],
            seconds=round(seconds, 3),
        )

    async def _sweep(self, job_id: int, request: JobCreate, cancel: threading.Event) -> None:
        assert request.sweep is not None
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        backend = "ray" if self.ray is not None else "in-process"
        with self.tracer.start_as_current_span("sweep") as span:
            span.set_attribute("job_id", job_id)
            span.set_attribute("algorithm", "cem-linear")
            span.set_attribute("backend", backend)
            span.set_attribute("trials", request.sweep.trials)
            span.set_attribute("symbol", request.symbol)
            await self.store.start_job(job_id)
            self.log.info(
                "sweep job started", job_id=job_id, trials=request.sweep.trials, backend=backend
            )
            counted = [0, 0]  # trials done, failed: what the counters have seen

            def on_trial(progress: SweepProgress) -> None:
                # In a worker thread, as `on_progress` of a single job.
                figures = progress.as_dict()
                metrics.PROGRESS.set(figures["fraction"])
                metrics.SWEEP_TRIALS.labels("failed").inc(progress.failed - counted[1])
                metrics.SWEEP_TRIALS.labels("succeeded").inc(
                    (progress.done - progress.failed) - (counted[0] - counted[1])
                )
                counted[:] = [progress.done, progress.failed]
                metrics.ENV_STEPS.inc(max(0, progress.env_steps - steps_seen[0]))
                steps_seen[0] = progress.env_steps
                event = {k: v for k, v in figures.items() if isinstance(v, int | float)}
                if progress.best is not None:
                    event["best_trial"] = progress.best.index
                span.add_event("trial", event)
                write = asyncio.run_coroutine_threadsafe(
                    self.store.update_job(job_id, progress=figures), loop
                )
                try:
                    write.result(PROGRESS_WRITE_TIMEOUT_S)
                except Exception as exc:  # progress is advisory: the sweep goes on without it
                    self.log.warning("progress not stored", job_id=job_id, error=repr(exc))

            steps_seen = [0]
            metrics.JOBS_RUNNING.inc()
            try:
                if self.ray is not None:
                    progress = await asyncio.to_thread(
                        self.ray.sweep, request, job_id, on_trial, cancel
                    )
                else:
                    progress = await asyncio.to_thread(
                        sweep_in_process, request, self.venue, on_trial, cancel
                    )
                if progress.best is None:
                    raise RuntimeError(f"all {progress.trials} trials of the sweep failed")
                outcome = await asyncio.to_thread(
                    evaluate_best, request, progress, self.tracer, self.venue
                )
            except Exception as exc:  # a failed job is recorded, never takes the service down
                await self._end_unfinished(job_id, span, "sweep", exc)
                return
            finally:
                metrics.JOBS_RUNNING.dec()
            best = progress.best
            result = await self._register(job_id, outcome)
            seconds = time.perf_counter() - started
            result["training"] = {
                "trials": progress.trials,
                "env_steps": progress.env_steps,
                "seconds": round(seconds, 3),
            }
            ranked = sorted(progress.results, key=lambda r: r.index)
            result["sweep"] = {
                "backend": backend,
                "trials": progress.trials,
                "trials_failed": progress.failed,
                "validation_fraction": request.sweep.validation_fraction,
                "best_trial": best.summary(),
                "trial_results": [r.summary() for r in ranked],
            }
            await self.store.finish_job(job_id, SUCCEEDED, result=result)
            span.set_attribute("status", SUCCEEDED)
            span.set_attribute("best_trial", best.index)
            span.set_attribute("policy_version", result["policy"]["version"])
        metrics.JOBS.labels(SUCCEEDED).inc()
        metrics.DURATION.observe(seconds)
        self.log.info(
            "sweep job succeeded",
            job_id=job_id,
            backend=backend,
            trials=progress.trials,
            best_trial=best.index,
            policy_version=result["policy"]["version"],
            holdout_return=outcome.evaluation["policy"]["return"],
            seconds=round(seconds, 3),
        )

    async def _register(self, job_id: int, outcome: TrainingOutcome) -> dict[str, Any]:
        artifact = outcome.artifact
        evaluation = outcome.evaluation
        with self.tracer.start_as_current_span("policy.register") as span:
            policy_metrics = {
                "holdout": evaluation["policy"],
                "baselines": evaluation["baselines"],
                "beats": evaluation["beats"],
                "window": evaluation["window"],
                "seed": artifact["training"]["seed"],
            }
            try:
                row, new = await self.store.register_policy(
                    artifact, job_id=job_id, metrics=policy_metrics
                )
            except IntegrityViolationError:
                # Another job registered the same policy at the same moment: that row is it.
                row, new = await self.store.register_policy(
                    artifact, job_id=job_id, metrics=policy_metrics
                )
            span.set_attribute("policy_version", row.version)
            span.set_attribute("artifact_sha256", row.artifact_sha256 or "")
            span.set_attribute("new", new)
        if new:
            metrics.POLICIES.inc()
        metrics.HOLDOUT_RETURN.labels("policy").set(evaluation["policy"]["return"])
        for name, figures in evaluation["baselines"].items():
            metrics.HOLDOUT_RETURN.labels(name).set(figures["return"])
        return {
            "policy": {
                "name": row.name,
                "version": row.version,
                "status": row.status,
                "artifact_sha256": row.artifact_sha256,
                "new": new,
            },
            "evaluation": evaluation,
        }
