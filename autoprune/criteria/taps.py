"""Channel taps: where a group's channels are observed in a forward pass, found by autograd.

Data-driven criteria (energy, relevance, class-aware) read a channel through a feature map:
by default its *post-activation* map, the output of the nonlinearity that follows each of the
group's output layers; ``class_aware`` reads the convolution output itself, as its paper does.
:class:`ChannelTaps` finds those observation points once per model and calls back on them
during calibration passes.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from autoprune.groups import BATCH_NORMS, GroupView

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
    nn.Hardsigmoid,  # squeeze-and-excitation gates (timm's MobileNetV3)
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
        views: list[GroupView],
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
            elif isinstance(module, BATCH_NORMS):
                kind = "norm"
            else:
                kind = "activation"
            records.append((module, call, kind, output.grad_fn, int(output.shape[1])))

        watched = [
            m for m in model.modules() if isinstance(m, (*_LAYERS, *BATCH_NORMS, *ACTIVATIONS))
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
