"""Pruning criteria: score every output channel of a group; the lowest-scored go first.

A criterion is a small class registered by name::

    from autoprune.criteria import Criterion, register

    @register("l1")
    class L1(Criterion):
        needs = frozenset({"weights"})

        def score(self, group, ctx):
            ...  # -> 1-D tensor with one score per channel of the group

``needs`` declares what data the criterion reads (``weights``, ``activations``, ``labels``,
``gradients``) so the service knows whether calibration data must be loaded. Criteria that
read data override :meth:`Criterion.score_all` to make one pass over the calibration set for
all groups at once; their base-model scores are cached on disk.

A *selection rule* (``auto``, loss-aware selection) is a criterion that implements
:meth:`Criterion.select` instead of scoring: it picks, per group, one of the scoring criteria.

This module is the registry and the :class:`Criterion` surface. The rest of the package:

* :mod:`.context` — :class:`~.context.ScoringContext`, the :class:`Context` a criterion is
  given (and when base-model scores come from the cache), and :class:`~.context.ScoringInputs`;
* :mod:`.calibration` — the seeded calibration image set;
* :mod:`.cache` — the on-disk cache of base-model scores;
* :mod:`.taps` — where a group's channels are observed in a forward pass;
* :mod:`.filters` — a group's filters as aligned matrices, for weight-based criteria;
* one module per family: :mod:`.magnitude`, :mod:`.similarity`, :mod:`.energy`,
  :mod:`.class_aware`, :mod:`.relevance`, :mod:`.loss_aware`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from autoprune.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from autoprune.groups import GroupView
    from autoprune.policy import Policy

DATA_KINDS = frozenset({"weights", "activations", "labels", "gradients"})


class Context(Protocol):
    """What a criterion may read while scoring (:class:`~.context.ScoringContext` is the one
    the package passes; the registry names only this surface, so it imports no context)."""

    model: nn.Module
    policy: Policy  # the policy being applied (class thresholds, loss-aware pool, seed)
    step: int  # 0 while scoring the unpruned base model
    # for a selection rule: channels each group loses at the step it chooses for (may be empty)
    removal_counts: dict[str, int]

    @property
    def seed(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def num_classes(self) -> int: ...

    def calibration_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def class_balanced_batches(
        self, samples_per_class: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def scores(self, criterion_name: str, views: list[GroupView]) -> dict[str, torch.Tensor]: ...


class Criterion:
    """Base class: implement :meth:`score` (per group) or :meth:`score_all` (one pass, all groups)."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"weights"})
    description: ClassVar[str] = ""

    @property
    def data_free(self) -> bool:
        return self.needs <= {"weights"}

    def score(self, group: GroupView, ctx: Context) -> torch.Tensor:
        """One score per channel of ``group``."""
        raise NotImplementedError(f"criterion {self.name} implements neither score nor score_all")

    def score_all(self, groups: list[GroupView], ctx: Context) -> dict[str, torch.Tensor]:
        """Scores for several groups; override to share one calibration pass between groups."""
        return {g.name: self.score(g, ctx) for g in groups}

    def select(self, groups: list[GroupView], ctx: Context) -> dict[str, str]:
        """Selection rules only: the name of the scoring criterion chosen for each group."""
        raise NotImplementedError(f"criterion {self.name} is not a selection rule")

    def cache_tag(self, ctx: Context) -> str:
        """Settings besides the calibration set that change this criterion's scores (cache key)."""
        return ""

    is_selection_rule: ClassVar[bool] = False


_REGISTRY: dict[str, type[Criterion]] = {}


def register(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: make a criterion available under ``name``."""

    def wrap(cls: type[Criterion]) -> type[Criterion]:
        if not cls.needs <= DATA_KINDS:
            raise ValueError(f"criterion {name}: needs {set(cls.needs)} outside {set(DATA_KINDS)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get(name: str) -> Criterion:
    """An instance of the criterion registered as ``name``."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UserError(f"unknown criterion '{name}'; allowed: {', '.join(available())}")
    return _REGISTRY[name]()


def available() -> list[str]:
    """Registered names, scoring criteria and selection rules alike."""
    _load_builtins()
    return sorted(_REGISTRY)


def scoring_criteria() -> list[str]:
    """Registered criteria that produce scores (no selection rules)."""
    _load_builtins()
    return sorted(n for n, c in _REGISTRY.items() if not c.is_selection_rule)


def check_policy(policy: Policy) -> None:
    """Raise a :class:`UserError` when ``policy`` names a criterion this registry lacks.

    Where a policy meets the registry (before it prunes), not inside the policy's data class:
    a policy file is read without torch, and a criterion registered by a plug-in is known here.
    """
    known = set(available()) | {"auto"}
    scoring = scoring_criteria()
    bad_pool = [c for c in policy.loss_aware.pool if c not in scoring]
    if bad_pool and any(g.criterion == "auto" for g in policy.groups.values()):
        raise UserError(
            f"policy loss_aware.pool names {', '.join(bad_pool)}, which are not scoring criteria; "
            f"allowed: {', '.join(scoring)}"
        )
    policy.check_step_criteria()  # a policy built in Python has not been through from_dict
    for name, g in policy.groups.items():
        if g.criterion not in known:
            raise UserError(
                f"policy groups.{name}.criterion '{g.criterion}' is unknown; allowed: {', '.join(sorted(known))}"
            )
        bad_steps = [c for c in g.step_criteria or [] if c not in scoring]
        if bad_steps:
            raise UserError(
                f"policy groups.{name}.step_criteria names {', '.join(bad_steps)}, which are not "
                f"scoring criteria; allowed: {', '.join(scoring)}"
            )


def _load_builtins() -> None:
    # Imported lazily so that `import autoprune.criteria` stays cheap and the registry is filled
    # whatever module is imported first.
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"autoprune.criteria.{module}")


_BUILTIN_MODULES = [
    "magnitude",
    "similarity",
    "energy",
    "class_aware",
    "relevance",
    "loss_aware",
]
