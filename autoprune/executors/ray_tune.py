"""The Ray Tune executor: trials run in Ray worker processes; the driver samples and records.

An ``OptunaSearch`` subclass (:func:`policy_searcher`) turns each sampled set of params into a
bracket of policies on the driver, hands workers only those policies, and records every result
the autoprune way (constraint, applied policy, timings; errors and NaN become FAIL) before
``tell``. The Optuna study in SQL is the search's record: Tune's own snapshots are not used.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.executors.brackets import BracketSource, record
from autoprune.executors.results import decode, evaluate_bracket_for_trial
from autoprune.files import studies_dir
from autoprune.objective import ObjectiveConfig
from autoprune.progress import Progress
from autoprune.space import SearchSpace, SpaceContext


def trainable(config: dict[str, Any], objective: ObjectiveConfig) -> None:
    """What a Ray worker runs for one trial: evaluate the bracket it was handed and report."""
    from ray import tune

    tune.report(evaluate_bracket_for_trial(objective, config["policies"]))


def run_ray(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    objective: ObjectiveConfig,
    config: SearchConfig,
    missing: int,
    progress: Progress,
) -> None:
    """Run up to ``missing`` trials through Ray Tune (starting Ray here unless it already runs)."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # With verbose=0 and the old output engine, Tune prints no tables: our progress line only.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(config.max_concurrent))
    import ray
    from ray import tune
    from ray.tune import FailureConfig, RunConfig
    from ray.tune.search import ConcurrencyLimiter

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
            policy_searcher(study, space, ctx, config, progress),
            max_concurrent=config.max_concurrent,
        )
        resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, objective=objective), resources),
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


def policy_searcher(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    config: SearchConfig,
    progress: Progress | None,
) -> Any:
    """A Ray Tune searcher over ``space`` that records results in ``study`` (see module doc)."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class PolicySearch(OptunaSearch):
        """OptunaSearch that hands workers a policy and records results the autoprune way.

        Ray keeps its Optuna study (``_ot_study``) and the map from Tune trial ids to Optuna
        trials (``_ot_trials``) in private attributes with no accessors; a subclass that
        records results itself has to read them, and this class is the one place that does.
        """

        def __init__(self, progress: Progress | None, **kwargs: Any) -> None:
            # ``progress`` is passed in, not read from the enclosing scope: Tune pickles this
            # class by value, and a closure over the live display (terminal locks) cannot be.
            super().__init__(**kwargs)
            self._recorded: set[str] = set()  # Tune trial ids whose result is in the study
            self._progress = progress
            self._extras: dict[str, list[Any]] = {}  # Tune trial id -> the bracket's other trials
            self._started: dict[str, float] = {}  # Tune trial id -> driver time it was asked

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
            started = time.perf_counter()
            source.study = self._ot_study
            if super().suggest(trial_id) is None:  # samples the first trial with ``source``
                return None
            trials = [self._ot_trials[trial_id]]
            try:
                trials += source.extras()
                policies = source.policies(trials)
            except Exception as exc:  # a bug: no asked trial may stay RUNNING behind it
                record(
                    self._ot_study, trials, None, config, started, f"{type(exc).__name__}: {exc}"
                )
                self._recorded.add(trial_id)
                raise
            self._extras[trial_id] = trials[1:]
            self._started[trial_id] = started
            return {"policies": policies, "trial_number": trials[0].number}

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            if trial_id in self._recorded or trial_id not in self._ot_trials:
                return
            decoded = decode(result)
            reason = (
                "the trial raised an exception in its worker (see the Ray logs under studies/ray)"
                if error
                else None
            )
            assert self._ot_study is not None
            trials = [self._ot_trials[trial_id], *self._extras.pop(trial_id, [])]
            record(
                self._ot_study,
                trials,
                decoded,
                config,
                self._started.pop(trial_id, time.perf_counter()),
                reason,
                self._progress,
            )
            self._recorded.add(trial_id)

    source = BracketSource(study, space, ctx, config)
    return PolicySearch(
        progress,
        space=source,
        metric=list(studies.METRIC_NAMES),
        mode=["max", "min"],
        sampler=study.sampler,
        seed=config.seed,
        study_name=study.study_name,
        storage=studies.storage_of(study),
    )
