"""autoprune: AutoML search over structured pruning policies for CNNs.

Give it a trained model and a MACs budget; it searches per-group pruning policies (how much
to prune each DepGraph group and which criterion picks the channels), keeps the feasible
accuracy-vs-MACs Pareto front in an Optuna study, and replays any policy into a pruned
checkpoint. A search on the embedded default (ResNet-20 on the bundled MNIST-5k), then the
winner replayed into a checkpoint and loaded back::

    import autoprune

    config = autoprune.SearchConfig(budget_flops=0.5, trials=3, executor="local")
    outcome = autoprune.search(config, quiet=True)           # resumable: the study lives in SQL
    best = outcome.winner()                                   # best val accuracy at the budget
    best.policy.save("best.yaml")                             # a small, diffable policy file
    policy = autoprune.Policy.load("best.yaml")
    objective = autoprune.ObjectiveConfig(policy.base.checkpoint, dataset="mnist5k")
    metrics = autoprune.evaluate_policy(objective, policy)    # the trial again: same MACs
    result = autoprune.replay(policy, epochs=1, out="pruned.pt")  # + test accuracy
    model = autoprune.load_checkpoint("pruned.pt").model      # a plain, pruned nn.Module

Public names (imported on first use, so ``import autoprune`` and the CLI stay fast):
:func:`search` with :class:`SearchConfig`, :func:`replay`, :func:`evaluate_policy` with
:class:`ObjectiveConfig`, :class:`Policy`, :class:`SearchSpace`, :func:`load_checkpoint`,
:class:`UserError`, and the :mod:`autoprune.criteria` registry (``criteria.register`` adds a
criterion of your own).

How a trial flows through the modules::

    space      SearchSpace: sampled params -> Policy            (space.py, policy.py)
    project    rates scaled onto the MACs target               (budget.py, macs.py)
    prune      criteria score channels, surgery removes them   (criteria/, prune.py, groups.py, depth.py)
    fine-tune  the policy's retrain recipe                      (train.py)
    evaluate   val accuracy and MACs: evaluate.evaluate_policy  (evaluate.py)
    report     worker -> driver -> study                        (executors/, records.py, study/)
    export     feasible front -> policy files                   (export.py)
    replay     policy -> pruned checkpoint -> model             (checkpoint.py)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute); None: the module itself
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "search": ("autoprune.runner", "search"),
    "SearchConfig": ("autoprune.config", "SearchConfig"),
    "replay": ("autoprune.checkpoint", "replay"),
    "load_checkpoint": ("autoprune.checkpoint", "load_checkpoint"),
    "evaluate_policy": ("autoprune.evaluate", "evaluate_policy"),
    "ObjectiveConfig": ("autoprune.evaluate", "ObjectiveConfig"),
    "Policy": ("autoprune.policy", "Policy"),
    "SearchSpace": ("autoprune.space", "SearchSpace"),
    "UserError": ("autoprune.errors", "UserError"),
    "criteria": ("autoprune.criteria", None),
}

__all__ = [
    "ObjectiveConfig",
    "Policy",
    "SearchConfig",
    "SearchSpace",
    "UserError",
    "criteria",
    "evaluate_policy",
    "load_checkpoint",
    "replay",
    "search",
]

if TYPE_CHECKING:
    from autoprune import criteria
    from autoprune.checkpoint import load_checkpoint, replay
    from autoprune.config import SearchConfig
    from autoprune.errors import UserError
    from autoprune.evaluate import ObjectiveConfig, evaluate_policy
    from autoprune.policy import Policy
    from autoprune.runner import search
    from autoprune.space import SearchSpace


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'autoprune' has no attribute '{name}'")
    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
