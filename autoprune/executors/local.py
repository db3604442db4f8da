"""The local executor: Optuna's ask/tell loop in this process, one trial at a time, no Ray."""

from __future__ import annotations

import time
from typing import Any

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.executors.brackets import BracketSource, record
from autoprune.executors.results import decode, evaluate_bracket_for_trial
from autoprune.objective import ObjectiveConfig
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
) -> None:
    """Ask, evaluate and record up to ``missing`` brackets, stopping once the study is full.

    Torch's thread count is set by :func:`autoprune.objective.evaluate_policy` at the start of
    every trial (``objective.threads``). An exception other than a user error is recorded as
    the trial's failure and the search goes on.
    """
    source = BracketSource(study, space, ctx, config)
    for _ in range(missing):
        if studies.complete_count(study) >= config.trials:
            break  # other drivers of a shared study finished the rest
        started = time.perf_counter()
        first = study.ask()
        source(first)
        trials = [first, *source.extras()]
        error = None
        try:
            result = decode(evaluate_bracket_for_trial(objective, source.policies(trials)))
        except Exception as exc:  # a bug or a resource problem: recorded, the search goes on
            result, error = None, f"{type(exc).__name__}: {exc}"
        record(study, trials, result, config, started, error, progress)
