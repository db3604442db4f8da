"""Structural pruning: DepGraph groups and ``apply(model, policy)`` — the only torch-pruning caller.

A *group* is a set of coupled channels that must be removed together (e.g. every convolution
writing into one residual stream). Policies address groups by the name of their root module,
the first layer torch-pruning's ``get_all_groups`` yields for them. The classifier's output
layer is never pruned: its outputs are the classes.

``apply`` is deterministic: scores are computed on a fixed calibration set with a fixed seed,
ties are broken by channel index, and the removed indices are recorded in torch-pruning's
pruning history, which is what a checkpoint stores to rebuild the pruned architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UserError
from autoprune.policy import GroupPolicy, Policy

PRUNABLE_ROOTS = (nn.Conv2d, nn.Linear)


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The output layer (its width is the number of classes): the last Linear, else the last conv."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return [linears[-1]]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [convs[-1]] if convs else []


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning dependency graph (eval mode, no gradient kept)."""
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    model.train(was_training)
    return graph


def current_groups(model: nn.Module, graph: tp.DependencyGraph) -> dict[str, Any]:
    """Prunable groups keyed by root module name, in torch-pruning's (deterministic) order."""
    groups: dict[str, Any] = {}
    for group in graph.get_all_groups(
        ignored_layers=classifier_layers(model), root_module_types=PRUNABLE_ROOTS
    ):
        root = group[0].dep.target.module
        groups[graph._module2name[root]] = group
    return groups


@dataclass
class GroupMember:
    """One layer touched by a group."""

    name: str  # module name in the model
    module: nn.Module
    is_out: bool  # True: the group sets this layer's output channels; False: its inputs
    idxs: list[int]  # layer channel indices, aligned with ``root_idxs``
    root_idxs: list[int]  # positions in the group's channel vector


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
    members: list[GroupMember] = []
    channels = len(group[0].idxs)
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in graph._module2name:
            continue  # functional ops (add, relu, ...) carry no parameters
        members.append(
            GroupMember(
                name=graph._module2name[module],
                module=module,
                is_out=graph.is_out_channel_pruning_fn(item.dep.handler),
                idxs=[int(i) for i in item.idxs],
                root_idxs=[int(i) for i in item.root_idxs],
            )
        )
    return GroupView(name=name, channels=channels, members=members)


@dataclass
class GroupInfo:
    """A row of ``autoprune inspect``."""

    name: str  # root module name
    channels: int
    macs_share: float  # share of total MACs in layers whose width this group sets
    layers: list[str]  # conv/linear layers touched (output and input side)


def discover_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[GroupInfo]:
    """All prunable groups of ``model`` with their channel count and share of MACs.

    A layer's MACs count toward every group that sets its input or output width, so shares
    of different groups overlap and do not add up to 1.
    """
    graph = build_graph(model, example_inputs)
    total, _, layer_macs, _ = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
    infos = []
    for name, group in current_groups(model, graph).items():
        view = view_of(name, group, graph)
        touched = {
            m.name: m.module for m in view.members if isinstance(m.module, (nn.Conv2d, nn.Linear))
        }
        macs = sum(float(layer_macs.get(mod) or 0.0) for mod in touched.values())
        infos.append(GroupInfo(name, view.channels, macs / max(float(total), 1.0), sorted(touched)))
    return infos


# --------------------------------------------------------------------------- apply


@dataclass
class PruneResult:
    """What ``apply`` did."""

    model: nn.Module  # the pruned model (the same object that was passed in)
    history: list[list[Any]]  # torch-pruning pruning history: [[root name, is_out, idxs], ...]
    policy: Policy  # the applied policy (``auto`` replaced by the chosen criterion)
    removed: dict[str, list[int]] = field(
        default_factory=dict
    )  # base-channel indices per group, step 1
    counters: dict[str, int] = field(
        default_factory=dict
    )  # e.g. calibration passes made by criteria


def removal_schedule(total: int, steps: int) -> list[int]:
    """How many channels to remove at each of ``steps`` steps so they add up to ``total``."""
    cumulative = [round(total * (i + 1) / steps) for i in range(steps)]
    return [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]


def channels_to_remove(rate: float, channels: int) -> int:
    """Channels removed from a group of ``channels`` at ``rate``; at least one channel is kept."""
    return min(channels - 1, max(0, round(rate * channels)))


def apply(
    model: nn.Module,
    policy: Policy,
    scoring: Any | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    between_steps: Callable[[nn.Module, int], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place according to ``policy`` and return what was done.

    The order of operations: drop the policy's residual blocks (``depth``), trace the
    dependency graph, then for each of ``schedule.iterative_steps`` steps score every group
    that still has channels to lose with its criterion (computing each criterion once per step
    for all the groups that use it) and remove the lowest-scored channels. Between steps
    ``between_steps(model, step)`` may fine-tune.

    Args:
        model: the base model, unpruned, with its weights loaded.
        policy: rates here are final (already projected to the budget, see ``budget``).
        scoring: a :class:`autoprune.criteria.ScoringContext` factory input; ``None`` allows only
            data-free criteria.
        example_inputs: a batch for tracing; defaults to zeros of ``policy.model.input_shape``.
        between_steps: called after every step but the last.

    Raises:
        UserError: the policy does not fit the model (unknown group/criterion, another model).
    """
    from autoprune import criteria, depth

    inputs = example_inputs if example_inputs is not None else policy.model.example_inputs()
    if policy.depth.drop_blocks:
        depth.drop_blocks(model, policy.depth.drop_blocks, inputs)
    graph = build_graph(model, inputs)
    groups = current_groups(model, graph)
    policy.validate_against(policy.model, list(groups))
    base_channels = {name: len(g[0].idxs) for name, g in groups.items()}
    todo = {
        name: removal_schedule(
            channels_to_remove(gp.rate, base_channels[name]), policy.schedule.iterative_steps
        )
        for name, gp in policy.groups.items()
    }
    applied = replace(policy, groups={k: replace(v) for k, v in policy.groups.items()})
    ctx = criteria.ScoringContext.create(model, graph, policy, scoring)
    removed: dict[str, list[int]] = {}
    # Loss-aware selection picks each group's criterion once, on the base model, even for a
    # group whose first step removes nothing.
    _resolve_auto(
        applied,
        {n: view_of(n, groups[n], graph) for n, plan in todo.items() if sum(plan) > 0},
        ctx,
    )
    for step in range(policy.schedule.iterative_steps):
        ctx.step = step
        if step > 0:
            groups = current_groups(model, graph)
        views = {
            name: view_of(name, groups[name], graph)
            for name, plan in todo.items()
            if plan[step] > 0
        }
        if not views:
            continue
        by_criterion: dict[str, list[GroupView]] = {}
        for name, view in views.items():
            by_criterion.setdefault(applied.groups[name].criterion, []).append(view)
        scores: dict[str, torch.Tensor] = {}
        for crit_name, crit_views in sorted(by_criterion.items()):
            scores.update(ctx.scores(crit_name, crit_views))
        # Prune in a fixed (policy) order; groups are independent so the order does not change
        # which channels go, only the order of entries in the history.
        for name, view in views.items():
            s = scores[name].detach().float().cpu()
            if s.shape != (view.channels,) or not torch.isfinite(s).all():
                raise RuntimeError(
                    f"criterion '{applied.groups[name].criterion}' returned invalid scores for group {name}: "
                    f"shape {tuple(s.shape)}, expected ({view.channels},), finite"
                )
            n = todo[name][step]
            threshold = _class_threshold(applied, name)
            if threshold is not None:
                # Class-importance threshold: only channels important for fewer than
                # ``min_classes`` classes go; the rate caps how many. What this step leaves
                # is offered again after the next rescoring (and fine-tune, if any).
                below = int((s < threshold).sum())
                if below < n:
                    if step + 1 < len(todo[name]):
                        todo[name][step + 1] += n - below
                    n = below
                    if n == 0:
                        continue
            order = torch.argsort(s, stable=True)  # lowest first; ties by channel index
            idxs = sorted(int(i) for i in order[:n])
            if step == 0:
                removed[name] = idxs
            root = groups[name][0].dep.target.module
            pruning_group = graph.get_pruning_group(root, groups[name][0].dep.handler, idxs)
            if not graph.check_pruning_group(pruning_group):
                raise RuntimeError(f"torch-pruning refused to prune {n} channels of group {name}")
            pruning_group.prune()
        if between_steps is not None and step < policy.schedule.iterative_steps - 1:
            between_steps(model, step)
    return PruneResult(
        model=model,
        history=[list(h) for h in graph.pruning_history()],
        policy=applied,
        removed=removed,
        counters=dict(ctx.counters),
    )


def _class_threshold(policy: Policy, group: str) -> float | None:
    """The class-importance threshold that limits removal in ``group``, if any."""
    if policy.groups[group].criterion != "class_aware":
        return None
    return policy.class_aware.min_classes


def _resolve_auto(applied: Policy, views: dict[str, GroupView], ctx: Any) -> None:
    """Replace ``criterion: auto`` by the criterion loss-aware selection picks, per group."""
    auto_views = [v for name, v in views.items() if applied.groups[name].criterion == "auto"]
    if not auto_views:
        return
    chosen, pool = ctx.select_auto(auto_views, {v.name: applied.groups[v.name] for v in auto_views})
    for name, criterion in chosen.items():
        applied.groups[name] = GroupPolicy(
            rate=applied.groups[name].rate, criterion=criterion, chosen_from=list(pool)
        )


def replay_history(
    model: nn.Module, policy: Policy, history: list[list[Any]], example_inputs: torch.Tensor
) -> nn.Module:
    """Rebuild a pruned architecture from the base architecture and a pruning history."""
    from autoprune import depth

    if policy.depth.drop_blocks:
        depth.drop_blocks(model, policy.depth.drop_blocks, example_inputs)
    graph = build_graph(model, example_inputs)
    try:
        graph.load_pruning_history(
            [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history]
        )
    except (AttributeError, IndexError) as exc:
        raise UserError(
            f"the pruning history does not fit model {policy.model.name} ({exc}): the checkpoint is damaged"
        ) from exc
    return model
