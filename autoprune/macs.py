"""Counting MACs: torch-pruning's count of a model, and an analytic model of pruned candidates.

Counting uses ``torch_pruning.utils.count_ops_and_params`` (multiply-accumulates of conv and
linear layers plus one operation per element of BN, activation and pooling layers): this is
what "MACs" means everywhere in autoprune.

:class:`MacsModel` predicts the MACs of a candidate from the layer-wise counts of the unpruned
model, so budget projection costs no forward pass per candidate. It knows which of a layer's
channels each channel of a group is (``_Side``): a group can span several layers that each hold
only part of its channels (the branches of a concatenation), or reach one layer several times
(a flatten before a linear layer). Told *which* channels go (:meth:`MacsModel.counter`), it
counts exactly what torch-pruning counts on the pruned model; told only *how many*
(:meth:`MacsModel.ratio`), it assumes a group loses channels evenly across the layers it spans,
which is exact whenever every layer of a group holds all of its channels (plain and residual
networks) and an estimate otherwise. Unpruned, both are torch-pruning's count of that model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.groups import build_graph, current_groups, excluded_groups, view_of
from autoprune.modes import model_mode
from autoprune.tplib import count_ops_and_params, tp


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` for one forward pass of ``example_inputs``."""
    with model_mode(model), torch.no_grad():
        macs, params = count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


@dataclass
class _Side:
    """How one group reaches one side (inputs or outputs) of a layer."""

    group: int  # index of the group
    # per channel of the group: how many of the layer's channels on this side go with it
    weights: np.ndarray
    share: float  # weights.sum() / the group's channels: channels lost per channel removed


@dataclass
class _Layer:
    macs: float
    kind: str  # "bilinear" (conv/linear: outputs x inputs), "depthwise" (outputs only)
    out_channels: int
    in_channels: int
    out: list[_Side] = field(default_factory=list)
    inputs: list[_Side] = field(default_factory=list)


class MacsModel:
    """Analytic MACs of ``model`` as a function of the channels each group loses."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        base_macs: float | None = None,
        graph: tp.DependencyGraph | None = None,
    ) -> None:
        """``graph``: ``model``'s dependency graph when the caller has traced it already."""
        graph = graph or build_graph(model, example_inputs)
        groups = current_groups(model, graph)
        # groups torch-pruning cannot prune into a working model: name -> why
        self.excluded = excluded_groups(model, graph)
        self.group_names = list(groups)
        self.channels = [len(g[0].idxs) for g in groups.values()]
        # (module, is_out) -> group index -> {(layer channel, group channel)}
        pairs: dict[tuple[nn.Module, bool], dict[int, set[tuple[int, int]]]] = {}
        for i, (name, group) in enumerate(groups.items()):
            for member in view_of(name, group, graph).members:
                links = pairs.setdefault((member.module, member.is_out), {}).setdefault(i, set())
                links.update(zip(member.idxs, member.root_idxs, strict=True))
        sides = {key: self._sides(links) for key, links in pairs.items()}
        out_of = {module: s for (module, is_out), s in sides.items() if is_out}
        in_of = {module: s for (module, is_out), s in sides.items() if not is_out}
        with model_mode(model):
            total, self.params, layer_macs, _ = count_ops_and_params(
                model, example_inputs, layer_wise=True
            )
            owners = _elementwise_owners(model, example_inputs, out_of)
        self.total = float(total)
        self.base_macs = float(base_macs) if base_macs is not None else self.total
        self.layers: list[_Layer] = []
        modeled = 0.0
        for module in model.modules():
            if next(module.children(), None) is not None:
                continue
            macs = float(layer_macs.get(module) or 0.0)
            if macs == 0.0:
                continue
            if (
                isinstance(module, nn.Conv2d)
                and module.groups > 1
                and module.groups == module.in_channels
            ):
                out = out_of.get(module) or in_of.get(module, [])
                layer = _Layer(macs, "depthwise", module.out_channels, 0, out)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                cin = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                cout = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
                layer = _Layer(
                    macs, "bilinear", cout, cin, out_of.get(module, []), in_of.get(module, [])
                )
            elif module in out_of:
                layer = _Layer(macs, "depthwise", _channels_of(module), 0, out_of[module])
            elif module in owners:
                out, channels = owners[module]
                layer = _Layer(macs, "depthwise", channels, 0, out)
            else:
                continue
            modeled += macs
            self.layers.append(layer)
        self.unmodeled = self.total - modeled
        self._arrays()

    def _sides(self, links: dict[int, set[tuple[int, int]]]) -> list[_Side]:
        out = []
        for group, pairs in sorted(links.items()):
            weights = np.zeros(self.channels[group])
            for _, root in pairs:
                weights[root] += 1.0
            out.append(_Side(group, weights, float(weights.sum()) / self.channels[group]))
        return out

    # ------------------------------------------------------------------ counting

    def _arrays(self) -> None:
        """The per-layer fractions each channel removed from a group costs, as matrices.

        ``_out[l, g]`` (``_in[l, g]``) is the share of layer ``l``'s output (input) channels one
        channel of group ``g`` takes with it when channels go evenly; a candidate's MACs are
        ``unmodeled + macs . ((1 - _out r) * (1 - _in r))``.
        """
        shape = (len(self.layers), len(self.channels))
        self._macs = np.array([layer.macs for layer in self.layers])
        self._out, self._in = np.zeros(shape), np.zeros(shape)
        for row, layer in enumerate(self.layers):
            for side in layer.out:
                self._out[row, side.group] += side.share / layer.out_channels
            if layer.kind == "bilinear":
                for side in layer.inputs:
                    self._in[row, side.group] += side.share / layer.in_channels

    def macs(self, removed: Sequence[int]) -> float:
        """MACs after removing ``removed[i]`` channels from group ``i``, spread evenly."""
        r = np.asarray(removed, dtype=np.float64)
        return float(self.unmodeled + self._macs @ ((1.0 - self._out @ r) * (1.0 - self._in @ r)))

    def ratio(self, removed: Sequence[int]) -> float:
        """:meth:`macs` relative to the base model's MACs."""
        return self.macs(removed) / self.base_macs

    def ratios(self, candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """:meth:`ratio` of many candidates at once (one row each)."""
        r = np.asarray(candidates, dtype=np.float64)
        kept = (1.0 - r @ self._out.T) * (1.0 - r @ self._in.T)
        return (self.unmodeled + kept @ self._macs) / self.base_macs

    def counter(self, orders: Mapping[int, Sequence[int]]) -> Callable[[Sequence[int]], float]:
        """An exact MACs ratio of removal counts, given the order channels go in per group.

        ``orders[i]`` lists group ``i``'s channels in the order they are removed (lowest score
        first), so removing ``n`` channels removes ``orders[i][:n]``. Groups without an order
        are counted as :meth:`ratio` counts them.
        """
        ordered = sorted(orders)
        even = [g for g in range(len(self.channels)) if g not in orders]
        # per ordered group: the layers it reaches, and the share of each layer's output
        # (input) channels lost after the first n channels of its order, one row per n
        lost: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for g in ordered:
            order = np.asarray(orders[g], dtype=np.int64)
            rows: list[int] = []
            out_cum: list[np.ndarray] = []
            in_cum: list[np.ndarray] = []
            for row, layer in enumerate(self.layers):
                out = [s for s in layer.out if s.group == g]
                inputs = (
                    [s for s in layer.inputs if s.group == g] if layer.kind == "bilinear" else []
                )
                if not out and not inputs:
                    continue
                rows.append(row)
                out_cum.append(_cumulative(out, order, layer.out_channels))
                in_cum.append(_cumulative(inputs, order, layer.in_channels))
            lost.append(
                (g, np.asarray(rows, dtype=np.int64), np.stack(out_cum, 1), np.stack(in_cum, 1))
            )
        out_even, in_even = self._out[:, even], self._in[:, even]

        def ratio(removed: Sequence[int]) -> float:
            r = np.asarray(removed, dtype=np.float64)
            out_lost = out_even @ r[even]
            in_lost = in_even @ r[even]
            for g, rows, out_cum, in_cum in lost:
                out_lost[rows] += out_cum[removed[g]]
                in_lost[rows] += in_cum[removed[g]]
            kept = (1.0 - out_lost) * (1.0 - in_lost)
            return float(self.unmodeled + self._macs @ kept) / self.base_macs

        return ratio

    def unmodeled_share(self) -> float:
        """Share of the MACs in layers no group changes (an input layer's image channels, the
        classifier's classes, layers of groups left out)."""
        fixed = self.unmodeled + sum(
            layer.macs for layer in self.layers if not layer.out and not layer.inputs
        )
        return fixed / self.total if self.total else 0.0


def _cumulative(sides: list[_Side], order: np.ndarray, channels: int) -> np.ndarray:
    """Share of a layer's ``channels`` lost after the first n channels of ``order``, n = 0..len."""
    lost = np.zeros(len(order) + 1)
    if not sides:
        return lost  # also where ``channels`` is 0 (a depthwise layer's input side)
    for side in sides:
        lost[1:] += np.cumsum(side.weights[order])
    return lost / channels


def _channels_of(module: nn.Module) -> int:
    for attr in ("num_features", "out_channels", "out_features", "normalized_shape"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple) and value:
            return int(value[0])
    return 0


def _elementwise_owners(
    model: nn.Module, example_inputs: torch.Tensor, out_of: dict[nn.Module, list[_Side]]
) -> dict[nn.Module, tuple[list[_Side], int]]:
    """For parameter-free layers (ReLU, pooling, ...), the group sides of the tensor they read.

    A layer reading a tensor produced by a layer inherits that layer's output sides (none for a
    convolution of no group); one reading a tensor we did not see produced (e.g. a residual
    sum) inherits from the most recent grouped tensor of the same shape, which is the sum's
    operand in residual networks.
    """
    owner_by_tensor: dict[int, list[_Side]] = {}
    # Every tensor whose id is a key above stays referenced here until the pass ends: a freed
    # tensor's id can be reused by a later one, which would then inherit the wrong groups
    # (and make the analytic count depend on the allocator's history).
    alive: list[torch.Tensor] = []
    recent: list[tuple[tuple[int, ...], list[_Side]]] = []
    owners: dict[nn.Module, tuple[list[_Side], int]] = {}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        if module in out_of:
            sides = out_of[module]
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            sides = []  # its outputs belong to no group (one left out, or the classifier)
        elif inputs and isinstance(inputs[0], torch.Tensor):
            x = inputs[0]
            known = owner_by_tensor.get(id(x))
            sides = (
                known
                if known is not None
                else next((s for shape, s in reversed(recent) if shape == tuple(x.shape)), [])
            )
            if sides and x.dim() >= 2:
                owners[module] = (sides, int(x.shape[1]))
        else:
            return
        alive.append(output)
        owner_by_tensor[id(output)] = sides
        if sides:
            recent.append((tuple(output.shape), sides))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        alive.clear()
    return {m: o for m, o in owners.items() if not isinstance(m, (nn.Conv2d, nn.Linear))}
