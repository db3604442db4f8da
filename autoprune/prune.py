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
    run = _Run.start(model, graph, groups, policy, scoring, macs_model)
    for step in range(run.steps):
        run.step(step)
        if between_steps is not None and step < run.steps - 1:
            between_steps(model, step)
    return run.result()


@dataclass
class _Ledger:
    """Per group, what pruning did so far, in the base model's channel numbering."""

    survivors: dict[str, list[int]]  # the base channel each current channel is
    gone: dict[str, list[int]]  # base channels removed so far, in order
    done: dict[str, list[int]]  # channels removed at each step

    @classmethod
    def start(cls, base_channels: dict[str, int]) -> _Ledger:
        return cls(
            survivors={name: list(range(n)) for name, n in base_channels.items()},
            gone={name: [] for name in base_channels},
            done={name: [] for name in base_channels},
        )

    def remove(self, name: str, idxs: list[int]) -> None:
        """Record that current channels ``idxs`` of group ``name`` went."""
        dropped = set(idxs)
        self.gone[name] += [self.survivors[name][k] for k in idxs]
        self.survivors[name] = [c for k, c in enumerate(self.survivors[name]) if k not in dropped]


@dataclass
class _Run:
    """One :func:`apply`: the plan per group and step, and the steps that carry it out."""

    model: nn.Module
    graph: Any  # torch-pruning's DependencyGraph of ``model``
    groups: dict[str, Any]  # the current pruning groups, by name
    policy: Policy  # as given
    applied: Policy  # what is being applied (``auto`` resolved, rates as removed)
    ctx: ScoringContext
    macs_model: MacsModel | None
    base_channels: dict[str, int]
    todo: dict[str, list[int]]  # per group, channels to remove at each step
    ledger: _Ledger
    removed: dict[str, list[int]] = field(default_factory=dict)  # current indices at step 1
    score_seconds: float = 0.0
    # per group of ``criterion: auto``, the criterion loss-aware selection picked at each step
    picked: dict[str, list[str]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # ``auto`` groups no step has pruned yet

    @classmethod
    def start(
        cls,
        model: nn.Module,
        graph: Any,
        groups: dict[str, Any],
        policy: Policy,
        scoring: ScoringInputs | None,
        macs_model: MacsModel | None,
    ) -> _Run:
        all_channels = {name: len(g[0].idxs) for name, g in groups.items()}
        steps = policy.schedule.iterative_steps
        todo = {
            name: _plan(name, gp, all_channels[name], policy.channel_multiple, steps)
            for name, gp in policy.groups.items()
        }
        run = cls(
            model=model,
            graph=graph,
            groups=groups,
            policy=policy,
            applied=replace(policy, groups={k: replace(v) for k, v in policy.groups.items()}),
            ctx=ScoringContext.create(model, graph, policy, scoring),
            macs_model=macs_model,
            base_channels={name: all_channels[name] for name in todo},
            todo=todo,
            ledger=_Ledger.start({name: all_channels[name] for name in todo}),
        )
        # Loss-aware selection picks the criterion of each group the first step prunes on the
        # base model; every later step chooses again for the groups it prunes (:meth:`reselect`),
        # a group's first choice made at its first step that removes channels.
        started = time.perf_counter()
        auto = {
            n: view_of(n, groups[n], graph)
            for n, plan in todo.items()
            if plan[0] > 0 and run.applied.groups[n].criterion == "auto"
        }
        first = {n: todo[n][0] for n in auto}
        run.picked = {n: [c] for n, c in _resolve_auto(run.applied, auto, run.ctx, first).items()}
        run.pending = {
            n
            for n, plan in todo.items()
            if plan[0] == 0 and sum(plan) > 0 and run.applied.groups[n].criterion == "auto"
        }
        run.score_seconds += time.perf_counter() - started
        return run

    @property
    def steps(self) -> int:
        return self.policy.schedule.iterative_steps

    def step(self, step: int) -> None:
        """Score the groups this step prunes, decide how many channels each loses, remove them."""
        self.ctx.step = step
        last = step == self.steps - 1
        settling = last and self.policy.target_macs_ratio is not None
        if step > 0:
            self.groups = current_groups(self.model, self.graph)
        # The last step of a budgeted policy ranks every group it prunes: settling on the
        # target may take a channel more, or one fewer, from any of them.
        views = {
            name: view_of(name, self.groups[name], self.graph)
            for name, plan in self.todo.items()
            if plan[step] > 0 or (settling and sum(plan) > 0)
        }
        if step > 0:
            self.reselect(step, views)
        scores = self.scores(views)
        counts = self.counts(step, views, scores)
        for name, plan in self.ledger.done.items():
            plan.append(counts.get(name, 0))
        # Prune in a fixed (policy) order; groups are independent so the order does not change
        # which channels go, only the order of entries in the history.
        for name in views:
            if counts[name]:
                self.remove(step, name, scores[name], counts[name])

    def reselect(self, step: int, views: dict[str, GroupView]) -> None:
        """Loss-aware selection again, on the network as pruned so far, for each ``auto`` group
        this step prunes (LAASP chooses at every step); the others keep their last choice."""
        again = {
            n: views[n]
            for n in [*self.picked, *sorted(self.pending)]
            if n in views and self.todo[n][step] > 0
        }
        chosen: dict[str, str] = {}
        if again:
            started = time.perf_counter()
            chosen, pool = self.ctx.select_auto(
                list(again.values()), {n: self.todo[n][step] for n in again}
            )
            self.score_seconds += time.perf_counter() - started
            for name in self.pending & set(chosen):  # its first choice: the earlier steps' too
                self.applied.groups[name] = replace(
                    self.applied.groups[name], criterion=chosen[name], chosen_from=list(pool)
                )
                self.picked[name] = [chosen[name]] * step
                self.pending.discard(name)
        for name, picks in self.picked.items():
            picks.append(chosen.get(name, picks[-1]))

    def criterion(self, name: str) -> str:
        """Group ``name``'s criterion at the current step."""
        if name in self.picked:
            return self.picked[name][self.ctx.step]
        group = self.applied.groups[name]
        return group.step_criteria[self.ctx.step] if group.step_criteria else group.criterion

    def scores(self, views: dict[str, GroupView]) -> dict[str, torch.Tensor]:
        """Every view's channel scores (each criterion computed once for all its groups), checked."""
        if not views:
            return {}
        by_criterion: dict[str, list[GroupView]] = {}
        for name, view in views.items():
            by_criterion.setdefault(self.criterion(name), []).append(view)
        started = time.perf_counter()
        scores: dict[str, torch.Tensor] = {}
        for crit_name, crit_views in sorted(by_criterion.items()):
            scores.update(self.ctx.scores(crit_name, crit_views))
        self.score_seconds += time.perf_counter() - started
        for name, view in views.items():
            s = scores[name].detach().float().cpu()
            if s.shape != (view.channels,) or not torch.isfinite(s).all():
                raise RuntimeError(
                    f"criterion '{self.criterion(name)}' returned invalid scores "
                    f"for group {name}: shape {tuple(s.shape)}, expected ({view.channels},), finite"
                )
            scores[name] = s
        return scores

    def counts(
        self, step: int, views: dict[str, GroupView], scores: dict[str, torch.Tensor]
    ) -> dict[str, int]:
        """Channels each scored group loses at ``step``: the plan's, the class threshold's
        sparing, and on a budgeted policy's last step the count settled on the target."""
        last = step == self.steps - 1
        target = self.policy.target_macs_ratio
        multiple = self.policy.channel_multiple
        counts = {name: self.todo[name][step] for name in views}
        below = {
            name: int((scores[name] < threshold).sum())
            for name in views
            if (threshold := _class_threshold(self.applied, self.criterion(name))) is not None
        }
        if not last and any(below[n] < counts[n] for n in below):
            # The class-aware paper's loop: what the threshold spares now is offered again
            # after the next rescoring (and fine-tune, if any).
            for name, n_below in below.items():
                if n_below < counts[name]:
                    self.todo[name][step + 1] += counts[name] - n_below
                    counts[name] = n_below
        elif last and target is not None:
            assert self.macs_model is not None
            survivors = self.ledger.survivors
            # Current channels ranked lowest score first (ties by index), as base channels.
            orders = {
                name: [survivors[name][int(k)] for k in torch.argsort(scores[name], stable=True)]
                for name in views
            }
            max_rate = self.policy.scoring.max_rate
            counts = _settle(
                self.macs_model,
                target,
                counts,
                below,
                self.ledger.gone,
                orders,
                self.ctx.counters,
                max_rate if max_rate is not None else DEFAULT_MAX_RATE,
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
                        zero_ok=views[n].channels == self.base_channels[n],
                    )
                    for n, b in below.items()
                }
            )
        return counts

    def remove(self, step: int, name: str, scores: torch.Tensor, n: int) -> None:
        """Remove group ``name``'s ``n`` lowest-scored channels (ties by channel index)."""
        order = torch.argsort(scores, stable=True)
        idxs = sorted(int(i) for i in order[:n])
        if step == 0:
            self.removed[name] = idxs
        self.ledger.remove(name, idxs)
        first = self.groups[name][0]
        pruning_group = self.graph.get_pruning_group(
            first.dep.target.module, first.dep.handler, idxs
        )
        if not self.graph.check_pruning_group(pruning_group):
            raise RuntimeError(f"torch-pruning refused to prune {n} channels of group {name}")
        pruning_group.prune()

    def result(self) -> PruneResult:
        """What went, with the applied rates (and, where the steps did not split them evenly,
        the counts per step) saying so, so an exported policy replays to the same channels."""
        for name, lost in self.ledger.gone.items():
            n = len(lost)
            group = self.applied.groups[name]
            if channels_to_remove(group.rate, self.base_channels[name]) != n:
                group.rate = round(n / self.base_channels[name], 6)
            done = self.ledger.done[name]
            group.steps = (
                list(done) if self.steps > 1 and done != removal_schedule(n, self.steps) else None
            )
        for name, picks in self.picked.items():
            # ``criterion`` holds the first step's choice; the others only where they differ
            self.applied.groups[name].step_criteria = picks if len(set(picks)) > 1 else None
        return PruneResult(
            model=self.model,
            history=[list(h) for h in self.graph.pruning_history()],
            policy=self.applied,
            removed=self.removed,
            counters=dict(self.ctx.counters),
            score_seconds=self.score_seconds,
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


def _class_threshold(policy: Policy, criterion: str) -> float | None:
    """The class-importance threshold that limits removal by ``criterion``, if any (a group's
    criterion at the step: with ``auto`` it may differ from step to step)."""
    if criterion != "class_aware":
        return None
    return policy.class_aware.min_classes


def _resolve_auto(
    applied: Policy, views: dict[str, GroupView], ctx: ScoringContext, counts: dict[str, int]
) -> dict[str, str]:
    """Replace ``criterion: auto`` by the criterion loss-aware selection picks, per group,
    comparing proposals of ``counts`` channels; return the choices."""
    auto_views = [v for name, v in views.items() if applied.groups[name].criterion == "auto"]
    if not auto_views:
        return {}
    chosen, pool = ctx.select_auto(auto_views, counts)
    for name, criterion in chosen.items():
        applied.groups[name] = replace(
            applied.groups[name], criterion=criterion, chosen_from=list(pool)
        )
    return chosen


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
