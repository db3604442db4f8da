"""Budget projection: scale a policy's rates so its pruned model lands on its MACs target.

Projection turns raw per-group rates (what a sampler proposes) into rates whose pruned model
hits ``target_macs_ratio``. Rates are scaled by one multiplier found by bisection, capped per
group, and a final walk removes one channel at a time in the order the scaling would reach
them, so the result lands at most one channel's worth of MACs under the target. Candidates are
counted by the analytic :class:`~autoprune.macs.MacsModel`, so projection costs no forward pass
per candidate.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from autoprune.depth import drop_blocks
from autoprune.errors import UserError
from autoprune.groups import channels_to_remove
from autoprune.macs import MacsModel, count_macs_params
from autoprune.policy import GroupPolicy, Policy

DEFAULT_TOLERANCE = 0.01  # |achieved - target| MACs ratio
# Projection aims this far under the target so the counted MACs never exceed a budget that
# equals the target (the analytic count and torch-pruning's agree to ~1e-4).
SAFETY_MARGIN = 0.001
# When a walk ends further than this under the target, trade channels between groups to close in.
REFINE_GAP = 0.002
RATE_DECIMALS = 6
# Positive raw rates are floored to this (see ``project_to_budget``).
MIN_POSITIVE_RATE = 1e-9


def project_to_budget(
    policy: Policy,
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    *,
    base_macs: float | None = None,
    max_rate: float | dict[str, float] = 0.9,
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
    caps = [
        allowed_removal(
            max(
                0,
                min(
                    c - 1,
                    int(
                        (max_rate.get(n, 0.9) if isinstance(max_rate, dict) else max_rate) * c
                        + 1e-9
                    ),
                ),
            ),
            c,
            multiple,
        )
        for n, c in zip(names, channels, strict=True)
    ]
    cap_text = (
        "the per-group caps" if isinstance(max_rate, dict) else f"the per-group cap of {max_rate}"
    )
    nothing_removed = mm.ratio([0] * len(names))
    # Unpruned, the analytic count is exact (it is torch-pruning's count of this very model), so
    # no safety margin applies: a target of 1.0 (or one at or above what block removal leaves)
    # prunes no channel.
    as_written = removed_counts(policy, mm)
    if nothing_removed <= wanted:
        removed = [0] * len(names)
    elif _already_projected(mm, as_written, caps, raw, target, wanted, multiple):
        # A policy this function produced (e.g. an exported, applied policy being replayed) is
        # a fixed point: rescaling it could move channels between groups for no gain.
        removed = as_written
    else:
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
            max(cap / (r * c) for r, c, cap in zip(raw, channels, caps, strict=True) if r > 0)
            + 1e-9
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
        removed = counts(lo)
        # Walk one step (a channel, or a multiple's worth) at a time in the order the scaling
        # would reach them.
        while mm.ratio(removed) > target:
            best, best_scale, best_next = -1, float("inf"), 0
            for i, (r, c, cap) in enumerate(zip(raw, channels, caps, strict=True)):
                nxt = next_removal(removed[i], c, multiple)
                if r > 0 and nxt is not None and nxt <= cap:
                    next_scale = nxt / (r * c)
                    if next_scale < best_scale:
                        best, best_scale, best_next = i, next_scale, nxt
            if best < 0:  # unreachable in principle: the cap check above guarantees progress
                raise UserError(f"target_macs_ratio {wanted:.3f} is unreachable under {cap_text}")
            removed[best] = best_next
        # Only groups the policy prunes may take channels: a rate of 0 means "leave it alone".
        open_caps = [cap if r > 0 else 0 for r, cap in zip(raw, caps, strict=True)]
        removed = refine(mm, removed, open_caps, target, multiple)
        achieved = mm.ratio(removed)
        if wanted - achieved > DEFAULT_TOLERANCE:
            raise UserError(
                f"target_macs_ratio {wanted:.3f} is unreachable within {DEFAULT_TOLERANCE:g}: removing one "
                f"channel at a time from the groups this policy prunes goes from above the target "
                f"to {achieved:.3f}; give more groups a rate > 0 or choose another target"
            )
    groups = {}
    for name, n, c in zip(names, removed, channels, strict=True):
        old = policy.groups.get(name)
        if old is None and n == 0:
            continue
        groups[name] = GroupPolicy(
            rate=round(n / c, RATE_DECIMALS),
            criterion=old.criterion if old else "l1",
            chosen_from=old.chosen_from if old else None,
        )
    return replace(policy, groups=groups)


def _already_projected(
    mm: MacsModel,
    removed: list[int],
    caps: list[int],
    raw: list[float],
    target: float,
    wanted: float,
    multiple: int = 1,
) -> bool:
    """Whether the rates as written already meet what a projection guarantees."""
    if any(n > cap or (n > 0 and r == 0) for n, cap, r in zip(removed, caps, raw, strict=True)):
        return False
    if any(allowed_removal(n, c, multiple) != n for n, c in zip(removed, mm.channels, strict=True)):
        return False
    achieved = mm.ratio(removed)
    return achieved <= target and wanted - achieved <= DEFAULT_TOLERANCE


def refine(
    mm: MacsModel,
    removed: list[int],
    caps: list[int],
    target: float,
    multiple: int = 1,
    zero_ok: Sequence[bool] | None = None,
) -> list[int]:
    """Close the gap to ``target`` from below by giving one channel back, or trading one for one.

    With ``multiple`` > 1 a move is one allowed count down (or up), see :func:`allowed_removal`;
    ``zero_ok[i]`` False means group ``i`` may not go back to losing nothing.

    One channel of a wide residual stream can carry several percent of a small model's MACs,
    so the walk may stop well under the target. Each round takes the single move (one channel
    fewer in one group, optionally one more in another) that lands closest to the target
    without exceeding it, until the gap is small or no move helps.
    """
    removed = list(removed)
    current = mm.ratio(removed)
    for _ in range(4 * len(removed)):
        if target - current <= REFINE_GAP:
            break
        best, best_ratio = None, current
        channels = mm.channels
        for i in range(len(removed)):
            if removed[i] == 0:
                continue
            back = previous_removal(
                removed[i], channels[i], multiple, zero_ok[i] if zero_ok is not None else True
            )
            if back == removed[i]:
                continue
            for j in [None, *range(len(removed))]:
                if j == i or (j is not None and removed[j] >= caps[j]):
                    continue
                more = next_removal(removed[j], channels[j], multiple) if j is not None else None
                if j is not None and (more is None or more > caps[j]):
                    continue
                trial = list(removed)
                trial[i] = back
                if j is not None:
                    assert more is not None
                    trial[j] = more
                r = mm.ratio(trial)
                if best_ratio < r <= target:
                    best, best_ratio = trial, r
        if best is None:
            break
        removed, current = best, best_ratio
    return removed


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


def previous_removal(n: int, channels: int, multiple: int, zero_ok: bool = True) -> int:
    """The largest allowed removal below ``n`` (``n`` itself when there is none)."""
    return min(n, allowed_removal(n - 1, channels, multiple, zero_ok))


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
