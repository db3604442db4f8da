"""The Ray Tune searcher: Ray's ``OptunaSearch``, asking brackets and recording them the autoprune way.

Imported only when a search runs on Ray (by :func:`autoprune.executors.ray_tune.policy_searcher`),
as it imports Ray itself. See :mod:`autoprune.executors.ray_tune` for how faults reach it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.executors.brackets import BracketSource, FailureStreak, record
from autoprune.executors.results import decode
from autoprune.failures import Failure, classify
from autoprune.progress import Progress


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
            record(self._ot_study, trials, None, self._config, started, classify(exc, "sampling"))
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
            return Failure("exception", f"the worker's trial raised {_last_line(text)}{retried}")
        detail = _exit_detail(text) if text is not None else "no reason recorded by Ray"
        return Failure(
            "worker_died",
            f"worker died ({detail}){retried}: killed, out of host memory or its node lost "
            "(Ray's logs: studies/ray)",
        )


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
