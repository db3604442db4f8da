"""Counting MACs: torch-pruning's count of a model, and an analytic model of pruned candidates.

Counting uses ``torch_pruning.utils.count_ops_and_params`` (multiply-accumulates of conv and
linear layers plus one operation per element of BN, activation and pooling layers): this is
what "MACs" means everywhere in autoprune.

:class:`MacsModel` predicts the MACs of a candidate from the layer-wise counts of the unpruned
model (conv and linear MACs scale with kept inputs x kept outputs, element-wise layers with the
kept channels of the tensor they read), so budget projection costs no forward pass per
candidate. Unpruned, it is exact: it is torch-pruning's count of that very model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.groups import build_graph, current_groups, view_of
from autoprune.modes import model_mode


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` for one forward pass of ``example_inputs``."""
    with model_mode(model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


@dataclass
class _Layer:
    macs: float
    kind: str  # "bilinear" (conv/linear), "depthwise", "elementwise"
    out_groups: list[int]  # indices of groups that remove this layer's output channels
    in_groups: list[int]
    out_channels: int
    in_channels: int


class MacsModel:
    """Analytic MACs of ``model`` as a function of how many channels each group loses."""

    def __init__(
        self, model: nn.Module, example_inputs: torch.Tensor, base_macs: float | None = None
    ) -> None:
        graph = build_graph(model, example_inputs)
        groups = current_groups(model, graph)
        self.group_names = list(groups)
        self.channels = [len(g[0].idxs) for g in groups.values()]
        index = {name: i for i, name in enumerate(self.group_names)}
        out_of: dict[nn.Module, list[int]] = {}
        in_of: dict[nn.Module, list[int]] = {}
        for name, group in groups.items():
            for member in view_of(name, group, graph).members:
                target = out_of if member.is_out else in_of
                if index[name] not in target.setdefault(member.module, []):
                    target[member.module].append(index[name])
        with model_mode(model):
            total, self.params, layer_macs, _ = tp.utils.count_ops_and_params(
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
                layer = _Layer(
                    macs,
                    "depthwise",
                    out_of.get(module, []) or in_of.get(module, []),
                    [],
                    module.out_channels,
                    0,
                )
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                cin = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                cout = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
                layer = _Layer(
                    macs, "bilinear", out_of.get(module, []), in_of.get(module, []), cout, cin
                )
            elif module in out_of:
                layer = _Layer(macs, "depthwise", out_of[module], [], _channels_of(module), 0)
            elif module in owners:
                layer = _Layer(macs, "depthwise", owners[module][0], [], owners[module][1], 0)
            else:
                continue
            modeled += macs
            self.layers.append(layer)
        self.unmodeled = self.total - modeled

    def macs(self, removed: list[int]) -> float:
        """MACs after removing ``removed[i]`` channels from group ``i``."""
        total = self.unmodeled
        for layer in self.layers:
            out_keep = (
                1.0 - sum(removed[g] for g in layer.out_groups) / layer.out_channels
                if layer.out_groups
                else 1.0
            )
            if layer.kind == "bilinear" and layer.in_groups:
                in_keep = 1.0 - sum(removed[g] for g in layer.in_groups) / layer.in_channels
            else:
                in_keep = 1.0
            total += layer.macs * out_keep * in_keep
        return total

    def ratio(self, removed: list[int]) -> float:
        return self.macs(removed) / self.base_macs


def _channels_of(module: nn.Module) -> int:
    for attr in ("num_features", "out_channels", "out_features", "normalized_shape"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, tuple) and value:
            return int(value[0])
    return 0


def _elementwise_owners(
    model: nn.Module, example_inputs: torch.Tensor, out_of: dict[nn.Module, list[int]]
) -> dict[nn.Module, tuple[list[int], int]]:
    """For parameter-free layers (ReLU, pooling, ...), the groups that set their channel count.

    A layer reading a tensor produced by a grouped layer inherits that layer's groups; one
    reading a tensor we did not see produced (e.g. a residual sum) inherits from the most
    recent tensor of the same shape, which is the sum's operand in residual networks.
    """
    owner_by_tensor: dict[int, list[int]] = {}
    # Every tensor whose id is a key above stays referenced here until the pass ends: a freed
    # tensor's id can be reused by a later one, which would then inherit the wrong groups
    # (and make the analytic count depend on the allocator's history).
    alive: list[torch.Tensor] = []
    recent: list[tuple[tuple[int, ...], list[int]]] = []
    owners: dict[nn.Module, tuple[list[int], int]] = {}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        if module in out_of:
            groups = out_of[module]
        elif inputs and isinstance(inputs[0], torch.Tensor):
            x = inputs[0]
            groups = owner_by_tensor.get(id(x)) or next(
                (g for shape, g in reversed(recent) if shape == tuple(x.shape)), []
            )
            if groups and x.dim() >= 2:
                owners[module] = (groups, int(x.shape[1]))
        else:
            return
        if groups:
            alive.append(output)
            owner_by_tensor[id(output)] = groups
            recent.append((tuple(output.shape), groups))

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
