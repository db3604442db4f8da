"""Running a search: the driver owns sampling and storage; executors only evaluate policies.

Two executors share everything but the loop:

* ``ray`` — Ray Tune runs trials in worker processes across the cluster's CPUs/GPUs. An
  ``OptunaSearch`` subclass turns sampled params into policies on the driver and records each
  result (constraint, applied policy, timings) before ``tell``; errors and NaN become FAIL.
* ``local`` — Optuna's ask/tell loop in this process, no Ray.

Both call :func:`autoprune.objective.evaluate_policy` and :func:`autoprune.study.finish_trial`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.objective import Metrics, ObjectiveConfig
from autoprune.policy import Policy
from autoprune.space import SearchSpace, SpaceContext

Log = Any


def make_sampler(name: str, seed: int, trials: int, concurrent: bool) -> Any:
    """An Optuna multi-objective sampler; all honour ``trial.set_constraint`` feasibility."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            constant_liar=concurrent,
            n_startup_trials=min(10, max(3, trials // 3)),
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=min(50, max(4, trials // 3))
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"--sampler '{name}' is unknown; allowed: tpe, nsga2, gp, random")


def metrics_to_result(metrics: Metrics) -> dict[str, Any]:
    """What a trial reports: flat numbers, plus the applied policy and timings as JSON strings."""
    return {
        "val_accuracy": metrics.val_accuracy,
        "macs_ratio": metrics.macs_ratio,
        "params_ratio": metrics.params_ratio,
        "macs": metrics.macs,
        "params": metrics.params,
        "val_loss": metrics.val_loss,
        "policy_json": json.dumps(metrics.policy.to_dict()),
        "timings_json": json.dumps(metrics.timings),
        "counters_json": json.dumps(metrics.counters),
    }


def decode_result(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if not result:
        return result
    out = dict(result)
    for key in ("policy", "timings", "counters"):
        raw = out.pop(f"{key}_json", None)
        if raw is not None:
            out[key] = json.loads(raw)
    return out


def evaluate_safely(objective: ObjectiveConfig, policy_dict: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a policy; a user-caused problem (e.g. unreachable target) is reported, not raised."""
    from autoprune.objective import evaluate_policy

    try:
        return metrics_to_result(evaluate_policy(objective, Policy.from_dict(policy_dict)))
    except UserError as exc:
        return {"error": str(exc)}


# --------------------------------------------------------------------------- progress


class Progress:
    """A live line: finished/total trials, best feasible accuracy, elapsed, ETA."""

    def __init__(
        self, total: int, done: int, budget: float, concurrency: int, quiet: bool = False
    ) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.total, self.start_done, self.budget, self.concurrency = (
            total,
            done,
            budget,
            concurrency,
        )
        self.started = time.perf_counter()
        self.best: float | None = None
        self.failed = 0
        self.console = Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=quiet,
            transient=False,
        )
        self.task = self.bar.add_task("search", total=total, completed=done, status="", eta="?")

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def update(self, done: int, result: dict[str, Any] | None, state: str) -> None:
        if state == "FAIL":
            self.failed += 1
        elif result and result.get("macs_ratio", 2.0) <= self.budget:
            acc = float(result["val_accuracy"])
            self.best = acc if self.best is None else max(self.best, acc)
        new = done - self.start_done
        elapsed = time.perf_counter() - self.started
        remaining = self.total - done
        eta = (
            f"{elapsed / new * remaining:.0f}s"
            if new > 0 and remaining > 0
            else ("0s" if remaining <= 0 else "?")
        )
        best = f"{self.best:.4f}" if self.best is not None else "-"
        status = f"best feasible val acc {best}" + (
            f"  failed {self.failed}" if self.failed else ""
        )
        self.bar.update(self.task, completed=done, status=status, eta=eta)


# --------------------------------------------------------------------------- driver


@dataclass
class SearchOutcome:
    study_name: str
    storage: str
    new_trials: int
    complete: int
    export_dir: Path | None


def resolve_base(config: SearchConfig, log: Log) -> Any:
    """The base checkpoint: given, or the cached embedded default (trained on first use)."""
    from autoprune.base import DEFAULT_DATASET, DEFAULT_MODEL, ensure_default_base, load_base

    if config.base_checkpoint:
        base = load_base(config.base_checkpoint)
        if base.spec.name != config.model and config.model != DEFAULT_MODEL:
            raise UserError(
                f"--model {config.model} does not match the base checkpoint's model {base.spec.name}: drop --model or fix it"
            )
        return base
    if (config.model, config.dataset) == (DEFAULT_MODEL, DEFAULT_DATASET):
        return ensure_default_base(config.model, config.dataset, log=log)
    from autoprune.base import default_base_path

    cached = default_base_path(config.model, config.dataset)
    if cached.is_file():
        return load_base(cached)
    raise UserError(
        f"no base checkpoint for {config.model} on {config.dataset}: pass --base-checkpoint PATH, or train one with "
        f"`autoprune train --model {config.model} --dataset {config.dataset} --epochs N` (it is cached at {cached})"
    )


def search(
    config: SearchConfig, log: Log = print, quiet: bool = False, export: bool = True
) -> SearchOutcome:
    """Run (or continue) a search until the study has ``config.trials`` COMPLETE trials.

    Every input is validated before the storage is touched, so a bad command changes nothing.
    """
    from autoprune import study as studies
    from autoprune.base import studies_dir
    from autoprune.data import canonical_name

    config.validate()
    config = replace(config, dataset=canonical_name(config.dataset))
    space = SearchSpace.load(config.space)
    space.check_budget(config.budget_flops)
    sampler = make_sampler(config.sampler, config.seed, config.trials, config.max_concurrent > 1)
    storage = studies.open_storage(config.storage)
    base = resolve_base(config, log)
    config = replace(config, model=base.spec.name, base_checkpoint=str(Path(base.path).resolve()))
    if config.data_root:
        config = replace(config, data_root=str(Path(config.data_root).resolve()))
    name = studies.study_name_for(config)
    study = studies.create_or_load(storage, name, config, sampler)
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        # A sampler restarted with the seed it began with would draw the very parameters of
        # the study's first trials again (all of them for `random`, the start-up ones for the
        # others), and a second driver of a shared study would copy the first. Offsetting the
        # seed by the trials already stored keeps runs reproducible and new draws new.
        study.sampler = make_sampler(
            config.sampler, config.seed + existing, config.trials, config.max_concurrent > 1
        )
    studies.save_config(study, config)
    studies.recover_stale_trials(study, log)
    ctx = _space_context(space, base, config, log)
    objective = ObjectiveConfig(
        base_checkpoint=config.base_checkpoint or "",
        dataset=config.dataset,
        data_root=config.data_root,
        device=config.device,
        threads=max(1, int(config.cpus_per_trial)),
        max_rate=space.max_rate,
        calibration_images=config.calibration_images,
        score_cache=str((studies_dir() / "cache" / "scores").resolve()),
    )
    done = studies.complete_count(study)
    missing = config.trials - done
    log(
        f"study '{name}' in {config.storage or studies.default_storage_url()}: {done} complete, running {max(missing, 0)} more"
    )
    if missing > 0:
        with Progress(
            config.trials, done, config.budget_flops, config.max_concurrent, quiet=quiet
        ) as progress:
            if config.executor == "local":
                _run_local(study, space, ctx, objective, config, missing, progress)
            else:
                _run_ray(study, space, ctx, objective, config, missing, progress, log)
    complete = studies.complete_count(study)
    export_dir = None
    if export:
        export_dir = Path("policies") / name
        studies.export_front(study, export_dir)
    return SearchOutcome(
        name, config.storage or studies.default_storage_url(), max(missing, 0), complete, export_dir
    )


def _space_context(space: SearchSpace, base: Any, config: SearchConfig, log: Log) -> SpaceContext:
    from autoprune.space import build_context

    ranking: dict[str, list[str]] = {}
    if space.max_blocks_per_stage > 0:
        ranking = block_ranking(base, config)
    return build_context(base, config.budget_flops, config.seed, ranking)


def block_ranking(base: Any, config: SearchConfig) -> dict[str, list[str]]:
    """Removable residual blocks per stage, lowest discriminative score (PLS-VIP) first."""
    from autoprune import depth
    from autoprune.criteria import Calibration
    from autoprune.objective import _cached_splits

    splits = _cached_splits(config.dataset, config.data_root, False)
    calibration = Calibration(
        splits.calibration, splits.name, num_images=config.calibration_images, seed=config.seed
    )
    rows = depth.block_scores(base.build(), calibration.batches(), num_classes=splits.num_classes)
    ranking: dict[str, list[str]] = {}
    for row in sorted((r for r in rows if r.removable), key=lambda r: r.score):
        ranking.setdefault(row.name.rpartition(".")[0] or "model", []).append(row.name)
    return ranking


def _run_local(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    objective: ObjectiveConfig,
    config: SearchConfig,
    missing: int,
    progress: Progress,
) -> None:
    from autoprune import study as studies

    # Thread count: evaluate_policy applies ``objective.threads`` at the start of every trial.
    for _ in range(missing):
        if studies.complete_count(study) >= config.trials:
            break  # other drivers of a shared study finished the rest
        trial = study.ask()
        studies.mark_driver(trial)
        space.sample(trial, ctx)
        policy = space.to_policy(trial.params, ctx)
        error = None
        try:
            result = decode_result(evaluate_safely(objective, policy.to_dict()))
        except Exception as exc:  # a bug or a resource problem: recorded, the search goes on
            result, error = None, f"{type(exc).__name__}: {exc}"
        state = studies.finish_trial(study, trial, result, config.budget_flops, error)
        progress.update(studies.complete_count(study), result, state.name)


def _trainable(config: dict[str, Any], objective: ObjectiveConfig) -> None:
    from ray import tune

    tune.report(evaluate_safely(objective, config["policy"]))


def _run_ray(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    objective: ObjectiveConfig,
    config: SearchConfig,
    missing: int,
    progress: Progress,
    log: Log,
) -> None:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault(
        "RAY_AIR_NEW_OUTPUT", "0"
    )  # with verbose=0: no Tune tables, our progress line only
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(config.max_concurrent))
    import ray
    from ray import tune
    from ray.tune import FailureConfig, RunConfig
    from ray.tune.search import ConcurrencyLimiter

    from autoprune.base import studies_dir

    started_here = not ray.is_initialized()
    if started_here:
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, math.ceil(config.cpus_per_trial)),
                num_gpus=None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
            )
    try:
        searcher = ConcurrencyLimiter(
            _policy_searcher(study, space, ctx, config, progress),
            max_concurrent=config.max_concurrent,
        )
        resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable, objective=objective), resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=missing, reuse_actors=True
            ),
            run_config=RunConfig(
                name=study.study_name,
                storage_path=str((studies_dir() / "ray").resolve()),
                verbose=0,
                failure_config=FailureConfig(max_failures=0),
                log_to_file=True,
            ),
        )
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()


def _policy_searcher(
    study: Any, space: SearchSpace, ctx: SpaceContext, config: SearchConfig, progress: Progress
) -> Any:
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    from autoprune import study as studies

    class PolicySearch(OptunaSearch):
        """OptunaSearch that hands workers a policy and records results the autoprune way."""

        _progress: Progress | None = None

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles the searcher for experiment restore; the Optuna DB is our record, so
            # the live progress display (terminal locks) is simply left out of that snapshot.
            state = dict(self.__dict__)
            state.pop("_progress", None)
            return state

        def save(self, checkpoint_path: str) -> None:
            """No Tune-side snapshot: the Optuna study in SQL is the search's record and resume point."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: ``autoprune resume`` reloads the study from SQL."""

        # Ray documents Searcher.FINISHED (a str) as a valid answer but types suggest as dict | None.
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            assert self._ot_study is not None
            if studies.complete_count(self._ot_study) >= config.trials:
                return Searcher.FINISHED  # other drivers of a shared study finished the rest
            if super().suggest(trial_id) is None:
                return None
            ot_trial = self._ot_trials[trial_id]
            studies.mark_driver(ot_trial)
            return {
                "policy": space.to_policy(ot_trial.params, ctx).to_dict(),
                "trial_number": ot_trial.number,
            }

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            decoded = decode_result(result)
            reason = (
                "the trial raised an exception in its worker (see the Ray logs under studies/ray)"
                if error
                else None
            )
            assert self._ot_study is not None
            state = studies.finish_trial(
                self._ot_study, self._ot_trials[trial_id], decoded, config.budget_flops, reason
            )
            self._completed_trials.add(trial_id)
            if self._progress is not None:
                self._progress.update(studies.complete_count(self._ot_study), decoded, state.name)

    searcher = PolicySearch(
        space=lambda trial: space.sample(trial, ctx),
        metric=list(studies.METRIC_NAMES),
        mode=["max", "min"],
        sampler=study.sampler,
        seed=config.seed,
        study_name=study.study_name,
        storage=study._storage,
    )
    searcher._progress = progress
    return searcher
