"""Rate priors: per-group rate allocations at the budget that baselines use and the search centres on.

Three allocations of one MACs budget over a model's groups:

* ``uniform`` — every group the same rate (what one writes by hand).
* ``global`` — torch-pruning's global pruning: the channels of all groups ranked together by
  their L1 score divided by their group's mean score, removed lowest first until the budget
  is met.
* ``sensitivity`` — each group is pruned alone at a few rates and the adaptive-BN proxy's val
  loss is measured (:func:`sensitivity_curves`); rates are then allocated greedily, always
  taking the next channels where the loss rises least per MAC saved (as NVIDIA ModelOpt's
  FastNAS allocates with its sensitivity map).

The sensitivity curves cost one pruning and one proxy per (group, rate); they are cached on
disk per (base checkpoint, criterion, calibration and proxy settings), so every study of a
base model computes them once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from autoprune import criteria
from autoprune.criteria.context import ScoringContext
from autoprune.evaluate import (
    ObjectiveConfig,
    adaptive_bn_proxy,
    load_inputs,
    prune_policy,
)
from autoprune.files import write_text
from autoprune.groups import build_graph, current_views
from autoprune.logs import Log
from autoprune.macs import MacsModel
from autoprune.policy import GroupPolicy, Policy
from autoprune.space import PRIORS

SENSITIVITY_RATES = (0.4, 0.8)  # each group alone is pruned at these rates (capped by max_rate)
SENSITIVITY_CRITERION = "l1"  # which channels go while a group's sensitivity is measured
GLOBAL_CRITERION = "l1"  # the score global ranking normalises per group
ALLOCATION_STEP = 0.05  # the greedy allocation moves one group by this rate at a time


def uniform_rates(groups: list[str], rate: float = 0.5) -> dict[str, float]:
    """The same raw rate for every group; budget projection scales it onto the target."""
    return {g: rate for g in groups}


def global_rates(config: ObjectiveConfig, budget: float, max_rate: float) -> dict[str, float]:
    """Rates from one global ranking of all channels by group-normalised L1 score.

    Channels are removed lowest score first, a group stopping at ``max_rate``, until the
    analytic MACs ratio is at or under ``budget``.
    """
    base, _ = load_inputs(config)
    model = base.build()
    inputs = base.spec.example_inputs()
    graph = build_graph(model, inputs)
    views = current_views(model, graph)
    ctx = ScoringContext.create(model, graph, Policy(model=base.spec, groups={}), None)
    scores = criteria.get(GLOBAL_CRITERION).score_all(views, ctx)
    mm = MacsModel(model, inputs)
    index = {name: i for i, name in enumerate(mm.group_names)}
    ranked: list[tuple[float, int]] = []
    for view in views:
        s = scores[view.name].detach().float().cpu()
        normalised = s / s.mean().clamp_min(1e-12)
        # A group's channels go in its own ascending order, so only the sorted scores matter.
        ranked += [(float(v), index[view.name]) for v in torch.sort(normalised).values]
    ranked.sort(key=lambda item: item[0])
    removed = [0] * len(mm.group_names)
    caps = [min(c - 1, int(max_rate * c + 1e-9)) for c in mm.channels]
    for _, g in ranked:
        if mm.ratio(removed) <= budget:
            break
        if removed[g] < caps[g]:
            removed[g] += 1
    return {n: removed[i] / mm.channels[i] for i, n in enumerate(mm.group_names)}


def sensitivity_key(config: ObjectiveConfig, base_sha256: str) -> str:
    """The cache key of a base model's sensitivity curves: everything that changes them."""
    raw = json.dumps(
        {
            "base": base_sha256,
            "dataset": config.dataset,
            "criterion": SENSITIVITY_CRITERION,
            "rates": SENSITIVITY_RATES,
            "calibration_images": config.calibration_images,
            "proxy": [config.proxy_batches, config.proxy_batch_size, config.proxy_images],
            "max_rate": config.max_rate,
        },
        sort_keys=True,
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def sensitivity_curves(
    config: ObjectiveConfig, cache_dir: Path | None = None, log: Log | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Per group, ``[(rate, proxy val-loss increase), ...]`` from pruning that group alone.

    Read from ``cache_dir/KEY.json`` when present; otherwise measured and written there.
    """
    base, _ = load_inputs(config)
    key = sensitivity_key(config, base.sha256)
    path = (cache_dir or config.cache_dir().parent / "sensitivity") / f"{key}.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            return {str(g): [(float(r), float(d)) for r, d in rows] for g, rows in raw.items()}
        except (ValueError, TypeError, AttributeError):
            pass  # a damaged entry is measured again, never trusted
    groups = MacsModel(base.build(), base.spec.example_inputs()).group_names
    rates = [r for r in SENSITIVITY_RATES if r <= config.max_rate] or [config.max_rate]
    if log:
        log(
            f"sensitivity: pruning each of {len(groups)} groups alone at rates "
            f"{', '.join(f'{r:g}' for r in rates)} (cached for later studies of this base)"
        )
    unpruned = _proxy_loss(config, Policy(model=base.spec, groups={}))
    curves: dict[str, list[tuple[float, float]]] = {}
    for group in groups:
        curves[group] = [
            (
                rate,
                _proxy_loss(
                    config,
                    Policy(
                        model=base.spec,
                        groups={group: GroupPolicy(rate=rate, criterion=SENSITIVITY_CRITERION)},
                    ),
                )
                - unpruned,
            )
            for rate in rates
        ]
    write_text(path, json.dumps(curves, indent=1))
    return curves


def _proxy_loss(config: ObjectiveConfig, policy: Policy) -> float:
    # On the process's own torch threads (torch's default: every core), not the trials': the
    # pass runs in the driver before any trial, with the machine to itself (on 2 cores it takes
    # 20 s instead of 36 s on one thread). The curves rank groups; a different thread count
    # moves them in the fifth decimal.
    everywhere = replace(config, threads=None)
    loss = adaptive_bn_proxy(prune_policy(everywhere, policy), everywhere).loss
    return loss if math.isfinite(loss) else 1e6


def sensitivity_rates(
    curves: dict[str, list[tuple[float, float]]],
    mm: MacsModel,
    budget: float,
    max_rate: float,
) -> dict[str, float]:
    """Allocate rates to meet ``budget``, cheapest proxy-loss increase per MAC saved first.

    A group's loss increase between measured rates is interpolated linearly (0 at rate 0, the
    last measured slope beyond the last rate). Groups the curves do not name keep rate 0.
    """
    names, channels = mm.group_names, mm.channels
    rates = [0.0] * len(names)

    def loss(i: int, rate: float) -> float:
        points = [(0.0, 0.0), *curves.get(names[i], [])]
        for (r0, d0), (r1, d1) in itertools.pairwise(points):
            if rate <= r1:
                return d0 + (d1 - d0) * (rate - r0) / max(r1 - r0, 1e-9)
        (r0, d0), (r1, d1) = points[-2], points[-1]
        return d1 + (d1 - d0) * (rate - r1) / max(r1 - r0, 1e-9)

    def counts(rs: list[float]) -> list[int]:
        return [min(c - 1, round(r * c)) for r, c in zip(rs, channels, strict=True)]

    while mm.ratio(counts(rates)) > budget:
        macs_now = mm.macs(counts(rates))
        best, best_cost = -1, math.inf
        for i, name in enumerate(names):
            if name not in curves or rates[i] + 1e-9 >= max_rate:
                continue
            step = min(ALLOCATION_STEP, max_rate - rates[i])
            trial = list(rates)
            trial[i] += step
            saved = macs_now - mm.macs(counts(trial))
            if saved <= 0:
                continue
            # Loss can dip below the unpruned model's on a noisy proxy; never reward that.
            cost = max(loss(i, trial[i]) - loss(i, rates[i]), 0.0) + 1e-6
            if cost / saved < best_cost:
                best, best_cost = i, cost / saved
        if best < 0:
            break  # every group is at its cap: projection reports what the caps allow
        rates[best] = min(max_rate, rates[best] + ALLOCATION_STEP)
    return {n: round(r, 6) for n, r in zip(names, rates, strict=True)}


def compute_priors(
    names: list[str],
    config: ObjectiveConfig,
    budget: float,
    max_rate: float,
    log: Log | None = None,
) -> dict[str, dict[str, float]]:
    """The rate priors ``names`` (a subset of :data:`PRIORS`) at ``budget``."""
    out: dict[str, dict[str, float]] = {}
    base, _ = load_inputs(config)
    mm = MacsModel(base.build(), base.spec.example_inputs())
    for name in names:
        if name == "uniform":
            out[name] = uniform_rates(mm.group_names)
        elif name == "global":
            out[name] = global_rates(config, budget, max_rate)
        elif name == "sensitivity":
            out[name] = sensitivity_rates(sensitivity_curves(config, log=log), mm, budget, max_rate)
        else:
            raise ValueError(f"unknown prior {name!r}; known: {', '.join(PRIORS)}")
    return out
