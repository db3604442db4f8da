"""How many channels each group loses: the one owner of that count, and budget projection.

:class:`ChannelBudget` decides how many channels go so that a pruned model lands on its MACs
target. Projection (:func:`project_to_budget`) asks it before any channel is scored, with
counts alone, and surgery (:mod:`autoprune.prune`) asks it again once every group's channels
are ranked, with the exact count of the channels that would go (:meth:`MacsModel.counter`). Rate
caps and class-importance thresholds reach it as per-group caps, channel multiples as the steps
it moves in, and iterative steps as the channels already gone; so the rule exists once and the
count a trial is checked against is the count its surgery made.

Projection scales a policy's raw rates by one multiplier found by bisection, capped per group;
a walk then removes one channel (or one multiple's worth) at a time in the order the scaling
would reach them, and a refinement trades channels between groups, so the result lands at most
about one channel's worth of MACs under the target.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from autoprune.depth import drop_blocks
from autoprune.errors import UserError
from autoprune.groups import channels_to_remove
from autoprune.macs import MacsModel, count_macs_params
from autoprune.policy import DEFAULT_MAX_RATE, TARGET_TOLERANCE, GroupPolicy, Policy

DEFAULT_TOLERANCE = TARGET_TOLERANCE  # |achieved - target| MACs ratio
# Projection aims this far under the target so the counted MACs never exceed a budget that
# equals the target (the analytic count and torch-pruning's agree to ~1e-4).
SAFETY_MARGIN = 0.001
# When a walk ends further than this under the target, trade channels between groups to close in.
REFINE_GAP = 0.002
# When trading channels still leaves the target out of tolerance (coarse channel multiples on a
# small model), every allowed combination of counts is tried if there are at most this many.
EXHAUSTIVE_LIMIT = 20_000
RATE_DECIMALS = 6
# Positive raw rates are floored to this (see ``project_to_budget``).
MIN_POSITIVE_RATE = 1e-9


def project_to_budget(
    policy: Policy,
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    *,
    base_macs: float | None = None,
    max_rate: float | dict[str, float] = DEFAULT_MAX_RATE,
    macs_model: MacsModel | None = None,
) -> Policy:
    """Scale the policy's rates so the pruned model's MACs ratio lands on its target.

    With ``policy.channel_multiple`` > 1 every group keeps a multiple of it (or all its
    channels): the scaling, the walk and the refinement move in those steps, so the target is
    met by allowed channel counts only (coarser steps can leave a larger gap under it).

    Args:
        policy: raw rates per group and ``target_macs_ratio``; without a target the policy is
            returned unchanged.
        model: the model the rates apply to (after any block removal), unpruned.
        example_inputs: a batch for tracing; defaults to zeros of the policy's input shape.
        base_macs: MACs of the unpruned base model when ``model`` already lost blocks, so the
            ratio stays relative to the base.
        max_rate: cap on any group's rate (a number, or per group name).
        macs_model: a prebuilt :class:`MacsModel` of ``model`` (saves tracing when projecting
            many policies for one model).

    Returns:
        A copy of the policy whose rates are exact channel fractions (``removed / channels``).

    Raises:
        UserError: the target cannot be reached with the caps (says what the caps allow).
    """
    if policy.target_macs_ratio is None:
        return policy
    wanted = policy.target_macs_ratio  # what the user asked for; messages name this one
    target = wanted - SAFETY_MARGIN
    inputs = example_inputs if example_inputs is not None else policy.model.example_inputs()
    if macs_model is None and policy.depth.drop_blocks:
        # Channel rates apply to the model left after block removal; ratios stay relative to the base.
        if base_macs is None:
            base_macs = float(count_macs_params(model, inputs)[0])
        model = drop_blocks(copy.deepcopy(model), policy.depth.drop_blocks, inputs)
    mm = macs_model or MacsModel(model, inputs, base_macs)
    names, channels = mm.group_names, mm.channels
    unknown = [g for g in policy.groups if g not in names]
    if unknown:
        raise UserError(
            f"policy names group(s) {', '.join(unknown)} that the model does not have; allowed: {', '.join(names)}"
        )
    # A positive rate far below one channel's worth only orders the group last; flooring it
    # keeps the scale multipliers below finite (a rate of 1e-300 would overflow them).
    raw = [
        max(policy.groups[n].rate, MIN_POSITIVE_RATE)
        if n in policy.groups and policy.groups[n].rate > 0
        else 0.0
        for n in names
    ]
    multiple = policy.channel_multiple
    caps = _rate_caps(names, channels, max_rate, multiple)
    cap_text = (
        "the per-group caps" if isinstance(max_rate, dict) else f"the per-group cap of {max_rate}"
    )
    # Only groups the policy prunes may take channels: a rate of 0 means "leave it alone".
    owner = ChannelBudget(
        mm, wanted, [cap if r > 0 else 0 for r, cap in zip(raw, caps, strict=True)], multiple
    )
    nothing_removed = mm.ratio([0] * len(names))
    as_written = removed_counts(policy, mm)
    within_caps = all(owner.allowed(i, n) == n for i, n in enumerate(as_written))
    # Unpruned, the analytic count is exact (it is torch-pruning's count of this very model), so
    # no safety margin applies: a target of 1.0 (or one at or above what block removal leaves)
    # prunes no channel.
    if nothing_removed <= wanted:
        removed = [0] * len(names)
    elif within_caps and (policy.removed_sha256 is not None or owner.accepts(as_written)):
        # A policy this function produced is a fixed point: rescaling it could move channels
        # between groups for no gain. An applied policy (one that records the channels its
        # trial removed) holds the counts its surgery settled on, counted exactly: it is
        # replayed as written, and the digest check after surgery says if anything differs.
        removed = as_written
    else:
        removed = _scaled_counts(mm, owner, raw, caps, target, cap_text)
    return _with_counts(policy, names, channels, removed, as_written)


def _rate_caps(
    names: Sequence[str], channels: Sequence[int], max_rate: float | dict[str, float], multiple: int
) -> list[int]:
    """Per group, the most channels it may lose: ``max_rate`` of them (a number, or per group
    name), at least one channel kept, rounded to the channel multiple."""
    caps = []
    for name, c in zip(names, channels, strict=True):
        rate = max_rate.get(name, DEFAULT_MAX_RATE) if isinstance(max_rate, dict) else max_rate
        caps.append(allowed_removal(max(0, min(c - 1, int(rate * c + 1e-9))), c, multiple))
    return caps


def _scaled_counts(
    mm: MacsModel,
    owner: ChannelBudget,
    raw: list[float],
    caps: list[int],
    target: float,
    cap_text: str,
) -> list[int]:
    """The raw rates scaled by one multiplier (bisection) to just under ``target`` (the
    owner's target less the safety margin), then walked and refined channel by channel onto it.

    Raises:
        UserError: no rate is positive, the caps cannot reach the target, or no count lands
            within the tolerance.
    """
    wanted, multiple, channels = owner.target, owner.multiple, mm.channels
    if not any(r > 0 for r in raw):
        raise UserError(
            f"target_macs_ratio {wanted:g} needs pruning, but every group rate is 0: "
            "give some groups a rate > 0"
        )

    def counts(scale: float) -> list[int]:
        return [
            allowed_removal(min(cap, int(scale * r * c + 1e-9)), c, multiple)
            for r, c, cap in zip(raw, channels, caps, strict=True)
        ]

    s_max = (
        max(cap / (r * c) for r, c, cap in zip(raw, channels, caps, strict=True) if r > 0) + 1e-9
    )
    floor_ratio = mm.ratio(counts(s_max))
    if floor_ratio > target + 1e-12:
        raise UserError(
            f"target_macs_ratio {wanted:.3f} is unreachable: with {cap_text} on the groups "
            f"this policy prunes, the smallest reachable MACs ratio is {floor_ratio:.3f}; raise the target, "
            "the cap, or give more groups a rate > 0"
        )
    lo, hi = 0.0, s_max  # ratio(counts(lo)) > target >= ratio(counts(hi))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mm.ratio(counts(mid)) > target:
            lo = mid
        else:
            hi = mid
    # Walk one step (a channel, or a multiple's worth) at a time in the order the scaling
    # would reach them, then trade channels between groups to close in on the target.
    walked = owner.walk(counts(lo), [r * c for r, c in zip(raw, channels, strict=True)])
    if walked is None:  # unreachable in principle: the cap check above guarantees progress
        raise UserError(f"target_macs_ratio {wanted:.3f} is unreachable under {cap_text}")
    removed = owner.refine(walked)
    if not owner.accepts(removed):
        removed = owner.nearest(removed) or removed
    achieved = mm.ratio(removed)
    if wanted - achieved > DEFAULT_TOLERANCE:
        raise UserError(
            f"target_macs_ratio {wanted:.3f} is unreachable within {DEFAULT_TOLERANCE:g}: removing one "
            f"channel at a time from the groups this policy prunes goes from above the target "
            f"to {achieved:.3f}; give more groups a rate > 0 or choose another target"
        )
    return removed


def _with_counts(
    policy: Policy,
    names: Sequence[str],
    channels: Sequence[int],
    removed: list[int],
    as_written: list[int],
) -> Policy:
    """``policy`` with each group's rate the exact fraction ``removed / channels``."""
    groups = {}
    for name, n, c in zip(names, removed, channels, strict=True):
        old = policy.groups.get(name)
        if old is None and n == 0:
            continue
        groups[name] = GroupPolicy(
            rate=round(n / c, RATE_DECIMALS),
            criterion=old.criterion if old else "l1",
            chosen_from=old.chosen_from if old else None,
            # the steps an applied policy records hold only for the count they add up to
            steps=old.steps if old and removed is as_written else None,
            step_criteria=old.step_criteria if old else None,
        )
    return replace(policy, groups=groups)


class ChannelBudget:
    """The one owner of how many channels each group loses so a model lands on a MACs target.

    Counts are channels removed per group from the model ``macs_model`` describes, in total.
    ``ratio`` counts a candidate: the even-spread estimate of the :class:`MacsModel` by
    default, or the exact count of ranked channels (:meth:`MacsModel.counter`). Counts move in
    allowed steps only (``multiple``: what a group keeps is a multiple of it, see
    :func:`allowed_removal`), never above ``caps`` and never below ``floors``: the channels an
    earlier iterative step removed already.

    A count is accepted when its ratio is at most the target less :data:`SAFETY_MARGIN` and at
    most :data:`DEFAULT_TOLERANCE` under the target.
    """

    def __init__(
        self,
        macs_model: MacsModel,
        target: float,
        caps: Sequence[int],
        multiple: int = 1,
        floors: Sequence[int] | None = None,
        ratio: Callable[[Sequence[int]], float] | None = None,
    ) -> None:
        self.channels = list(macs_model.channels)
        self.target = target
        # the margin guards estimates against rounding; the unpruned model's 1.0 is exact
        self.aim = target if target >= 1.0 else target - SAFETY_MARGIN
        self.caps = list(caps)
        self.multiple = multiple
        self.floors = list(floors) if floors is not None else [0] * len(self.channels)
        self.ratio = ratio or macs_model.ratio
        # many candidates at once: the even-spread estimate's batch count, else one by one
        self.ratios: Callable[[Sequence[Sequence[int]]], Any] = (
            macs_model.ratios if ratio is None else (lambda rows: [self.ratio(r) for r in rows])
        )

    def accepts(self, removed: Sequence[int]) -> bool:
        achieved = self.ratio(removed)
        return achieved <= self.aim + 1e-12 and self.target - achieved <= DEFAULT_TOLERANCE

    def allowed(self, i: int, n: int) -> int:
        """The most group ``i`` may lose, at most ``n`` and its cap, in allowed steps; at least
        its floor (rounded up to an allowed count where the floor itself is not one)."""
        channels, floor = self.channels[i], self.floors[i]
        n = allowed_removal(min(n, self.caps[i]), channels, self.multiple)
        if n >= floor:
            return n
        if allowed_removal(floor, channels, self.multiple) == floor:
            return floor
        return next_removal(floor, channels, self.multiple) or floor

    def step_down(self, i: int, n: int) -> int:
        """The largest allowed count below ``n`` and not below the floor (``n`` when none)."""
        back = previous_removal(n, self.channels[i], self.multiple)
        return back if back >= self.floors[i] else n

    def step_up(self, i: int, n: int) -> int | None:
        nxt = next_removal(n, self.channels[i], self.multiple)
        return nxt if nxt is not None and nxt <= self.caps[i] else None

    def walk(self, removed: Sequence[int], weights: Sequence[float]) -> list[int] | None:
        """Take one step at a time until the ratio is at most the aim; None when stuck.

        The next step goes to the open group (weight > 0, under its cap) whose next count is
        the smallest multiple of its weight: the order a uniform scaling of the weights would
        reach the counts in (weights are raw rates x channels, or a plan's counts).
        """
        removed = list(removed)
        while self.ratio(removed) > self.aim:
            best, best_scale, best_next = -1, float("inf"), 0
            for i, weight in enumerate(weights):
                nxt = self.step_up(i, removed[i]) if weight > 0 else None
                if nxt is not None and nxt / weight < best_scale:
                    best, best_scale, best_next = i, nxt / weight, nxt
            if best < 0:
                return None
            removed[best] = best_next
        return removed

    def refine(self, removed: Sequence[int]) -> list[int]:
        """Close the gap to the aim from below by giving one step back, or trading one for one.

        One channel of a wide residual stream can carry several percent of a small model's MACs,
        so the walk may stop well under the target. Each round takes the single move (one step
        fewer in one group, optionally one more in another) that lands closest to the aim
        without exceeding it, until the gap is small or no move helps.
        """
        removed = list(removed)
        current = self.ratio(removed)
        for _ in range(4 * len(removed)):
            if self.aim - current <= REFINE_GAP:
                break
            ups = [self.step_up(j, n) for j, n in enumerate(removed)]
            moves: list[list[int]] = []
            for i in range(len(removed)):
                back = self.step_down(i, removed[i]) if removed[i] else removed[i]
                if back == removed[i]:
                    continue
                for j in [None, *range(len(removed))]:
                    if j == i or (j is not None and ups[j] is None):
                        continue
                    trial = list(removed)
                    trial[i] = back
                    if j is not None:
                        trial[j] = ups[j]
                    moves.append(trial)
            ratios = self.ratios(moves) if moves else []
            best, best_ratio = None, current
            for trial, r in zip(moves, ratios, strict=True):
                if best_ratio < r <= self.aim:
                    best, best_ratio = trial, float(r)
            if best is None:
                break
            removed, current = best, best_ratio
        return removed

    def options(self, i: int) -> list[int]:
        """Every count group ``i`` may take, from its floor to its cap."""
        values = [self.allowed(i, self.floors[i])]
        up = self.step_up(i, values[-1])
        while up is not None:
            values.append(up)
            up = self.step_up(i, up)
        return values

    def combinations(self) -> int:
        """How many combinations of counts there are (stops counting past the exhaustive limit)."""
        total = 1
        for i in range(len(self.channels)):
            total *= len(self.options(i))
            if total > EXHAUSTIVE_LIMIT:
                break
        return total

    def nearest(self, removed: Sequence[int]) -> list[int] | None:
        """The accepted counts closest to ``removed`` (relative to each group's channels), found
        by trying every allowed combination; None when there are too many or none is accepted.

        Only groups with room to move (a cap above their floor) vary.
        """
        options = [
            self.options(i) if self.caps[i] > self.floors[i] else [n] for i, n in enumerate(removed)
        ]
        if math.prod(len(o) for o in options) > EXHAUSTIVE_LIMIT:
            return None
        best, best_distance = None, float("inf")
        for combo in itertools.product(*options):
            distance = sum(
                abs(a - b) / c for a, b, c in zip(combo, removed, self.channels, strict=True)
            )
            if distance < best_distance and self.accepts(combo):
                best, best_distance = list(combo), distance
        return best

    def fit(self, planned: Sequence[int]) -> list[int] | None:
        """Counts near ``planned`` that the budget accepts: capped, walked down, refined.

        ``planned`` unchanged when it is accepted and within the caps; None when the caps
        leave the target out of reach.
        """
        start = [self.allowed(i, n) for i, n in enumerate(planned)]
        if start == list(planned) and self.accepts(start):
            return start
        walked = self.walk(start, [float(n) for n in planned])
        if walked is None:
            return None
        refined = self.refine(walked)
        return refined if self.accepts(refined) else self.nearest(refined) or refined


def reachable_floor(mm: MacsModel, max_rate: float, multiple: int = 1) -> float:
    """The smallest MACs ratio any policy reaches: every group at its cap (``max_rate``,
    in allowed steps of ``multiple``)."""
    return mm.ratio(_full_caps(mm, max_rate, multiple))


MAX_CAP = 0.99  # the highest max_rate a space may give (a group keeps a channel)


def cap_reaching(mm: MacsModel, target: float, max_rate: float, multiple: int = 1) -> float:
    """The smallest ``max_rate`` (at least the given one, rounded up to 0.01) at which
    ``target`` is reachable; ``max_rate`` itself when it already is, :data:`MAX_CAP` when
    nothing under it is (then :func:`check_reachable` says why)."""
    if reachable_floor(mm, max_rate, multiple) <= target - SAFETY_MARGIN:
        return max_rate
    low, high = max_rate, MAX_CAP
    if reachable_floor(mm, high, multiple) > target - SAFETY_MARGIN:
        return MAX_CAP
    for _ in range(30):  # the floor falls as the cap rises; bisect the cap
        mid = (low + high) / 2
        if reachable_floor(mm, mid, multiple) <= target - SAFETY_MARGIN:
            high = mid
        else:
            low = mid
    return min(MAX_CAP, math.ceil(high * 100 - 1e-9) / 100)


def check_reachable(
    mm: MacsModel, target: float, max_rate: float, multiple: int = 1, what: str = "the model"
) -> None:
    """Say, before any trial runs, when no policy can land on ``target``; else return.

    Two ways a target is out of reach: every group at its cap still leaves more MACs than the
    target (the message names the groups that cannot shrink, and those left out because
    torch-pruning cannot prune them), or no combination of allowed channel counts lands within
    the tolerance under it (coarse channel multiples on a small model; tried exhaustively where
    there are few combinations).

    Raises:
        UserError: the target is out of reach, naming why and the smallest reachable ratio.
    """
    caps = _full_caps(mm, max_rate, multiple)
    floor = mm.ratio(caps)
    rounding = f", channel multiple {multiple}" if multiple > 1 else ""
    if floor > target - SAFETY_MARGIN:
        stuck = [
            f"{name} ({channels} channel{'s' if channels > 1 else ''})"
            for name, channels, cap in zip(mm.group_names, mm.channels, caps, strict=True)
            if cap == 0
        ]
        why = [f"group {name}: {reason}" for name, reason in mm.excluded.items()]
        if stuck:
            why.append(f"groups that cannot lose a channel: {', '.join(stuck)}")
        if mm.unmodeled_share() > 0.005:
            why.append(
                f"{100 * mm.unmodeled_share():.0f}% of the MACs are in layers no group thins"
            )
        raise UserError(
            f"MACs target {target:g} is out of reach for {what}: with every group at its cap "
            f"(max_rate {max_rate:g}{rounding}) the MACs ratio is still {floor:.3f}"
            + (f"; not pruned: {'; '.join(why)}" if why else "")
            + f". Use a budget of at least {floor + SAFETY_MARGIN:.3f}"
        )
    owner = ChannelBudget(mm, target, caps, multiple)
    if owner.combinations() <= EXHAUSTIVE_LIMIT and owner.nearest(caps) is None:
        raise UserError(
            f"MACs target {target:g} is out of reach for {what}: no combination of allowed "
            f"channel counts (max_rate {max_rate:g}{rounding}) lands within "
            f"{DEFAULT_TOLERANCE:g} under it; choose another budget"
            + (" or a smaller --channel-multiple" if multiple > 1 else "")
        )


def _full_caps(mm: MacsModel, max_rate: float, multiple: int) -> list[int]:
    return [
        allowed_removal(max(0, min(c - 1, int(max_rate * c + 1e-9))), c, multiple)
        for c in mm.channels
    ]


def allowed_removal(n: int, channels: int, multiple: int, zero_ok: bool = True) -> int:
    """The most channels, at most ``n``, a group of ``channels`` may lose so that what it keeps
    is a multiple of ``multiple``; 0 when no such removal exists.

    ``zero_ok=False`` is for a group an earlier step already pruned: keeping all of its
    ``channels`` is then no option unless they are a multiple, so when no removal up to ``n``
    is allowed the smallest allowed one is returned (more than ``n``).
    """
    if multiple <= 1:
        return max(n, 0)
    kept = -(-(channels - max(n, 0)) // multiple) * multiple  # rounded up: remove at most n
    if kept < channels:
        return channels - kept
    if zero_ok or channels % multiple == 0:
        return 0
    return next_removal(0, channels, multiple) or 0


def next_removal(n: int, channels: int, multiple: int) -> int | None:
    """The smallest allowed removal above ``n`` (None when the group cannot lose more)."""
    if multiple <= 1:
        return n + 1 if n + 1 < channels else None
    kept = (channels - n - 1) // multiple * multiple
    return channels - kept if kept >= multiple else None


def previous_removal(n: int, channels: int, multiple: int) -> int:
    """The largest allowed removal below ``n`` (``n`` itself when there is none)."""
    return min(n, allowed_removal(n - 1, channels, multiple))


def removed_counts(policy: Policy, macs_model: MacsModel) -> list[int]:
    """Channels each group of ``macs_model`` loses under ``policy`` (same rounding as ``prune``)."""
    return [
        channels_to_remove(policy.groups[n].rate, c) if n in policy.groups else 0
        for n, c in zip(macs_model.group_names, macs_model.channels, strict=True)
    ]


# --------------------------------------------------------------------------- per-process cache

# A MACs model depends only on the base architecture and the blocks dropped from it, yet every
# trial projects onto one: trial workers keep the recent ones (each a few KB: layer counts and
# group indices, no module) instead of tracing the base again for every candidate.
MACS_MODEL_CACHE_SIZE = 32
_MACS_MODELS: OrderedDict[tuple[object, ...], MacsModel] = OrderedDict()


def base_macs_model(
    base_sha256: str,
    build: Callable[[], nn.Module],
    example_inputs: torch.Tensor,
    dropped_blocks: Sequence[str] = (),
    base_macs: float | None = None,
) -> MacsModel:
    """The :class:`MacsModel` of a base model less ``dropped_blocks``, built once per process.

    What :func:`project_to_budget` builds for a policy when given no ``macs_model``, cached by
    ``(base_sha256, dropped_blocks, input shape, base_macs)``; pass it as ``macs_model``.
    ``build`` makes a fresh copy of the base model and is called only on a miss (block removal
    changes the model it is given). The model returned is shared: read it, never change it.
    """
    key = (base_sha256, tuple(dropped_blocks), tuple(example_inputs.shape), base_macs)
    cached = _MACS_MODELS.get(key)
    if cached is not None:
        _MACS_MODELS.move_to_end(key)
        return cached
    model = build()
    if dropped_blocks:
        if base_macs is None:  # ratios stay relative to the base, not to what is left
            base_macs = float(count_macs_params(model, example_inputs)[0])
        model = drop_blocks(model, list(dropped_blocks), example_inputs)
    macs_model = MacsModel(model, example_inputs, base_macs)
    _MACS_MODELS[key] = macs_model
    while len(_MACS_MODELS) > MACS_MODEL_CACHE_SIZE:
        _MACS_MODELS.popitem(last=False)
    return macs_model
