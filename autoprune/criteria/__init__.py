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
all groups at once; their base-model scores are cached on disk (see :mod:`.cache`).

A *selection rule* (``auto``, loss-aware selection) is a criterion that implements
:meth:`Criterion.select` instead of scoring: it picks, per group, one of the scoring criteria.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from autoprune.errors import UserError

DATA_KINDS = frozenset({"weights", "activations", "labels", "gradients"})


class Criterion:
    """Base class: implement :meth:`score` (per group) or :meth:`score_all` (one pass, all groups)."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"weights"})
    description: ClassVar[str] = ""

    @property
    def data_free(self) -> bool:
        return self.needs <= {"weights"}

    def score(self, group: Any, ctx: ScoringContext) -> torch.Tensor:
        """One score per channel of ``group`` (a :class:`autoprune.prune.GroupView`)."""
        raise NotImplementedError(f"criterion {self.name} implements neither score nor score_all")

    def score_all(self, groups: list[Any], ctx: ScoringContext) -> dict[str, torch.Tensor]:
        """Scores for several groups; override to share one calibration pass between groups."""
        return {g.name: self.score(g, ctx) for g in groups}

    def select(self, groups: list[Any], ctx: ScoringContext) -> dict[str, str]:
        """Selection rules only: the name of the scoring criterion chosen for each group."""
        raise NotImplementedError(f"criterion {self.name} is not a selection rule")

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


def _load_builtins() -> None:
    # Imported lazily so that `import autoprune.criteria` stays cheap and the registry is filled
    # whatever module is imported first.
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(f"autoprune.criteria.{module}")


_BUILTIN_MODULES = ["magnitude", "similarity"]


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """A fixed, deterministic set of training images that data-driven criteria score on."""

    dataset: Dataset  # training images without augmentation
    dataset_name: str  # part of the cache key
    num_images: int = 256  # how many images (drawn with ``seed``)
    batch_size: int = 64
    seed: int = 0
    _batches: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def spec(self) -> str:
        """Identifies the calibration set for the score cache."""
        return f"{self.dataset_name}/n{self.num_images}/s{self.seed}"

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The calibration batches, drawn once and kept in memory."""
        if self._batches is None:
            from autoprune.data import TensorSplit

            n = min(self.num_images, len(self.dataset))  # type: ignore[arg-type]
            generator = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(self.dataset), generator=generator)[:n].sort().values  # type: ignore[arg-type]
            if isinstance(self.dataset, TensorSplit):
                images, labels = self.dataset.images[idx], self.dataset.labels[idx]
            else:
                items = [self.dataset[int(i)] for i in idx]
                images = torch.stack([torch.as_tensor(x) for x, _ in items])
                labels = torch.as_tensor([int(y) for _, y in items])
            self._batches = [
                (images[i : i + self.batch_size], labels[i : i + self.batch_size])
                for i in range(0, n, self.batch_size)
            ]
        return self._batches


@dataclass
class ScoringInputs:
    """What the caller of ``prune.apply`` provides for data-driven criteria."""

    calibration: Calibration | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    base_sha256: str | None = None  # enables the score cache for base-model scores
    cache: Any | None = None  # a ScoreCache, or None to disable caching
    num_classes: int | None = None


@dataclass
class ScoringContext:
    """Everything a criterion may read while scoring; one per ``prune.apply`` call."""

    model: nn.Module
    graph: Any  # torch-pruning DependencyGraph of ``model``
    policy: Any  # the Policy being applied (class thresholds, seed)
    inputs: ScoringInputs
    step: int = 0  # 0 while scoring the unpruned base model
    counters: dict[str, int] = field(
        default_factory=dict
    )  # calibration passes, for tests/benchmarks

    @classmethod
    def create(
        cls, model: nn.Module, graph: Any, policy: Any, scoring: ScoringInputs | None
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

    def module_name(self, module: nn.Module) -> str:
        return self.graph._module2name[module]

    def scores(self, criterion_name: str, views: list[Any]) -> dict[str, torch.Tensor]:
        """Scores of ``views`` under a criterion, read from the cache for the base model."""
        crit = get(criterion_name)
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
        key = cache.key(
            self.inputs.base_sha256, criterion_name, self.inputs.calibration.spec, self.seed
        )
        cached = cache.get(key) or {}
        missing = [v for v in views if v.name not in cached]
        if missing:
            # Score every group of the model at once: the next trial may prune other groups.
            from autoprune.prune import current_groups, view_of

            all_views = [
                view_of(n, g, self.graph) for n, g in current_groups(self.model, self.graph).items()
            ]
            cached = {**cached, **crit.score_all(all_views, self)}
            cache.put(key, cached)
        return {v.name: cached[v.name] for v in views}

    def select_auto(
        self, views: list[Any], group_policies: dict[str, Any]
    ) -> tuple[dict[str, str], list[str]]:
        rule = get("auto")
        chosen = rule.select(views, self)
        return chosen, list(getattr(rule, "pool", []))


def weight_matrix(member: Any) -> torch.Tensor:
    """A layer's filters for the member's channels as rows (out side) or columns (in side).

    Rows are ordered by the member's ``root_idxs`` so all members of a group line up.
    """
    w = member.module.weight.detach()
    if member.is_out:
        rows = w[member.idxs].flatten(1)
    else:
        rows = (
            w.transpose(0, 1)[member.idxs].flatten(1)
            if w.dim() > 1
            else w[member.idxs].unsqueeze(1)
        )
    return rows


def scatter_to_root(values: torch.Tensor, member: Any, channels: int) -> torch.Tensor:
    """Place per-layer-channel values at the group's channel positions."""
    out = torch.zeros(channels, dtype=values.dtype)
    out[torch.as_tensor(member.root_idxs)] = values.cpu()
    return out
