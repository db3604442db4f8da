"""Successive halving over fine-tune length (``--rungs R --eta E``), planned from the study.

Every fine-tuned trial of a search is rung 0: the space's own short fine-tune. Once the study
holds its ``--trials``, the best ``1/E`` of the rung-0 trials at the budget (baselines
included, by val accuracy) are run again with ``E`` times the epochs: rung 1. The best ``1/E``
of those go on to ``E**2`` times the epochs, up to rung ``R - 1``. A promoted trial is a new
trial with its parent's params (the sampler sees every rung as a trial of its own) and two
user attrs, its rung and its parent's number; a baseline's promotion keeps the baseline's name.
Its figure supersedes its parent's (:func:`autoprune.study.current_trials`), and the winner is
chosen among the trials at the highest rung any trial at the budget reached, never on a
shorter fine-tune's figure (:func:`autoprune.study.winner`).

This is synchronous successive halving (SHA), the inner loop of Hyperband: a rung starts when
the one below is finished, so every promotion compares figures of the same fine-tune length.
ASHA promotes asynchronously (a trial goes up as soon as it is in the top ``1/E`` of the rung
*so far*), which keeps workers busy at the price of promoting on fewer figures; Optuna's
pruners (its ASHA among them) are single-objective and stop trials within one run, not
re-run them longer. Here the rung-0 phase is the search itself (brackets, screening, budget
projection), and only at-budget trials climb.

Everything is derived from the stored trials, so a search killed mid-ladder resumes where it
stopped: promotions already asked (waiting, running, finished or failed) are not asked again.
"""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from autoprune import study as studies
from autoprune.records import TrialRecord


def _at_budget(study: Any, trial: FrozenTrial) -> bool:
    budget = studies.study_budget(study)
    metric = studies.front_metric(study)
    ratio = studies.trial_metric(trial, metric)
    return (
        budget is not None
        and ratio is not None
        and all(c <= 0.0 for c in trial.constraints.values())
        and studies.at_budget(ratio, budget, metric)
    )


def owed(study: Any, rungs: int, eta: int) -> list[tuple[FrozenTrial, int]]:
    """The promotions the ladder still has to ask for, all of one rung: ``(parent, rung)``.

    Empty when the ladder is complete, or when the promotions of the lowest unfinished rung are
    all asked and some still run (the next rung waits for them).
    """
    trials = study.get_trials(deepcopy=False)
    children: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        parent = TrialRecord.from_trial(t).promoted_from
        if parent is not None:
            children.setdefault(int(parent), []).append(t)
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    for rung in range(1, rungs):
        pool = [t for t in done if studies.rung_of(t) == rung - 1 and _at_budget(study, t)]
        keep = math.ceil(len(pool) / eta)
        top = sorted(pool, key=lambda t: (-t.values[0], t.number))[:keep]
        due = [(t, rung) for t in top if t.number not in children]
        if due:
            return due
        if any(
            c.state in (TrialState.WAITING, TrialState.RUNNING)
            for t in top
            for c in children[t.number]
        ):
            return []  # this rung is still running: the next one ranks its results
    return []


def enqueue(study: Any, promotions: list[tuple[FrozenTrial, int]]) -> None:
    """Queue each promotion: the parent's params, its rung and parent (and baseline name)."""
    for parent, rung in promotions:
        baseline = TrialRecord.from_trial(parent).baseline or None
        child = TrialRecord(rung=rung, promoted_from=parent.number, baseline=baseline)
        study.enqueue_trial(dict(parent.params), user_attrs=child.to_attrs())


def waiting(study: Any) -> list[FrozenTrial]:
    """Promotions queued and not yet run (this driver's, or left by a search that stopped)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if TrialRecord.from_trial(t).rung is not None
    ]
