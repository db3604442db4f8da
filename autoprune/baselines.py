"""Baselines as trials: the policies a user would write by hand, evaluated inside the study.

:meth:`autoprune.space.SearchSpace.baselines` names them (uniform rates with ``l1`` and with each
data-driven criterion, global ranking, the sensitivity allocation), all at the budget with the
space's middle fine-tune lr. A new study enqueues them before any sampled trial, so the sampler
starts from them and, once they have run, the front is never worse than them; a resumed study
enqueues those it lacks (``autoprune baselines NAME`` runs them at once). Each carries its name
in its :class:`~autoprune.records.TrialRecord`.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from autoprune.records import TrialRecord
from autoprune.space import SearchSpace, SpaceContext


def enqueue_baselines(study: Any, space: SearchSpace, ctx: SpaceContext, which: str) -> list[str]:
    """Enqueue the baselines ``which`` (default | all | none) the study does not hold yet.

    A baseline is held when a trial carrying its name is waiting, running or complete; one that
    failed is enqueued again. Returns the names enqueued now.
    """
    held = {
        TrialRecord.from_trial(t).baseline
        for t in study.get_trials(
            deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
        )
    }
    added = []
    for name, params in space.baselines(ctx, which):
        if name in held:
            continue
        study.enqueue_trial(params, user_attrs=TrialRecord(baseline=name).to_attrs())
        added.append(name)
    return added
