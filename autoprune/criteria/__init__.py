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

Data-driven criteria observe a channel through its *post-activation feature map*, located by
:class:`ChannelTaps` (the output of the nonlinearity that follows each of the group's output
layers, else its normalisation layer, else the layer itself); ``class_aware`` reads the
convolution output itself, as its paper does.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
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

    def cache_tag(self, ctx: ScoringContext) -> str:
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
    _balanced: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def spec(self) -> str:
        """Identifies the calibration set for the score cache."""
        return f"{self.dataset_name}/n{self.num_images}/s{self.seed}"

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The calibration batches, drawn once and kept in memory."""
        if self._batches is None:
            n = min(self.num_images, len(self.dataset))  # type: ignore[arg-type]
            generator = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(self.dataset), generator=generator)[:n].sort().values  # type: ignore[arg-type]
            images, labels = self._load(idx)
            self._batches = [
                (images[i : i + self.batch_size], labels[i : i + self.batch_size])
                for i in range(0, n, self.batch_size)
            ]
        return self._batches

    def class_balanced(self, samples_per_class: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``samples_per_class`` training images of every class, batched class by class.

        Drawn with ``seed`` independently of :meth:`batches`; every batch holds one class only
        (classes in increasing order), so per-class statistics can be finished batch by batch.
        """
        if samples_per_class not in self._balanced:
            from autoprune.data import labels_of

            all_labels = labels_of(self.dataset)
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(all_labels), generator=generator)
            batches: list[tuple[torch.Tensor, torch.Tensor]] = []
            for cls in torch.unique(all_labels).tolist():
                idx = order[all_labels[order] == cls][:samples_per_class].sort().values
                images, labels = self._load(idx)
                batches += [
                    (images[i : i + self.batch_size], labels[i : i + self.batch_size])
                    for i in range(0, len(idx), self.batch_size)
                ]
            self._balanced[samples_per_class] = batches
        return self._balanced[samples_per_class]

    def _load(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from autoprune.data import TensorSplit

        if isinstance(self.dataset, TensorSplit):
            return self.dataset.images[idx], self.dataset.labels[idx]
        items = [self.dataset[int(i)] for i in idx]
        images = torch.stack([torch.as_tensor(x) for x, _ in items])
        return images, torch.as_tensor([int(y) for _, y in items], dtype=torch.long)


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

    def class_balanced_batches(
        self, samples_per_class: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``samples_per_class`` calibration images of each class, one class per batch (a pass)."""
        if self.inputs.calibration is None:
            self.calibration_batches()  # raises the explanatory error
        assert self.inputs.calibration is not None
        self.counters["calibration_passes"] = self.counters.get("calibration_passes", 0) + 1
        return self.inputs.calibration.class_balanced(samples_per_class)

    def module_name(self, module: nn.Module) -> str:
        return self.graph._module2name[module]

    def scores(self, criterion_name: str, views: list[Any]) -> dict[str, torch.Tensor]:
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
        # Dropped blocks change every activation downstream, so they are part of the key.
        spec = self.inputs.calibration.spec + crit.cache_tag(self)
        dropped = sorted(getattr(getattr(self.policy, "depth", None), "drop_blocks", None) or [])
        if dropped:
            spec += "/drop=" + ",".join(dropped)
        key = cache.key(self.inputs.base_sha256, criterion_name, spec, self.seed)
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
        """Per group, the criterion the ``auto`` rule picks, and the pool it picked from."""
        rule = get("auto")
        chosen = rule.select(views, self)
        pool_for = getattr(rule, "pool_for", None)
        pool = pool_for(self.policy) if pool_for is not None else getattr(rule, "pool", [])
        return chosen, list(pool)


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


# --------------------------------------------------------------------------- feature maps

# Modules whose output is a channel's "post-activation" feature map.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Tap:
    """One observation point: the ``call``-th call of ``module`` in a forward pass."""

    module: nn.Module
    call: int  # modules may be called several times per forward (torchvision reuses its ReLUs)
    kind: str  # "activation", "norm" (no nonlinearity follows) or "layer" (neither follows)
    channels: int


@dataclass
class TapSlot:
    """How one group reads one tap: tap channel ``layer_idxs[i]`` is group channel ``root_idxs[i]``."""

    tap: int  # index into ChannelTaps.taps
    layer_idxs: torch.Tensor
    root_idxs: torch.Tensor


class ChannelTaps:
    """Where each group's channels are observed: the post-activation feature maps of its layers.

    For every conv/linear layer whose output channels a group removes, the tap is the output of
    the first nonlinearity module reached from it through normalisation layers and residual
    additions (``relu(bn(conv(x)) + shortcut)`` in a ResNet block, ``relu6(bn(conv))`` in
    MobileNetV2); without one (a linear bottleneck), the output of its normalisation layer;
    without that, the layer's own output. A coupled group (a residual stream written by several
    convolutions) reads every distinct tap of its layers; criteria average over them.

    The map is found once per model by one probe forward pass with autograd recording: from
    each activation's output the autograd graph is walked back, through anything that is not a
    layer or another activation, to the layers that produced it. This needs no knowledge of the
    model's code, handles functional residual adds, in-place ReLUs and modules called more than
    once (each call is its own tap, identified by its position in the pass).

    ``point="layer"`` observes the layers' own outputs instead (the convolution output before
    normalisation), for criteria defined there (class-aware pruning).
    """

    POINTS: ClassVar[tuple[str, ...]] = ("activation", "layer")

    def __init__(
        self,
        model: nn.Module,
        views: list[Any],
        probe: torch.Tensor,
        *,
        point: str = "activation",
    ) -> None:
        if point not in self.POINTS:
            raise ValueError(f"ChannelTaps point '{point}' is unknown; allowed: {self.POINTS}")
        self.taps: list[Tap] = []
        self.slots: dict[str, list[TapSlot]] = {}
        self.channels: dict[str, int] = {v.name: v.channels for v in views}
        self._calls: dict[nn.Module, int] = {}
        self._index: dict[tuple[nn.Module, int], int] = {}
        records = self._probe(model, probe)
        act_fns = {r[3] for r in records if r[2] == "activation"}
        layer_of_fn = {r[3]: r[0] for r in records if r[2] == "layer"}
        found: dict[str, dict[nn.Module, list[tuple[nn.Module, int, int]]]] = {
            "activation": defaultdict(list),
            "norm": defaultdict(list),
            "layer": defaultdict(list),
        }
        for module, call, kind, fn, channels in records:
            if kind == "layer":
                found["layer"][module].append((module, call, channels))
                continue
            for layer in _producers(fn, layer_of_fn, act_fns):
                if _out_channels(layer) == channels:
                    found[kind][layer].append((module, call, channels))
        for view in views:
            slots: dict[int, TapSlot] = {}
            for member in view.out_layers(_LAYERS):
                kind = (
                    "layer"
                    if point == "layer"
                    else next((k for k in found if found[k].get(member.module)), "layer")
                )
                for module, call, channels in found[kind].get(member.module, []):
                    key = (module, call)
                    if key not in self._index:
                        self._index[key] = len(self.taps)
                        self.taps.append(Tap(module, call, kind, channels))
                    tap = self._index[key]
                    slots.setdefault(
                        tap,
                        TapSlot(
                            tap, torch.as_tensor(member.idxs), torch.as_tensor(member.root_idxs)
                        ),
                    )
            if not slots:
                raise RuntimeError(
                    f"group {view.name}: none of its layers ran in a forward pass, so its channels "
                    "cannot be observed"
                )
            self.slots[view.name] = list(slots.values())

    def _probe(
        self, model: nn.Module, probe: torch.Tensor
    ) -> list[tuple[nn.Module, int, str, Any, int]]:
        records: list[tuple[nn.Module, int, str, Any, int]] = []
        counts: dict[nn.Module, int] = defaultdict(int)

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            call = counts[module]
            counts[module] += 1
            if not isinstance(output, torch.Tensor) or output.grad_fn is None or output.dim() < 2:
                return
            if isinstance(module, _LAYERS):
                kind = "layer"
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                kind = "norm"
            else:
                kind = "activation"
            records.append((module, call, kind, output.grad_fn, int(output.shape[1])))

        watched = [
            m
            for m in model.modules()
            if isinstance(m, (*_LAYERS, nn.modules.batchnorm._BatchNorm, *ACTIVATIONS))
        ]
        handles = [m.register_forward_hook(hook) for m in watched]
        try:
            with torch.enable_grad():
                model(probe.detach().clone().requires_grad_(True))
        finally:
            for h in handles:
                h.remove()
        self._calls = {m: max(c, 1) for m, c in counts.items()}
        return records

    @contextlib.contextmanager
    def observe(self, on_tap: Callable[[int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
        """Call ``on_tap(tap index, output)`` for every tap during forward passes inside the block.

        What ``on_tap`` returns (if not None) replaces the module's output, e.g. a clone so that
        later in-place operations of the model cannot change a tensor kept for the backward pass.
        """
        seen: dict[nn.Module, int] = defaultdict(int)

        def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
            call = seen[module] % self._calls.get(module, 1)
            seen[module] += 1
            tap = self._index.get((module, call))
            if tap is None or not isinstance(output, torch.Tensor):
                return None
            return on_tap(tap, output)

        handles = [m.register_forward_hook(hook) for m in {t.module for t in self.taps}]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def reduce(self, per_tap: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-group scores: the mean over the group's taps of the per-tap channel values."""
        out: dict[str, torch.Tensor] = {}
        for name, slots in self.slots.items():
            total = torch.zeros(self.channels[name], dtype=torch.float64)
            for slot in slots:
                values = per_tap.get(slot.tap)
                if values is not None:
                    total[slot.root_idxs] += values.detach().double().cpu()[slot.layer_idxs]
            out[name] = (total / len(slots)).float()
        return out


def _out_channels(layer: nn.Module) -> int:
    return int(getattr(layer, "out_channels", getattr(layer, "out_features", -1)))


def _producers(fn: Any, layer_of_fn: dict[Any, nn.Module], stop: set[Any]) -> list[nn.Module]:
    """Layers whose output reaches autograd node ``fn`` without crossing another layer/activation."""
    found: list[nn.Module] = []
    stack = [f for f, _ in fn.next_functions if f is not None]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in layer_of_fn:
            if layer_of_fn[node] not in found:
                found.append(layer_of_fn[node])
            continue
        if node in stop:
            continue
        stack.extend(f for f, _ in node.next_functions if f is not None)
    return found


@contextlib.contextmanager
def scoring_mode(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Eval mode on ``device`` for the duration of a scoring pass; restores mode and device."""
    was_training = model.training
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    model.eval()
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
        model.train(was_training)
