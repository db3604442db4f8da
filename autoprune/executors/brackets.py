"""Brackets: the unit of work both executors hand out, asked and recorded on the driver.

A bracket is either one trial (a baseline, or any trial when screening is off) or ``--screen K``
trials that share a MACs target (the budget, or for an explore bracket the target its first
trial sampled below it, so the proxy compares like with like): the worker
scores all K by the adaptive-BN proxy and fine-tunes only the best
(:func:`autoprune.evaluate.evaluate_bracket`); the others are recorded PRUNED with their proxy.
That is one rung of successive halving with rate K, run inside one worker: Ray Tune's ASHA
would launch a Tune trial per candidate (its per-trial overhead is about the cost of the
proxy itself) and stops on one metric, and Optuna's pruners are single-objective.

Screening pays only where the proxy ranks. Before each searched bracket the driver measures the
proxy's Spearman with fine-tuned val accuracy on the study's own trials at the budget (every
fine-tuned trial, baselines included, measures its proxy first); once
:data:`~autoprune.config.SCREEN_EVIDENCE` of them are done and it is below ``--screen-floor``,
brackets are single trials until it climbs back, so the time goes to fine-tuning instead.
"""

from __future__ import annotations

import math
import time
from typing import Any

from optuna.trial import TrialState

from autoprune import study as studies
from autoprune.config import SCREEN_EVIDENCE, SearchConfig
from autoprune.errors import UserError
from autoprune.executors.results import CANDIDATES
from autoprune.failures import Failure
from autoprune.progress import Progress
from autoprune.records import TrialRecord
from autoprune.space import SearchSpace, SpaceContext


class BracketSource:
    """Asks trials for brackets: samples the first, decides its size, asks the rest."""

    def __init__(
        self,
        study: Any,
        space: SearchSpace,
        ctx: SpaceContext,
        config: SearchConfig,
        progress: Progress | None = None,
    ) -> None:
        self.study = study
        self.space = space
        self.ctx = ctx
        self.config = config
        # Brackets already searched (one fine-tuned trial each), so a resumed study keeps the
        # explore share where it was.
        self.searched = sum(
            1
            for t in studies.completed_trials(study)
            if not (record := TrialRecord.from_trial(t)).is_baseline and record.rung is None
        )
        self.last_single = True
        self.last_target: float | None = None  # an explore bracket's sampled target
        self.paused = False  # screening paused: the proxy did not rank (--screen-floor)
        self.progress = progress  # where a pause or resumption of screening is said

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the searcher that holds this; the study (a live DB handle) is set again
        # by the searcher before every use, and the live progress display is left out.
        return {**self.__dict__, "study": None, "progress": None}

    def screens(self) -> bool:
        """Whether the next searched bracket is screened: ``--screen`` above 1, unless the proxy
        measurably fails to rank this study's fine-tuned trials (``--screen-floor``)."""
        if self.config.screen <= 1:
            return False
        measured = studies.proxy_spearman(self.study)
        if measured is None or measured[1] < SCREEN_EVIDENCE:
            return True
        rho, count = measured
        paused = math.isnan(rho) or rho < self.config.screen_floor
        if paused != self.paused and self.progress is not None:
            self.progress.note(
                f"screening {'paused' if paused else 'resumed'}: the proxy's Spearman with "
                f"fine-tuned val accuracy is {rho:.2f} over {count} trials at the budget "
                f"(--screen-floor {self.config.screen_floor:g})"
            )
        self.paused = paused
        return not paused

    def __call__(self, trial: Any) -> None:
        """Sample the first trial of a bracket (Ray's ``OptunaSearch`` calls this as its space)."""
        studies.mark_driver(trial)
        record = TrialRecord.from_trial(trial)
        baseline = record.baseline
        retry = record.retry_of is not None
        promoted = record.rung is not None  # a ladder rung: its parent's params
        explore = False
        if retry:  # re-run as it was: its fixed params hold its target when it explored
            explore = bool(record.explore)
        elif not baseline and not promoted:
            explore = self.space.explores(self.searched)
            self.searched += 1
        self.space.sample(trial, self.ctx, explore=explore)
        self.last_single = bool(baseline) or retry or promoted or not self.screens()
        self.last_target = trial.params.get("target_macs_ratio") if explore else None

    def extras(self) -> list[Any]:
        """The other trials of the bracket whose first trial was just sampled (maybe none).

        None while trials are waiting in the queue (baselines, retries): those must be
        evaluated as they are, not screened against fresh candidates.
        """
        if self.last_single:
            return []
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return []
        out = []
        for _ in range(self.config.screen - 1):
            if self.last_target is not None:
                # The queue was empty a moment ago, so the trial asked next is this one.
                self.study.enqueue_trial({"target_macs_ratio": self.last_target})
            trial = self.study.ask()
            studies.mark_driver(trial)
            self.space.sample(trial, self.ctx, explore=self.last_target is not None)
            out.append(trial)
        return out

    def policies(self, trials: list[Any]) -> list[dict[str, Any]]:
        """The policies the bracket's trials stand for; a ladder rung r fine-tunes eta**r times
        as long as its params say."""
        out = []
        for t in trials:
            policy = self.space.to_policy(t.params, self.ctx)
            rung = TrialRecord.from_trial(t).level
            if rung:
                policy.retrain.epochs *= self.config.eta**rung
            out.append(policy.to_dict())
        return out


def record(
    study: Any,
    trials: list[Any],
    result: dict[str, Any] | None,
    config: SearchConfig,
    started: float,
    error: Failure | None = None,
    progress: Progress | None = None,
) -> list[TrialState]:
    """Record a bracket's report (one candidate report per trial) with its driver wall time,
    and count every recorded trial on ``progress``."""
    candidates = (result or {}).get(CANDIDATES)
    if not candidates or len(candidates) != len(trials) or error is not None:
        reports: list[dict[str, Any] | None] = [result] + [None] * (len(trials) - 1)
        if error is None and result and not Failure.is_in(result) and len(trials) > 1:
            error = Failure(
                "exception",
                f"the worker reported {len(candidates or [])} candidates for {len(trials)} trials",
            )
    else:
        reports = list(candidates)
    states = studies.finish_bracket(
        study, trials, reports, config.budgets(), time.perf_counter() - started, error
    )
    if progress is not None:
        done = studies.complete_count(study)
        for trial, state, report in zip(trials, states, reports, strict=True):
            reason = TrialRecord.from_trial(trial).error if state is TrialState.FAIL else None
            progress.update(done, report, state.name, trial.number, reason)
    return states


class FailureStreak:
    """Stops a search whose brackets keep failing, instead of asking for trials forever.

    Both executors run until the study holds ``--trials`` COMPLETE trials, so a failed bracket
    is replaced by a new one. A cause that fails every trial (a broken criterion, a dataset the
    model cannot read, a GPU too small) would then loop without end: after :data:`LIMIT`
    brackets in a row without a COMPLETE trial the search stops with the last reason.
    """

    LIMIT = 5

    def __init__(self, study_name: str) -> None:
        self.study_name = study_name
        self.count = 0
        self.last: str | None = None  # the latest failed trial's "number (kind): reason"

    def update(self, trials: list[Any], states: list[TrialState]) -> None:
        """Count a recorded bracket: a COMPLETE trial ends the streak, a FAIL one extends it."""
        if TrialState.COMPLETE in states:
            self.count = 0
            return
        for trial, state in zip(trials, states, strict=True):
            if state is TrialState.FAIL:
                failed = TrialRecord.from_trial(trial)
                self.last = f"trial {trial.number} ({failed.error_kind}): {failed.error}"
        self.count += 1

    @property
    def stalled(self) -> bool:
        return self.count >= self.LIMIT

    def error(self) -> UserError:
        """What the search raises once :attr:`stalled`."""
        return UserError(
            f"search stopped: {self.count} brackets in a row ended without a complete trial; "
            f"the last failure was {self.last}. See every reason with `autoprune show "
            f"{self.study_name}`, fix the cause, then `autoprune resume {self.study_name}`"
        )
