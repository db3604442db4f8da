"""Structural surgery: ``apply(model, policy)`` removes channels; ``replay_history`` rebuilds.

This is the only module that removes channels. What a group is (tracing, group discovery, the
views criteria score) lives in :mod:`autoprune.groups`; which channels go is decided by the
criteria (:mod:`autoprune.criteria`) through a :class:`~autoprune.criteria.context.ScoringContext`.

``apply`` is deterministic: scores are computed on a fixed calibration set with a fixed seed,
ties are broken by channel index, and the removed indices are recorded in torch-pruning's
pruning history, which is what a checkpoint stores to rebuild the pruned architecture.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from autoprune import depth
from autoprune.criteria.context import ScoringContext, ScoringInputs
from autoprune.errors import UserError
from autoprune.groups import (
    GroupView,
    build_graph,
    channels_to_remove,
    current_groups,
    removal_schedule,
    view_of,
)
from autoprune.policy import GroupPolicy, Policy


@dataclass
class PruneResult:
    """What ``apply`` did."""

    model: nn.Module  # the pruned model (the same object that was passed in)
    history: list[list[Any]]  # torch-pruning pruning history: [[root name, is_out, idxs], ...]
    policy: Policy  # the applied policy (``auto`` replaced by the chosen criterion)
    # base-channel indices removed per group at step 1
    removed: dict[str, list[int]] = field(default_factory=dict)
    # e.g. calibration passes made by criteria
    counters: dict[str, int] = field(default_factory=dict)
    score_seconds: float = 0.0  # time spent scoring channels (criteria, auto selection)


def apply(
    model: nn.Module,
    policy: Policy,
    scoring: ScoringInputs | None = None,
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
        scoring: calibration data, device and score cache for data-driven criteria; ``None``
            allows only data-free criteria.
        example_inputs: a batch for tracing; defaults to zeros of ``policy.model.input_shape``.
        between_steps: called after every step but the last.

    Raises:
        UserError: the policy does not fit the model (unknown group/criterion, another model).
    """
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
    ctx = ScoringContext.create(model, graph, policy, scoring)
    removed: dict[str, list[int]] = {}
    scoring_started = time.perf_counter()
    # Loss-aware selection picks each group's criterion once, on the base model, even for a
    # group whose first step removes nothing.
    _resolve_auto(
        applied,
        {n: view_of(n, groups[n], graph) for n, plan in todo.items() if sum(plan) > 0},
        ctx,
    )
    score_seconds = time.perf_counter() - scoring_started
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
        scoring_started = time.perf_counter()
        for crit_name, crit_views in sorted(by_criterion.items()):
            scores.update(ctx.scores(crit_name, crit_views))
        score_seconds += time.perf_counter() - scoring_started
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
        score_seconds=score_seconds,
    )


def _class_threshold(policy: Policy, group: str) -> float | None:
    """The class-importance threshold that limits removal in ``group``, if any."""
    if policy.groups[group].criterion != "class_aware":
        return None
    return policy.class_aware.min_classes


def _resolve_auto(applied: Policy, views: dict[str, GroupView], ctx: ScoringContext) -> None:
    """Replace ``criterion: auto`` by the criterion loss-aware selection picks, per group."""
    auto_views = [v for name, v in views.items() if applied.groups[name].criterion == "auto"]
    if not auto_views:
        return
    chosen, pool = ctx.select_auto(auto_views)
    for name, criterion in chosen.items():
        applied.groups[name] = GroupPolicy(
            rate=applied.groups[name].rate, criterion=criterion, chosen_from=list(pool)
        )


def replay_history(
    model: nn.Module, policy: Policy, history: list[list[Any]], example_inputs: torch.Tensor
) -> nn.Module:
    """Rebuild a pruned architecture from the base architecture and a pruning history."""
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
