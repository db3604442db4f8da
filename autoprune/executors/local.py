"""The local executor: Optuna's ask/tell loop in this process, one trial at a time, no Ray."""

from __future__ import annotations

import time
from typing import Any

from optuna.trial import TrialState

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.evaluate import ObjectiveConfig
from autoprune.executors.brackets import BracketSource, FailureStreak, record
from autoprune.executors.results import decode, evaluate_bracket_for_trial
from autoprune.failures import classify
from autoprune.progress import Progress
from autoprune.space import SearchSpace, SpaceContext


def run_local(
    study: Any,
    space: SearchSpace,
    ctx: SpaceContext,
    objective: ObjectiveConfig,
    config: SearchConfig,
    missing: int,
    progress: Progress,
    refill: bool = True,
) -> None:
    """Ask, evaluate and record brackets until the study holds ``config.trials`` COMPLETE trials.

    ``missing`` brackets are planned; with ``refill`` each bracket that ends without a COMPLETE
    trial is replaced by another (without it, e.g. when only the queued baselines are to run,
    exactly ``missing`` are asked). Torch's thread count is set by
    :func:`autoprune.evaluate.evaluate_policy` at the start of every trial
    (``objective.threads``). A failure is recorded on its trials and the search goes on, up to
    :class:`FailureStreak`'s limit.

    Raises:
        UserError: too many brackets in a row failed (see :class:`FailureStreak`).
    """
    source = BracketSource(study, space, ctx, config, progress)
    streak = FailureStreak(study.study_name)
    planned = missing
    while planned > 0:
        if studies.complete_count(study) >= config.trials:
            break  # other drivers of a shared study finished the rest
        planned -= 1
        started = time.perf_counter()
        first = study.ask()
        source(first)
        trials = [first, *source.extras()]
        error = None
        try:
            result = decode(evaluate_bracket_for_trial(objective, source.policies(trials)))
        except Exception as exc:  # a bug outside the evaluation: recorded, the search goes on
            result, error = None, classify(exc, "evaluation")
        states = record(study, trials, result, config, started, error, progress)
        streak.update(trials, states)
        if streak.stalled:
            raise streak.error()
        if refill and TrialState.COMPLETE not in states:
            planned += 1
