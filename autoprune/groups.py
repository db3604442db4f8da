"""What a group is: DepGraph tracing, group discovery, and the plain view criteria score.

A *group* is a set of coupled channels that must be removed together (e.g. every convolution
writing into one residual stream). Policies address groups by the name of their root module,
the first layer torch-pruning's ``get_all_groups`` yields for them. The classifier's output
layer is never pruned: its outputs are the classes.

This module sits at the bottom of the engine: criteria, budget projection, depth pruning, the
search space and surgery (``prune``) all learn here what the groups of a model are, and it
imports none of them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune.modes import model_mode
from autoprune.tplib import count_ops_and_params, tp

PRUNABLE_ROOTS = (nn.Conv2d, nn.Linear)
# torch has no public base class for its batch norms (BatchNorm1d/2d/3d, SyncBatchNorm and the
# lazy variants); ``_BatchNorm`` is the class torch's own utilities test for, so autoprune
# names it here, once.
BATCH_NORMS: tuple[type[nn.modules.batchnorm._BatchNorm], ...] = (nn.modules.batchnorm._BatchNorm,)


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The output layer (its width is the number of classes): the last Linear, else the last conv."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [convs[-1]] if convs else []


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning dependency graph (eval mode, no gradient kept)."""
    with model_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


_NAMES: weakref.WeakKeyDictionary[tp.DependencyGraph, dict[nn.Module, str]] = (
    weakref.WeakKeyDictionary()
)


def module_names(graph: tp.DependencyGraph) -> dict[nn.Module, str]:
    """Module -> its name in the traced model (the names a policy and a pruning history use).

    Built once per graph: pruning changes a module's width, never its name or identity.
    """
    names = _NAMES.get(graph)
    if names is None:
        names = {module: name for name, module in graph.model.named_modules()}
        _NAMES[graph] = names
    return names


def current_groups(model: nn.Module, graph: tp.DependencyGraph) -> dict[str, Any]:
    """Prunable groups keyed by root module name, in torch-pruning's (deterministic) order.

    Groups torch-pruning cannot prune into a working model are left out (see
    :func:`excluded_groups`): their layers keep every channel.
    """
    return {name: g for name, (g, reason) in _all_groups(model, graph).items() if reason is None}


def excluded_groups(model: nn.Module, graph: tp.DependencyGraph) -> dict[str, str]:
    """The groups :func:`current_groups` leaves out, each with the reason."""
    return {
        name: reason
        for name, (_, reason) in _all_groups(model, graph).items()
        if reason is not None
    }


def _all_groups(model: nn.Module, graph: tp.DependencyGraph) -> dict[str, tuple[Any, str | None]]:
    names = module_names(graph)
    groups: dict[str, tuple[Any, str | None]] = {}
    for group in graph.get_all_groups(
        ignored_layers=classifier_layers(model), root_module_types=PRUNABLE_ROOTS
    ):
        groups[names[group[0].dep.target.module]] = (group, _unprunable(group, names))
    return groups


def _unprunable(group: Any, names: dict[nn.Module, str]) -> str | None:
    """Why torch-pruning would break the model by pruning ``group``, or None.

    * A grouped convolution that is not depthwise: torch-pruning prunes its channels like a
      plain convolution's, leaving counts its ``groups`` do not divide (or uneven groups).
    * A channel split (``torch.split``, ``chunk``): the model's code fixes the sizes it splits
      into, so the halves no longer line up once the input loses channels.
    """
    for item in group:
        module = item.dep.target.module
        if (
            isinstance(module, nn.Conv2d)
            and module.groups > 1
            and not module.groups == module.in_channels == module.out_channels
        ):
            return (
                f"it reaches the grouped convolution {names.get(module, '?')} ({module.groups} "
                "groups), which torch-pruning prunes into shapes its groups do not divide"
            )
        if isinstance(module, tp.ops._SplitOp):
            return (
                "it passes through a channel split (torch.split or chunk) whose sizes the "
                "model's code fixes"
            )
    return None


@dataclass
class GroupMember:
    """One layer touched by a group."""

    name: str  # module name in the model
    module: nn.Module
    is_out: bool  # True: the group sets this layer's output channels; False: its inputs
    idxs: list[int]  # layer channel indices, aligned with ``root_idxs``
    root_idxs: list[int]  # positions in the group's channel vector

    @property
    def weight(self) -> torch.Tensor:
        """The layer's ``weight`` parameter (conv/linear filters, norm scales)."""
        return self.module.get_parameter("weight")


@dataclass
class GroupView:
    """What a criterion sees of one group: its channels and the layers they live in."""

    name: str  # root module name: the key in a policy's ``groups``
    channels: int  # number of prunable channels (length of a score vector)
    members: list[GroupMember] = field(default_factory=list)

    @property
    def root(self) -> nn.Module:
        return self.members[0].module

    def out_layers(self, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[GroupMember]:
        """Layers of the given types whose output channels this group removes."""
        return [m for m in self.members if m.is_out and isinstance(m.module, types)]

    def in_layers(self, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[GroupMember]:
        """Layers of the given types whose input channels this group removes."""
        return [m for m in self.members if not m.is_out and isinstance(m.module, types)]


def view_of(name: str, group: Any, graph: tp.DependencyGraph) -> GroupView:
    """Describe a torch-pruning group in plain terms (module names, aligned indices)."""
    names = module_names(graph)
    members: list[GroupMember] = []
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # functional ops (add, relu, ...) carry no parameters
        members.append(
            GroupMember(
                name=names[module],
                module=module,
                is_out=graph.is_out_channel_pruning_fn(item.dep.handler),
                idxs=[int(i) for i in item.idxs],
                root_idxs=[int(i) for i in item.root_idxs],
            )
        )
    return GroupView(name=name, channels=len(group[0].idxs), members=members)


def current_views(model: nn.Module, graph: tp.DependencyGraph) -> list[GroupView]:
    """A view of every prunable group of ``model``, in :func:`current_groups` order."""
    return [view_of(name, group, graph) for name, group in current_groups(model, graph).items()]


@dataclass
class GroupInfo:
    """A row of ``autoprune inspect``."""

    name: str  # root module name
    channels: int
    macs_share: float  # share of total MACs in layers whose width this group sets
    layers: list[str]  # conv/linear layers touched (output and input side)


def discover_groups(
    model: nn.Module, example_inputs: torch.Tensor, excluded: dict[str, str] | None = None
) -> list[GroupInfo]:
    """All prunable groups of ``model`` with their channel count and share of MACs.

    A layer's MACs count toward every group that sets its input or output width, so shares
    of different groups overlap and do not add up to 1. ``excluded``, when given, is filled
    with the groups left out and why (:func:`excluded_groups`).
    """
    graph = build_graph(model, example_inputs)
    if excluded is not None:
        excluded.update(excluded_groups(model, graph))
    total, _, layer_macs, _ = count_ops_and_params(model, example_inputs, layer_wise=True)
    infos = []
    for view in current_views(model, graph):
        touched = {
            m.name: m.module for m in view.members if isinstance(m.module, (nn.Conv2d, nn.Linear))
        }
        macs = sum(float(layer_macs.get(mod) or 0.0) for mod in touched.values())
        infos.append(
            GroupInfo(view.name, view.channels, macs / max(float(total), 1.0), sorted(touched))
        )
    return infos


# --------------------------------------------------------------------------- channel counts


def channels_to_remove(rate: float, channels: int) -> int:
    """Channels removed from a group of ``channels`` at ``rate``; at least one channel is kept."""
    return min(channels - 1, max(0, round(rate * channels)))


def removal_schedule(total: int, steps: int) -> list[int]:
    """How many channels to remove at each of ``steps`` steps so they add up to ``total``."""
    cumulative = [round(total * (i + 1) / steps) for i in range(steps)]
    return [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
