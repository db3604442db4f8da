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

from autoprune import depth
from autoprune.budget import SAFETY_MARGIN, allowed_removal, next_removal, refine
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
    target = policy.target_macs_ratio
    # With a MACs target, channels the class threshold spares are taken elsewhere (see
    # ``_keep_budget``), which needs the base MACs the target is relative to.
    base_macs = (
        float(count_macs_params(model, inputs)[0])
        if target is not None and policy.class_aware.min_classes is not None
        else None
    )
    if policy.depth.drop_blocks:
        depth.drop_blocks(model, policy.depth.drop_blocks, inputs)
    graph = build_graph(model, inputs)
    groups = current_groups(model, graph)
    policy.validate_against(policy.model, list(groups))
    base_channels = {name: len(g[0].idxs) for name, g in groups.items()}
    multiple = policy.channel_multiple
    todo = {
        name: removal_schedule(
            allowed_removal(
                channels_to_remove(gp.rate, base_channels[name]), base_channels[name], multiple
            ),
            policy.schedule.iterative_steps,
        )
        for name, gp in policy.groups.items()
    }
    applied = replace(policy, groups={k: replace(v) for k, v in policy.groups.items()})
    ctx = ScoringContext.create(model, graph, policy, scoring)
    removed: dict[str, list[int]] = {}
    removed_total = dict.fromkeys(todo, 0)
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
        counts = {name: todo[name][step] for name in views}
        for name, view in views.items():
            s = scores[name].detach().float().cpu()
            if s.shape != (view.channels,) or not torch.isfinite(s).all():
                raise RuntimeError(
                    f"criterion '{applied.groups[name].criterion}' returned invalid scores for group {name}: "
                    f"shape {tuple(s.shape)}, expected ({view.channels},), finite"
                )
            scores[name] = s
        below = {
            name: int((scores[name] < threshold).sum())
            for name in views
            if (threshold := _class_threshold(applied, name)) is not None
        }
        if any(below[n] < counts[n] for n in below):
            if step + 1 < policy.schedule.iterative_steps:
                # The class-aware paper's loop: what the threshold spares now is offered again
                # after the next rescoring (and fine-tune, if any).
                for name, n_below in below.items():
                    if n_below < counts[name]:
                        todo[name][step + 1] += counts[name] - n_below
                        counts[name] = n_below
            elif target is None:
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
            else:
                assert base_macs is not None
                counts = _keep_budget(
                    model,
                    inputs,
                    base_macs,
                    target,
                    counts,
                    below,
                    base_channels,
                    ctx.counters,
                    policy.scoring.max_rate if policy.scoring.max_rate is not None else 0.9,
                    multiple,
                )
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
            removed_total[name] += n
            root = groups[name][0].dep.target.module
            pruning_group = graph.get_pruning_group(root, groups[name][0].dep.handler, idxs)
            if not graph.check_pruning_group(pruning_group):
                raise RuntimeError(f"torch-pruning refused to prune {n} channels of group {name}")
            pruning_group.prune()
        if between_steps is not None and step < policy.schedule.iterative_steps - 1:
            between_steps(model, step)
    if target is not None:
        # The applied rates say what went, so an exported policy replays to the same channels.
        for name, n in removed_total.items():
            if channels_to_remove(applied.groups[name].rate, base_channels[name]) != n:
                applied.groups[name].rate = round(n / base_channels[name], 6)
    return PruneResult(
        model=model,
        history=[list(h) for h in graph.pruning_history()],
        policy=applied,
        removed=removed,
        counters=dict(ctx.counters),
        score_seconds=score_seconds,
    )


def _keep_budget(
    model: nn.Module,
    inputs: torch.Tensor,
    base_macs: float,
    target: float,
    counts: dict[str, int],
    below: dict[str, int],
    base_channels: dict[str, int],
    counters: dict[str, int],
    max_rate: float,
    multiple: int = 1,
) -> dict[str, int]:
    """Removal counts of the last step that honour the class threshold and keep the MACs target.

    With ``multiple`` > 1 every count leaves a multiple of it (see ``budget.allowed_removal``).

    The rule: the threshold decides which channels are candidates, the budget how many go. A
    class-aware group loses at most its channels below the threshold; the channels it is spared
    are taken from the policy's other pruned groups (each in proportion to its planned share,
    under the rate cap) and from class-aware groups with candidates to spare. Only when those
    cannot reach the target does the budget win: the plan goes as projected, the lowest class
    counts first, and ``counters['class_threshold_overridden']`` says how many channels at or
    above the threshold went.
    """
    mm = MacsModel(model, inputs, base_macs)
    names = mm.group_names
    planned = [counts.get(n, 0) for n in names]
    # A group an earlier step pruned must end on a multiple too: losing nothing more is no
    # option for it unless it already is one (see ``budget.allowed_removal``).
    zero_ok = [base_channels.get(n, c) == c for n, c in zip(names, mm.channels, strict=True)]
    caps = []
    for i, (n, current) in enumerate(zip(names, mm.channels, strict=True)):
        if planned[i] == 0:
            caps.append(0)  # only groups this step prunes take channels
        elif n in below:
            caps.append(allowed_removal(min(below[n], current - 1), current, multiple, zero_ok[i]))
        else:
            already = base_channels[n] - current
            cap = max(0, min(current - 1, int(max_rate * base_channels[n] + 1e-9) - already))
            caps.append(allowed_removal(cap, current, multiple, zero_ok[i]))
    removed = [
        allowed_removal(min(p, c), current, multiple, ok)
        for p, c, current, ok in zip(planned, caps, mm.channels, zero_ok, strict=True)
    ]
    aim = target - SAFETY_MARGIN

    def step_up(i: int) -> int | None:
        nxt = next_removal(removed[i], mm.channels[i], multiple)
        return nxt if nxt is not None and nxt <= caps[i] else None

    while mm.ratio(removed) > aim:
        open_groups = [i for i in range(len(names)) if step_up(i) is not None]
        if not open_groups:
            overridden = sum(max(0, counts[n] - b) for n, b in below.items())
            counters["class_threshold_overridden"] = (
                counters.get("class_threshold_overridden", 0) + overridden
            )
            return counts
        best = min(open_groups, key=lambda i: ((removed[i] + 1) / planned[i], i))
        removed[best] = step_up(best) or removed[best] + 1
    removed = refine(mm, removed, caps, aim, multiple, zero_ok)
    spared = sum(max(0, counts[n] - b) for n, b in below.items())
    counters["class_threshold_spared"] = counters.get("class_threshold_spared", 0) + spared
    return {n: removed[names.index(n)] for n in counts}


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
