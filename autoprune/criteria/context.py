"""The scoring context: what a criterion may read while scoring, and the base-score cache policy.

``prune.apply`` makes one :class:`ScoringContext` per call from the caller's
:class:`ScoringInputs` (calibration set, device, score cache). Criteria read the model, the
graph, the policy and calibration batches from it; :meth:`ScoringContext.scores` decides when
scores come from the on-disk cache (data-driven criteria on the unpruned base model) and
:meth:`ScoringContext.select_auto` runs the ``auto`` selection rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.criteria import get
from autoprune.criteria.cache import ScoreCache
from autoprune.criteria.calibration import Calibration
from autoprune.errors import UserError
from autoprune.groups import GroupView, current_views

if TYPE_CHECKING:
    from autoprune.policy import Policy


@dataclass
class ScoringInputs:
    """What the caller of ``prune.apply`` provides for data-driven criteria."""

    calibration: Calibration | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    base_sha256: str | None = None  # enables the score cache for base-model scores
    cache: ScoreCache | None = None  # None disables caching
    num_classes: int | None = None


@dataclass
class ScoringContext:
    """Everything a criterion may read while scoring; one per ``prune.apply`` call."""

    model: nn.Module
    graph: Any  # torch-pruning DependencyGraph of ``model``
    policy: Policy  # the policy being applied (class thresholds, seed)
    inputs: ScoringInputs
    step: int = 0  # 0 while scoring the unpruned base model
    # channels each group loses at the step a selection rule chooses for (set by select_auto);
    # empty: the rule works it out from the policy (its first step that removes any)
    removal_counts: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(
        default_factory=dict
    )  # calibration passes, for tests/benchmarks

    @classmethod
    def create(
        cls, model: nn.Module, graph: Any, policy: Policy, scoring: ScoringInputs | None
    ) -> ScoringContext:
        return cls(model=model, graph=graph, policy=policy, inputs=scoring or ScoringInputs())

    @property
    def seed(self) -> int:
        return int(self.policy.seed)

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    @property
    def num_classes(self) -> int:
        return int(self.inputs.num_classes or self.policy.model.num_classes)

    def calibration_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Calibration batches; raises a clear error when a data-driven criterion has none."""
        if self.inputs.calibration is None:
            raise UserError(
                "a data-driven criterion needs calibration data, but none was given: "
                "run it through `autoprune search`/`replay` or pass ScoringInputs(calibration=...)"
            )
        self.counters["calibration_passes"] = self.counters.get("calibration_passes", 0) + 1
        return self.inputs.calibration.batches()

    def class_balanced_batches(
        self, samples_per_class: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``samples_per_class`` calibration images of each class, one class per batch (a pass)."""
        if self.inputs.calibration is None:
            self.calibration_batches()  # raises the explanatory error
        assert self.inputs.calibration is not None
        self.counters["calibration_passes"] = self.counters.get("calibration_passes", 0) + 1
        return self.inputs.calibration.class_balanced(samples_per_class)

    def scores(self, criterion_name: str, views: list[GroupView]) -> dict[str, torch.Tensor]:
        """Scores of ``views`` under a criterion, read from the cache for the base model."""
        crit = get(criterion_name)
        if crit.is_selection_rule:
            raise RuntimeError(
                f"criterion '{criterion_name}' is a selection rule, not a score: resolve it per "
                f"group with select_auto() before scoring (groups {[v.name for v in views]})"
            )
        cache = self.inputs.cache
        use_cache = (
            cache is not None
            and self.step == 0
            and not crit.data_free
            and self.inputs.base_sha256 is not None
            and self.inputs.calibration is not None
        )
        if not use_cache:
            return crit.score_all(views, self)
        assert cache is not None and self.inputs.calibration is not None
        assert self.inputs.base_sha256 is not None
        # Dropped blocks change every activation downstream, so they are part of the key.
        spec = self.inputs.calibration.spec + crit.cache_tag(self)
        # Scores computed on a GPU differ from the CPU's in the last bits, which can reorder
        # near-tied channels: each device type keeps its own entries.
        spec += f"/dev={self.device.type}"
        dropped = sorted(self.policy.depth.drop_blocks)
        if dropped:
            spec += "/drop=" + ",".join(dropped)
        key = cache.key(self.inputs.base_sha256, criterion_name, spec, self.seed)
        cached = cache.get(key) or {}
        missing = [v for v in views if v.name not in cached]
        if missing:
            # Score every group of the model at once: the next trial may prune other groups.
            all_views = current_views(self.model, self.graph)
            cached = {**cached, **crit.score_all(all_views, self)}
            cache.put(key, cached)
        return {v.name: cached[v.name] for v in views}

    def select_auto(
        self, views: list[GroupView], counts: dict[str, int] | None = None
    ) -> tuple[dict[str, str], list[str]]:
        """Per group, the criterion the ``auto`` rule picks, and the pool it picked from.

        ``counts``: the channels each group loses at the step being chosen for, the size at
        which the rule compares its proposals."""
        rule = get("auto")
        self.removal_counts = dict(counts or {})
        try:
            chosen = rule.select(views, self)
        finally:
            self.removal_counts = {}
        pool_for = getattr(rule, "pool_for", None)
        pool = pool_for(self.policy) if pool_for is not None else getattr(rule, "pool", [])
        return chosen, list(pool)
