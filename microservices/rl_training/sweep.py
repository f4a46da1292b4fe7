"""Sweeps: many trainings in one job (a hyperparameter grid times seeds), on the Ray cluster
`RAY_ADDRESS` names through Ray Tune, or one after another in this process without it.

Each trial trains on the training window less its latest `validation_fraction` and is scored on
that slice; only the best trial's policy is evaluated on the held-out window (so the held-out
figures are not the ones it was picked by) and registered. A trial is a pure function of its
request, so the same sweep picks the same policy wherever its trials ran.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import numpy as np

from backend.trading.rlenv import TradingEnv, split_window
from backend.trading.rlpolicy import LinearPolicy, bars_per_year, evaluate, train_cem
from backend.trading.venue import VenueConfig
from microservices.contracts.rl_training import JobCreate

from .data import job_configs, job_windows

LOCAL = "local"
INSTALL_HINT = "the Ray path needs the ray extra: pip install 'quantum-trader[ray]'"


class SweepCanceled(Exception):
    """The job was canceled while its trials ran."""


class RayUnavailable(RuntimeError):
    """`RAY_ADDRESS` is set but ray is not installed, or the cluster cannot be reached."""


def import_ray() -> ModuleType:
    """ray itself, imported here only (it is an optional extra and slow to import)."""
    try:
        import ray
        import ray.tune
    except ImportError as exc:
        raise RayUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    module: ModuleType = ray  # typed whether or not ray (untyped when absent) is installed
    return module


@dataclass(frozen=True, slots=True)
class TrialResult:
    """One trained trial: its request, validation figures and the policy's parameters."""

    index: int
    request: dict[str, Any]
    validation: dict[str, float]
    weights: list[list[float]]
    bias: list[float]
    generations: int
    env_steps: int

    def as_metrics(self) -> dict[str, Any]:
        """As a Tune result: flat numbers, the rest as JSON text."""
        return {
            "index": self.index,
            "validation_return": self.validation["return"],
            "validation_sharpe": self.validation["sharpe"],
            "generations": self.generations,
            "trial_env_steps": self.env_steps,
            "trial": json.dumps(
                {
                    "request": self.request,
                    "validation": self.validation,
                    "weights": self.weights,
                    "bias": self.bias,
                }
            ),
        }

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> TrialResult:
        body = json.loads(metrics["trial"])
        return cls(
            int(metrics["index"]),
            body["request"],
            body["validation"],
            body["weights"],
            body["bias"],
            int(metrics["generations"]),
            int(metrics["trial_env_steps"]),
        )

    def policy(self) -> LinearPolicy:
        return LinearPolicy(np.array(self.weights), np.array(self.bias))

    def summary(self) -> dict[str, Any]:
        keys = ("seed", "population", "elite", "episode_steps", "window", "total_steps")
        return {
            "trial": self.index,
            **{k: self.request[k] for k in keys},
            "validation_return": self.validation["return"],
        }


def run_trial(
    index: int,
    request: JobCreate,
    validation_fraction: float,
    venue: VenueConfig,
    keep_going: Callable[[], bool] = lambda: True,
) -> TrialResult:
    """Train one configuration and score it on the validation slice (blocking)."""
    train_quotes, _holdout = job_windows(request)
    fit, validation = split_window(train_quotes, validation_fraction)
    env_config, cem = job_configs(request)
    policy, history = train_cem(
        TradingEnv(fit, env_config, venue),
        cem,
        seed=request.seed,
        on_progress=lambda _p: keep_going(),
    )
    scored = evaluate(
        TradingEnv(validation, env_config, venue),
        policy.act,
        bars_per_year=bars_per_year(validation),
    ).as_dict()
    last = history[-1]
    return TrialResult(
        index,
        request.model_dump(exclude={"sweep"}),
        scored,
        policy.weights.tolist(),
        policy.bias.tolist(),
        last.generations,
        last.env_steps,
    )


@dataclass
class SweepProgress:
    """Where a sweep stands: trials finished (and failed) of all, and the best so far."""

    trials: int
    done: int = 0
    failed: int = 0
    best: TrialResult | None = None
    env_steps: int = 0
    results: list[TrialResult] = field(default_factory=list)

    def add(self, result: TrialResult) -> None:
        self.done += 1
        self.env_steps += result.env_steps
        self.results.append(result)
        if self.best is None or _better(result, self.best):
            self.best = result

    def add_failure(self) -> None:
        self.done += 1
        self.failed += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "trials_done": self.done,
            "trials_failed": self.failed,
            "env_steps": self.env_steps,
            "best_validation_return": None if self.best is None else self.best.validation["return"],
            "best_trial": None if self.best is None else self.best.summary(),
            "fraction": self.done / self.trials,
        }


def _better(a: TrialResult, b: TrialResult) -> bool:
    """Higher validation return; on a tie the earlier trial, so the pick is deterministic."""
    ra, rb = a.validation["return"], b.validation["return"]
    if math.isclose(ra, rb, rel_tol=0.0, abs_tol=1e-15):
        return a.index < b.index
    return ra > rb


OnTrial = Callable[[SweepProgress], None]


def sweep_in_process(
    request: JobCreate, venue: VenueConfig, on_trial: OnTrial, cancel: threading.Event
) -> SweepProgress:
    """Every trial, one after another in this thread."""
    assert request.sweep is not None
    trials = request.trial_configs()
    progress = SweepProgress(len(trials))
    for index, trial in enumerate(trials):
        if cancel.is_set():
            raise SweepCanceled(f"canceled after {progress.done} of {progress.trials} trials")
        try:
            result = run_trial(
                index,
                trial,
                request.sweep.validation_fraction,
                venue,
                lambda: not cancel.is_set(),
            )
        except Exception:
            if cancel.is_set():
                raise SweepCanceled(
                    f"canceled after {progress.done} of {progress.trials} trials"
                ) from None
            progress.add_failure()
        else:
            progress.add(result)
        on_trial(progress)
    return progress


# Ray Tune -----------------------------------------------------------------------------------


def _tune_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: one trial on a Ray worker, reported once."""
    from ray import tune

    index = config["index"]
    request = JobCreate.model_validate(config["requests"][index])
    result = run_trial(index, request, config["validation_fraction"], VenueConfig())
    tune.report(result.as_metrics())


def cluster_runtime_env() -> dict[str, Any]:
    """What a trial needs on a cluster's stock Ray image: this code (uploaded by Ray from this
    process) and the distribution's own dependencies, installed by Ray once per cluster."""
    import backend
    import microservices

    requirements = [r for r in (metadata.requires("quantum-trader") or []) if "extra ==" not in r]
    return {"py_modules": [backend, microservices], "pip": requirements}


class RayCluster:
    """The Ray cluster of `RAY_ADDRESS`, joined on the first sweep; `local` starts a private
    one in this process with `num_cpus` CPUs."""

    def __init__(self, address: str, num_cpus: int) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self._lock = threading.Lock()
        self._joined = False

    def connect(self) -> ModuleType:
        ray = import_ray()
        with self._lock:
            if not ray.is_initialized():
                try:
                    if self.address == LOCAL:
                        ray.init(
                            num_cpus=self.num_cpus,
                            include_dashboard=False,
                            log_to_driver=False,
                            configure_logging=False,
                        )
                    else:
                        ray.init(
                            address=self.address,
                            log_to_driver=False,
                            runtime_env=cluster_runtime_env(),
                        )
                except Exception as exc:  # ray raises several kinds; all mean "no cluster"
                    raise RayUnavailable(
                        f"cannot join the Ray cluster at RAY_ADDRESS={self.address}: {exc}"
                    ) from exc
                self._joined = True
        return ray

    def shutdown(self) -> None:
        with self._lock:
            if self._joined:
                import ray

                ray.shutdown()
                self._joined = False

    def sweep(
        self,
        request: JobCreate,
        job_id: int,
        on_trial: OnTrial,
        cancel: threading.Event,
    ) -> SweepProgress:
        """Every trial as a Tune trial on the cluster; blocks until all have finished.

        Tune's driver runs here, or on the cluster under Ray Client (`ray://`), so finished
        trials and the cancel flag travel through a small actor, never through this process's
        memory: the same code follows a sweep in both cases."""
        assert request.sweep is not None
        ray = self.connect()
        from ray import tune

        trials = request.trial_configs()
        progress = SweepProgress(len(trials))
        monitor = ray.remote(num_cpus=0)(SweepMonitor).remote()
        callback, stopper = _tune_hooks(tune, monitor)
        space = {
            "index": tune.grid_search(list(range(len(trials)))),
            "requests": [t.model_dump(exclude={"sweep"}) for t in trials],
            "validation_fraction": request.sweep.validation_fraction,
        }
        failure: list[BaseException] = []

        def fit() -> None:
            try:
                with tempfile.TemporaryDirectory(prefix=f"rl-sweep-{job_id}-") as storage:
                    tune.Tuner(
                        tune.with_resources(_tune_trial, {"cpu": 1}),
                        param_space=space,
                        tune_config=tune.TuneConfig(metric="validation_return", mode="max"),
                        run_config=tune.RunConfig(
                            name=f"rl-job-{job_id}",
                            storage_path=storage,
                            callbacks=[callback],
                            stop=stopper,
                            verbose=0,
                        ),
                    ).fit()
            except BaseException as exc:  # re-raised in the job's thread below
                failure.append(exc)

        driver = threading.Thread(target=fit, name=f"rl-sweep-{job_id}", daemon=True)
        driver.start()
        canceled_sent = False
        while True:
            driver.join(POLL_S)
            if cancel.is_set() and not canceled_sent:
                monitor.cancel.remote()
                canceled_sent = True
            results, failures = ray.get(monitor.drain.remote())
            for metrics in results:
                progress.add(TrialResult.from_metrics(metrics))
            for _ in range(failures):
                progress.add_failure()
            if results or failures:
                on_trial(progress)
            if not driver.is_alive():
                break
        ray.kill(monitor)
        if cancel.is_set():
            raise SweepCanceled(f"canceled after {progress.done} of {progress.trials} trials")
        if failure:
            raise failure[0]
        return progress


POLL_S = 0.25


class SweepMonitor:
    """Run as a Ray actor: finished trials and failures since the last drain, and the cancel
    flag the stopper reads."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.failures = 0
        self.canceled = False

    def finished(self, metrics: dict[str, Any]) -> None:
        self.results.append(metrics)

    def failed(self) -> None:
        self.failures += 1

    def cancel(self) -> None:
        self.canceled = True

    def is_canceled(self) -> bool:
        return self.canceled

    def drain(self) -> tuple[list[dict[str, Any]], int]:
        drained = (self.results, self.failures)
        self.results, self.failures = [], 0
        return drained


def _tune_hooks(tune: ModuleType, monitor: Any) -> tuple[Any, Any]:
    """A Tune callback that sends each finished trial to the monitor, and a stopper that ends
    the sweep once the monitor is canceled."""
    import ray

    class Report(tune.Callback):  # type: ignore[name-defined,misc]
        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **_: Any) -> None:
            if trial.last_result and "trial" in trial.last_result:
                keys = ("index", "validation_return", "validation_sharpe", "generations")
                metrics = {k: trial.last_result[k] for k in (*keys, "trial_env_steps", "trial")}
                monitor.finished.remote(metrics)
            else:
                monitor.failed.remote()

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **_: Any) -> None:
            monitor.failed.remote()

    class Canceled(tune.Stopper):  # type: ignore[name-defined,misc]
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return bool(ray.get(monitor.is_canceled.remote()))

        def stop_all(self) -> bool:
            return bool(ray.get(monitor.is_canceled.remote()))

    return Report(), Canceled()
