"""Recording results: a trial's or a bracket's outcome told to the study, with its record,
constraints and state; and which trials count (complete, current on the ladder)."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.failures import Failure, non_finite
from autoprune.records import TrialRecord
from autoprune.study._optuna import set_user_attrs
from autoprune.study.stored import metric_names

CONSTRAINT = "macs_budget"
# The constraint each budgeted ratio is stored under (Optuna's ``set_constraint`` key).
CONSTRAINTS = {"macs_ratio": CONSTRAINT, "latency_ratio": "latency_budget"}


def write_record(study: optuna.Study, trial: optuna.Trial, record: TrialRecord) -> None:
    """Store ``record`` on a running trial (its set fields; one transaction where possible)."""
    set_user_attrs(study, trial, _jsonable(record.to_attrs()))


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials (not copied: read them, do not change them)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def rung_of(trial: FrozenTrial) -> int:
    """The ladder rung a trial was fine-tuned at (0: the search's own length)."""
    return TrialRecord.from_trial(trial).level


def current_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials whose figure is their policy's latest: a trial promoted to a higher rung
    (its child COMPLETE) is superseded by its child's longer fine-tune."""
    done = completed_trials(study)
    parents = (TrialRecord.from_trial(t).promoted_from for t in done)
    superseded = {int(p) for p in parents if p is not None}
    return [t for t in done if t.number not in superseded]


def complete_count(study: optuna.Study) -> int:
    return len(completed_trials(study))


def trial_count(study: optuna.Study) -> int:
    """Trials of any state stored in the study (asked, running, finished)."""
    return len(study.get_trials(deepcopy=False))


def finish_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    result: dict[str, Any] | None,
    budget: float | dict[str, float],
    error: Failure | None = None,
) -> TrialState:
    """Record one trial's outcome: constraint + user attrs + tell. Never leaves it RUNNING.

    ``budget`` is the largest allowed MACs ratio, or one bound per budgeted ratio
    (:meth:`~autoprune.config.SearchConfig.budgets`); each becomes a constraint. The values
    told are the study's objectives (:func:`metric_names`), read from the result.

    A result with ``finetuned: False`` was screened out by the proxy: it is told PRUNED with
    its proxy and MACs stored. Missing or non-finite metrics and failures (``error``, or one
    the worker reported) become FAIL with the reason in its record's ``error`` and
    ``error_kind`` (see :mod:`autoprune.failures`).
    """
    budgets = {"macs_ratio": budget} if isinstance(budget, (int, float)) else dict(budget)
    names = metric_names(study)
    values = None
    if result and error is None and Failure.is_in(result):
        error = Failure.from_report(result)  # the worker caught it around this candidate
    screened_out = result is not None and result.get("finetuned") is False and error is None
    if result and error is None and not screened_out:
        raw = [result.get(m) for m in names]
        if all(isinstance(v, (int, float)) and math.isfinite(float(v)) for v in raw):
            values = [float(v) for v in raw]  # type: ignore[arg-type]
        else:
            error = non_finite(dict(zip(names, raw, strict=True)))
    if result:
        write_record(study, trial, TrialRecord.from_report(result))
    if screened_out and error is None and result is not None:
        _set_constraints(trial, result, budgets)
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if values is None:
        failure = error or Failure("exception", "the trial reported no result")
        write_record(study, trial, failure.record())
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    _set_constraints(trial, result or {}, budgets)
    study.tell(trial, values)
    return TrialState.COMPLETE


def _set_constraints(
    trial: optuna.Trial, result: dict[str, Any], budgets: dict[str, float]
) -> None:
    """One constraint per budgeted ratio the result measured (feasible when <= 0)."""
    for metric, bound in budgets.items():
        value = result.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            trial.set_constraint(CONSTRAINTS[metric], float(value) - bound)


def finish_bracket(
    study: optuna.Study,
    trials: list[optuna.Trial],
    results: list[dict[str, Any] | None],
    budget: float | dict[str, float],
    wall: float,
    error: Failure | None = None,
) -> list[TrialState]:
    """Record a bracket: every candidate's outcome, and its cost on the fine-tuned trial.

    ``wall`` is the driver's time from asking the bracket's first trial to receiving its report
    (the DB writes that record it come after); what the candidates' own phases do not account
    for is stored as ``overhead`` — asking and sampling, Ray's scheduling (including any wait
    for free resources), pickling and transport — on the trial that was fine-tuned (the first
    one when none was).
    """
    spent = sum(
        float((TrialRecord.from_report(r).timings or {}).get("total", 0.0)) for r in results if r
    )
    first = trials[0].number
    keeper = next(
        (
            i
            for i, r in enumerate(results)
            if r and r.get("finetuned", True) and not Failure.is_in(r)
        ),
        0,
    )
    states = []
    for i, (trial, result) in enumerate(zip(trials, results, strict=True)):
        extra = TrialRecord(bracket=first)
        if i == keeper:
            extra = extra.with_(wall=round(wall, 3), overhead=round(max(wall - spent, 0.0), 3))
        merged = {**result, **extra.to_attrs()} if result else None
        states.append(finish_trial(study, trial, merged, budget, error))
    return states


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=float))
