"""Structural surgery: ``apply(model, policy)`` removes channels; ``replay_history`` rebuilds.

This is the only module that removes channels. What a group is (tracing, group discovery, the
views criteria score) lives in :mod:`autoprune.groups`; which channels go is decided by the
criteria (:mod:`autoprune.criteria`) through a :class:`~autoprune.criteria.context.ScoringContext`.

``apply`` is deterministic: scores are computed on a fixed calibration set with a fixed seed,
ties are broken by channel index, and the removed indices are recorded in torch-pruning's
pruning history, which is what a checkpoint stores to rebuild the pruned architecture.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from autoprune import criteria, depth
from autoprune.budget import ChannelBudget, allowed_removal
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
from autoprune.macs import MacsModel, count_macs_params
from autoprune.policy import DEFAULT_MAX_RATE, GroupPolicy, Policy


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

    @property
    def removed_sha256(self) -> str:
        """Digest of every channel and block removed (see :func:`removed_digest`)."""
        return removed_digest(self.history, self.policy.depth.drop_blocks)


def removed_digest(history: list[list[Any]], drop_blocks: list[str]) -> str:
    """``sha256:...`` of the removed blocks and of the channels removed at every step, in order.

    Two runs with equal digests removed exactly the same channels from the same groups, so a
    replay whose digest matches its trial's rebuilt the trial's architecture and weights.
    """
    canonical = {
        "blocks": list(drop_blocks),
        "history": [[str(n), bool(o), sorted(int(i) for i in idx)] for n, o, idx in history],
    }
    raw = json.dumps(canonical, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def apply(
    model: nn.Module,
    policy: Policy,
    scoring: ScoringInputs | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    between_steps: Callable[[nn.Module, int], None] | None = None,
    macs_model: MacsModel | None = None,
) -> PruneResult:
    """Prune ``model`` in place according to ``policy`` and return what was done.

    The order of operations: drop the policy's residual blocks (``depth``), trace the
    dependency graph, then for each of ``schedule.iterative_steps`` steps score every group
    that still has channels to lose with its criterion (computing each criterion once per step
    for all the groups that use it) and remove the lowest-scored channels. Between steps
    ``between_steps(model, step)`` may fine-tune. With a MACs target, the last step's counts
    are settled by the :class:`~autoprune.budget.ChannelBudget` on the exact count of the
    ranked channels, so the pruned model lands on the target however a group's channels are
    spread over its layers.

    Args:
        model: the base model, unpruned, with its weights loaded.
        policy: rates here are final (already projected to the budget, see ``budget``).
        scoring: calibration data, device and score cache for data-driven criteria; ``None``
            allows only data-free criteria.
        example_inputs: a batch for tracing; defaults to zeros of ``policy.model.input_shape``.
        between_steps: called after every step but the last.
        macs_model: a :class:`MacsModel` of ``model`` after its blocks are dropped (saves a
            trace when the policy has a single step).

    Raises:
        UserError: the policy does not fit the model (unknown group/criterion, another model).
    """
    inputs = example_inputs if example_inputs is not None else policy.model.example_inputs()
    target = policy.target_macs_ratio
    # With a MACs target the last step is counted against it, relative to the base's MACs.
    base_macs = None
    if target is not None and macs_model is None:
        base_macs = float(count_macs_params(model, inputs)[0])
    if policy.depth.drop_blocks:
        depth.drop_blocks(model, policy.depth.drop_blocks, inputs)
    graph = build_graph(model, inputs)
    groups = current_groups(model, graph)
    policy.validate_against(policy.model, list(groups))
    criteria.check_policy(policy)
    if target is not None and macs_model is None:
        macs_model = MacsModel(model, inputs, base_macs, graph=graph)
    base_channels = {name: len(g[0].idxs) for name, g in groups.items()}
    multiple = policy.channel_multiple
    steps = policy.schedule.iterative_steps
    todo = {
        name: _plan(name, gp, base_channels[name], multiple, steps)
        for name, gp in policy.groups.items()
    }
    done: dict[str, list[int]] = {name: [] for name in todo}
    # per group, the base channel each current channel is, and the base channels removed so far
    survivors = {name: list(range(base_channels[name])) for name in todo}
    gone: dict[str, list[int]] = {name: [] for name in todo}
    applied = replace(policy, groups={k: replace(v) for k, v in policy.groups.items()})
    ctx = ScoringContext.create(model, graph, policy, scoring)
    removed: dict[str, list[int]] = {}
    scoring_started = time.perf_counter()
    # Loss-aware selection picks each group's criterion once, on the base model, even for a
    # group whose first step removes nothing.
    _resolve_auto(
        applied,
        {
            n: view_of(n, groups[n], graph)
            for n, plan in todo.items()
            if sum(plan) > 0 and applied.groups[n].criterion == "auto"
        },
        ctx,
    )
    score_seconds = time.perf_counter() - scoring_started
    for step in range(steps):
        ctx.step = step
        last = step == steps - 1
        settling = last and target is not None
        if step > 0:
            groups = current_groups(model, graph)
        # The last step of a budgeted policy ranks every group it prunes: settling on the
        # target may take a channel more, or one fewer, from any of them.
        views = {
            name: view_of(name, groups[name], graph)
            for name, plan in todo.items()
            if plan[step] > 0 or (settling and sum(plan) > 0)
        }
        scores: dict[str, torch.Tensor] = {}
        if views:
            by_criterion: dict[str, list[GroupView]] = {}
            for name, view in views.items():
                by_criterion.setdefault(applied.groups[name].criterion, []).append(view)
            scoring_started = time.perf_counter()
            for crit_name, crit_views in sorted(by_criterion.items()):
                scores.update(ctx.scores(crit_name, crit_views))
            score_seconds += time.perf_counter() - scoring_started
        for name, view in views.items():
            s = scores[name].detach().float().cpu()
            if s.shape != (view.channels,) or not torch.isfinite(s).all():
                raise RuntimeError(
                    f"criterion '{applied.groups[name].criterion}' returned invalid scores for group {name}: "
                    f"shape {tuple(s.shape)}, expected ({view.channels},), finite"
                )
            scores[name] = s
        counts = {name: todo[name][step] for name in views}
        below = {
            name: int((scores[name] < threshold).sum())
            for name in views
            if (threshold := _class_threshold(applied, name)) is not None
        }
        if not last and any(below[n] < counts[n] for n in below):
            # The class-aware paper's loop: what the threshold spares now is offered again
            # after the next rescoring (and fine-tune, if any).
            for name, n_below in below.items():
                if n_below < counts[name]:
                    todo[name][step + 1] += counts[name] - n_below
                    counts[name] = n_below
        elif settling:
            assert macs_model is not None and target is not None
            # Current channels ranked lowest score first (ties by index), as base channels.
            orders = {
                name: [survivors[name][int(k)] for k in torch.argsort(scores[name], stable=True)]
                for name in views
            }
            counts = _settle(
                macs_model,
                target,
                counts,
                below,
                gone,
                orders,
                ctx.counters,
                policy.scoring.max_rate
                if policy.scoring.max_rate is not None
                else DEFAULT_MAX_RATE,
                multiple,
            )
        elif last and any(below[n] < counts[n] for n in below):
            # No budget to keep: the threshold caps the rates as written.
            counts.update(
                {
                    n: allowed_removal(
                        min(counts[n], b),
                        views[n].channels,
                        multiple,
                        zero_ok=views[n].channels == base_channels[n],
                    )
                    for n, b in below.items()
                }
            )
        for name, plan in done.items():
            plan.append(counts.get(name, 0))
        # Prune in a fixed (policy) order; groups are independent so the order does not change
        # which channels go, only the order of entries in the history.
        for name in views:
            n = counts[name]
            if n == 0:
                continue
            order = torch.argsort(scores[name], stable=True)  # lowest first; ties by channel index
            idxs = sorted(int(i) for i in order[:n])
            if step == 0:
                removed[name] = idxs
            dropped = set(idxs)
            gone[name] += [survivors[name][k] for k in idxs]
            survivors[name] = [c for k, c in enumerate(survivors[name]) if k not in dropped]
            root = groups[name][0].dep.target.module
            pruning_group = graph.get_pruning_group(root, groups[name][0].dep.handler, idxs)
            if not graph.check_pruning_group(pruning_group):
                raise RuntimeError(f"torch-pruning refused to prune {n} channels of group {name}")
            pruning_group.prune()
        if between_steps is not None and not last:
            between_steps(model, step)
    # The applied rates (and, where the steps did not split them evenly, the counts per step)
    # say what went, so an exported policy replays to the same channels.
    for name, lost in gone.items():
        n = len(lost)
        if channels_to_remove(applied.groups[name].rate, base_channels[name]) != n:
            applied.groups[name].rate = round(n / base_channels[name], 6)
        if steps > 1 and done[name] != removal_schedule(n, steps):
            applied.groups[name].steps = list(done[name])
        else:
            applied.groups[name].steps = None
    return PruneResult(
        model=model,
        history=[list(h) for h in graph.pruning_history()],
        policy=applied,
        removed=removed,
        counters=dict(ctx.counters),
        score_seconds=score_seconds,
    )


def _plan(name: str, gp: GroupPolicy, channels: int, multiple: int, steps: int) -> list[int]:
    """Channels group ``name`` loses at each iterative step: the policy's record, or an even split."""
    total = allowed_removal(channels_to_remove(gp.rate, channels), channels, multiple)
    if gp.steps is None:
        return removal_schedule(total, steps)
    if len(gp.steps) != steps or sum(gp.steps) != channels_to_remove(gp.rate, channels):
        raise UserError(
            f"groups.{name}.steps = {gp.steps} does not fit rate {gp.rate} of {channels} channels "
            f"over {steps} iterative steps: it must list {steps} counts adding up to "
            f"{channels_to_remove(gp.rate, channels)}; remove 'steps' to split the rate evenly"
        )
    return list(gp.steps)


def _settle(
    mm: MacsModel,
    target: float,
    counts: dict[str, int],
    below: dict[str, int],
    gone: dict[str, list[int]],
    orders: dict[str, list[int]],
    counters: dict[str, int],
    max_rate: float,
    multiple: int = 1,
) -> dict[str, int]:
    """The last step's removal counts, settled on the exact MACs of the ranked channels.

    ``mm`` is the MACs model of the model before any step; ``gone`` the base channels earlier
    steps removed; ``orders`` the base channels each group would lose next, lowest score first.
    Counts the plan holds are kept when their exact count meets the target (always, where each
    layer of a group holds all of its channels); otherwise the
    :class:`~autoprune.budget.ChannelBudget` walks and refines them on the exact count, above
    what earlier steps removed.

    The class threshold decides which channels are candidates, the budget how many go: a
    class-aware group loses at most its channels below the threshold, and the channels it is
    spared go from the other groups this policy prunes (``counters['class_threshold_spared']``).
    Only when those cannot reach the target does the budget win, the lowest class counts going
    first (``counters['class_threshold_overridden']``).

    Raises:
        UserError: no counts land within the tolerance of the target (too coarse a model).
    """
    names = mm.group_names
    floors = [len(gone.get(n, ())) for n in names]
    planned = [floor + counts.get(n, 0) for n, floor in zip(names, floors, strict=True)]
    rate_caps = [
        max(floor, min(c - 1, int(max_rate * c + 1e-9))) if n in counts else floor
        for n, c, floor in zip(names, mm.channels, floors, strict=True)
    ]
    threshold_caps = [
        min(cap, floor + below[n]) if n in below else cap
        for n, cap, floor in zip(names, rate_caps, floors, strict=True)
    ]
    ranked = {i: gone.get(n, []) + orders[n] for i, n in enumerate(names) if n in orders}
    owner = ChannelBudget(mm, target, threshold_caps, multiple, floors, mm.counter(ranked))
    settled = owner.fit(planned)
    spared = sum(max(0, counts[n] - b) for n, b in below.items())
    if settled is None and spared:
        owner.caps = rate_caps  # the budget wins over the threshold
        settled = owner.fit(planned)
        if settled is not None:
            counters["class_threshold_overridden"] = counters.get(
                "class_threshold_overridden", 0
            ) + sum(
                max(0, settled[i] - floors[i] - below[n]) for i, n in enumerate(names) if n in below
            )
    elif spared:
        counters["class_threshold_spared"] = counters.get("class_threshold_spared", 0) + spared
    if settled is None or not owner.accepts(settled):
        reached = owner.ratio(settled if settled is not None else planned)
        raise UserError(
            f"target_macs_ratio {target:.3f} is unreachable within the tolerance for this "
            f"policy's ranked channels: the closest count is a MACs ratio of {reached:.3f}; "
            "give more groups a rate > 0 or choose another target"
        )
    return {n: settled[names.index(n)] - floors[names.index(n)] for n in counts}


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
        applied.groups[name] = replace(
            applied.groups[name], criterion=criterion, chosen_from=list(pool)
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
