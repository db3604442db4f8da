"""The Ray Tune executor: trials run in Ray worker processes; the driver samples and records.

An ``OptunaSearch`` subclass (:func:`policy_searcher`) turns each sampled set of params into a
bracket of policies on the driver, hands workers only those policies, and records every result
the autoprune way (constraint, applied policy, timings; errors and NaN become FAIL) before
``tell``. The Optuna study in SQL is the search's record: Tune's own snapshots are not used.

Faults: a worker catches every failure of a candidate itself and reports it
(:func:`~autoprune.executors.results.evaluate_bracket_for_trial`), so a Tune trial errors only
when its worker process died (killed, the OOM killer, a lost node). Tune then restarts it up to
``--max-failures`` times with the same config, that is the same bracket of already-asked Optuna
trials; the searcher hears of the Tune trial only when it ends for good, and records its Optuna
trials once: COMPLETE from the retry that reported, or FAIL ``worker_died`` with Ray's reason.

No shared filesystem: workers read no file of the driver. The base checkpoint and its cached
scores travel once per search through Ray's object store (:mod:`autoprune.shipping`), and
every trial records the Ray node it ran on (user attrs ``node_id``, ``node_ip``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.evaluate import ObjectiveConfig
from autoprune.executors.brackets import BracketSource, FailureStreak, record
from autoprune.executors.results import decode, evaluate_bracket_for_trial
from autoprune.failures import Failure, classify
from autoprune.files import studies_dir
from autoprune.progress import Progress
from autoprune.records import TrialRecord
from autoprune.shipping import Shipment, pack, unpack
from autoprune.space import SearchSpace, SpaceContext


def trainable(
    config: dict[str, Any], objective: ObjectiveConfig, shipment: Shipment, driver_node: str
) -> None:
    """What a Ray worker runs for one trial: evaluate the bracket it was handed and report.

    The base checkpoint comes from ``shipment`` (installed once per worker process), never
    from the driver's disk; every candidate's report names the node it ran on.
    """
    import ray
    from ray import tune

    node_id = ray.get_runtime_context().get_node_id()
    objective = unpack(shipment, objective, on_driver_node=node_id == driver_node)
    node = TrialRecord(node_id=node_id, node_ip=ray.util.get_node_ip_address()).to_attrs()
    tune.report(evaluate_bracket_for_trial(objective, config["policies"], extra=node))


def run_ray(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    objective: ObjectiveConfig,
    config: SearchConfig,
    missing: int,
    progress: Progress,
    refill: bool = True,
) -> None:
    """Run brackets through Ray Tune until the study holds ``config.trials`` COMPLETE trials.

    Starts Ray here unless it already runs. ``missing`` brackets are planned; with ``refill``
    each one that ends without a COMPLETE trial is replaced (see :func:`run_local`).

    Raises:
        UserError: too many brackets in a row failed (see :class:`FailureStreak`).
    """
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
        streak = FailureStreak(study.study_name)
        policies = policy_searcher(study, space, ctx, config, progress, missing, refill, streak)
        searcher = ConcurrencyLimiter(policies, max_concurrent=config.max_concurrent)
        resources = {
            "cpu": config.cpus_per_trial,
            "gpu": config.gpus_per_trial,
            **(config.resources_per_trial or {}),  # custom resources, e.g. {"worker_node": 1}
        }
        # Put in the object store once by with_parameters; every worker reads it from there.
        shipment = pack(objective, space.criteria, config.seed)
        parameters = tune.with_parameters(
            trainable,
            objective=objective,
            shipment=shipment,
            driver_node=ray.get_runtime_context().get_node_id(),
        )
        tuner = tune.Tuner(
            tune.with_resources(parameters, resources),
            tune_config=tune.TuneConfig(
                # Unbounded: the searcher decides when the study is full (Searcher.FINISHED).
                search_alg=searcher,
                num_samples=-1,
                reuse_actors=True,
            ),
            run_config=RunConfig(
                name=study.study_name,
                storage_path=str((studies_dir() / "ray").resolve()),
                verbose=0,
                failure_config=FailureConfig(max_failures=config.max_failures),
                callbacks=[policies.tracker()],
                log_to_file=True,
            ),
        )
        tuner.fit()
        if streak.stalled:
            raise streak.error()
    finally:
        if started_here:
            ray.shutdown()


def policy_searcher(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    config: SearchConfig,
    progress: Progress | None,
    missing: int | None = None,
    refill: bool = True,
    streak: FailureStreak | None = None,
) -> Any:
    """A Ray Tune searcher over ``space`` that records results in ``study`` (see module doc).

    It plans ``missing`` brackets (default: the COMPLETE trials the study lacks), one more for
    each that ends without a COMPLETE trial when ``refill``, and answers ``FINISHED`` once the
    study is full, the plan is done, or ``streak`` says the search stalled.
    """
    source = BracketSource(study, space, ctx, config)
    return _policy_search_class()(
        progress,
        source=source,
        config=config,
        planned=missing if missing is not None else config.trials - studies.complete_count(study),
        refill=refill,
        streak=streak or FailureStreak(study.study_name),
        space=source,
        metric=config.metric_names(),
        mode=[d[:3] for d in config.directions()],  # "max", "min"
        sampler=study.sampler,
        seed=config.seed,
        study_name=study.study_name,
        storage=studies.storage_of(study),
    )


def _policy_search_class() -> type:
    """The searcher's class, :class:`PolicySearch`; defined on first use, as Ray's
    ``OptunaSearch`` it extends is imported only when a search uses Ray.

    Everything an instance needs is passed to it (nothing is read from an enclosing scope):
    Tune pickles the searcher, and what it holds must be plain state.
    """
    global _POLICY_SEARCH
    if _POLICY_SEARCH is not None:
        return _POLICY_SEARCH
    from ray import tune
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class PolicySearch(OptunaSearch):
        """OptunaSearch that hands workers a policy and records results the autoprune way.

        Ray keeps its Optuna study (``_ot_study``) and the map from Tune trial ids to Optuna
        trials (``_ot_trials``) in private attributes with no accessors; a subclass that
        records results itself has to read them, and this class is the one place that does.
        """

        def __init__(
            self,
            progress: Progress | None,
            *,
            source: BracketSource,
            config: SearchConfig,
            planned: int,
            refill: bool,
            streak: FailureStreak,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self._source = source  # samples each bracket's trials and builds their policies
            self._config = config
            self._refill = refill
            self._recorded: set[str] = set()  # Tune trial ids whose result is in the study
            self._progress = progress
            self._extras: dict[str, list[Any]] = {}  # Tune trial id -> the bracket's other trials
            self._started: dict[str, float] = {}  # Tune trial id -> driver time it was asked
            self._planned = planned  # brackets still to ask for
            self._streak = streak
            self._tune_trials: dict[str, Any] = {}  # Tune trial id -> Tune's Trial (for errors)

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles the searcher for experiment restore; the Optuna DB is our record, so
            # the live progress display (terminal locks) is simply left out of that snapshot.
            state = dict(self.__dict__)
            state.pop("_progress", None)
            state["_tune_trials"] = {}  # live Tune objects: only needed while the run lasts
            return state

        def tracker(self) -> Any:
            """A Tune callback that lets this searcher read why a Tune trial errored.

            ``on_trial_complete(error=True)`` carries no reason; Tune's ``Trial`` object does
            (its error file is written before the searcher is told).
            """
            searcher = self

            class TrialTracker(tune.Callback):
                def on_trial_start(
                    self, iteration: int, trials: list[Any], trial: Any, **info: Any
                ) -> None:
                    searcher._tune_trials[trial.trial_id] = trial

            return TrialTracker()

        def save(self, checkpoint_path: str) -> None:
            """No Tune-side snapshot: the Optuna study in SQL is the search's record and resume point."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: ``autoprune resume`` reloads the study from SQL."""

        # Ray documents Searcher.FINISHED (a str) as a valid answer but types suggest as dict | None.
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            assert self._ot_study is not None
            if self._streak.stalled:
                return Searcher.FINISHED
            # Tune asks again at every step of its loop while the last brackets run: answered
            # without reading the study.
            if self._planned <= 0:  # a bracket in flight may still fail and need a successor
                return None if self._started else Searcher.FINISHED
            if studies.complete_count(self._ot_study) >= self._config.trials:
                return Searcher.FINISHED  # full (maybe by other drivers of a shared study)
            started = time.perf_counter()
            self._source.study = self._ot_study
            if super().suggest(trial_id) is None:  # samples the first trial with ``source``
                return None
            trials = [self._ot_trials[trial_id]]
            try:
                trials += self._source.extras()
                policies = self._source.policies(trials)
            except Exception as exc:  # a bug: no asked trial may stay RUNNING behind it
                record(
                    self._ot_study, trials, None, self._config, started, classify(exc, "sampling")
                )
                self._recorded.add(trial_id)
                raise
            self._extras[trial_id] = trials[1:]
            self._started[trial_id] = started
            self._planned -= 1
            return {"policies": policies, "trial_number": trials[0].number}

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            if trial_id in self._recorded or trial_id not in self._ot_trials:
                return
            # A Tune trial errors only when its worker could not report (see module doc).
            decoded = None if error else decode(result)
            failure = self._worker_failure(trial_id) if error else None
            assert self._ot_study is not None
            trials = [self._ot_trials[trial_id], *self._extras.pop(trial_id, [])]
            states = record(
                self._ot_study,
                trials,
                decoded,
                self._config,
                self._started.pop(trial_id, time.perf_counter()),
                failure,
                self._progress,
            )
            self._recorded.add(trial_id)
            self._tune_trials.pop(trial_id, None)
            self._streak.update(trials, states)
            if self._refill and TrialState.COMPLETE not in states:
                self._planned += 1

        def _worker_failure(self, trial_id: str) -> Failure:
            """Why Tune gave up on a trial, from the error text Tune stored for it."""
            trial = self._tune_trials.get(trial_id)
            text = _stored_error_text(trial)
            attempts = trial.run_metadata.num_failures if trial is not None else 1
            retried = (
                f"; Tune ran it {attempts} times (--max-failures {self._config.max_failures})"
                if attempts > 1
                else ""
            )
            if text is not None and not _actor_died(text):
                # The trainable itself raised outside our per-candidate handling.
                return Failure(
                    "exception", f"the worker's trial raised {_last_line(text)}{retried}"
                )
            detail = _exit_detail(text) if text is not None else "no reason recorded by Ray"
            return Failure(
                "worker_died",
                f"worker died ({detail}){retried}: killed, out of host memory or its node lost "
                "(Ray's logs: studies/ray)",
            )

    _POLICY_SEARCH = PolicySearch
    return PolicySearch


_POLICY_SEARCH: type | None = None


def _stored_error_text(trial: Any) -> str | None:
    """The text of the last failure Tune wrote for an errored trial (None when it wrote none).

    Tune also pickles the exception beside it; that file is never loaded: unpickling runs code,
    and the text says all a user needs.
    """
    path = getattr(trial, "error_file", None)
    if not path or not os.path.exists(path):
        return None
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:  # an unreadable record: the failure is still recorded, without detail
        return None
    # Tune appends "Failure # N (occurred at ...)" and the error's text for every failure.
    last = re.split(r"^Failure # \d+ \(occurred at [^)]*\)\n", text, flags=re.M)[-1].strip()
    return last or None


def _actor_died(text: str) -> bool:
    """Whether Tune's error text says the worker process died (not that its code raised)."""
    return any(
        marker in text
        for marker in ("ActorDiedError", "RayActorError", "actor died", "Worker exit detail")
    )


def _exit_detail(text: str) -> str:
    """Ray's exit detail of a dead worker, else the error's first line."""
    marker = "Worker exit detail:"
    if marker in text:
        return text.split(marker, 1)[1].strip().split(". ")[0].strip().rstrip(".")
    return (text.splitlines() or [""])[0][:200]


def _last_line(text: str) -> str:
    """The last non-empty line of a traceback: ``Type: message``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "an unknown error")[:300]
