"""The front and the winner: the feasible Pareto front, what counts as at the budget, the
best policy there, the baselines and the best searched trial beside them, and the front's
hypervolume."""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError
from autoprune.policy import TARGET_TOLERANCE, Policy
from autoprune.records import TrialRecord
from autoprune.study.recording import completed_trials, current_trials, rung_of
from autoprune.study.stored import front_metric, study_budget, trial_metric

# A policy within this much under the budget is "at the budget": the projection's tolerance.
AT_BUDGET = TARGET_TOLERANCE
HYPERVOLUME_REFERENCE = (1.0, 0.1)  # (budgeted ratio, val accuracy): the base's cost, near chance


@dataclass
class FrontPoint:
    number: int  # trial number
    val_accuracy: float
    macs_ratio: float
    params_ratio: float
    policy: Policy
    latency_ratio: float | None = None  # pruned/base median latency (latency objectives only)
    latency_ms: float | None = None  # the pruned model's median latency on the trial's device
    front_metric: str = "macs_ratio"  # the ratio the study's budget bounds
    rung: int = 0  # the ladder rung its figure was fine-tuned at (--rungs)

    def ratio(self, metric: str | None = None) -> float:
        """``macs_ratio`` or ``latency_ratio`` (default: the budgeted one); NaN when unmeasured."""
        value = getattr(self, metric or self.front_metric)
        return float("nan") if value is None else float(value)


def pareto_front(study: optuna.Study) -> list[FrontPoint]:
    """The feasible Pareto front, by ascending budgeted ratio (MACs, or latency)."""
    metric = front_metric(study)
    points = []
    for t in _front_trials(study):
        record = TrialRecord.from_trial(t)
        policy = record.applied_policy(t.number)
        if policy is None:
            continue
        points.append(
            FrontPoint(
                number=t.number,
                val_accuracy=float(t.values[0]),
                macs_ratio=trial_metric(t, "macs_ratio") or float("nan"),
                params_ratio=record.metric("params_ratio") or float("nan"),
                policy=policy,
                latency_ratio=trial_metric(t, "latency_ratio"),
                latency_ms=trial_metric(t, "latency_ms"),
                front_metric=metric,
                rung=record.level,
            )
        )
    return sorted(points, key=lambda p: (p.ratio(), -p.val_accuracy))


def _front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Optuna's Pareto front; in a study with a ladder (``--rungs``), over each policy's latest
    figure, and at the budget over the highest rung only: a figure of a shorter fine-tune is
    never weighed against a longer one's (the ladder already ranked it lower)."""
    if not any(TrialRecord.from_trial(t).is_promoted for t in completed_trials(study)):
        return list(study.best_trials)
    budget, metric = study_budget(study), front_metric(study)
    feasible = [
        t
        for t in current_trials(study)
        if all(c <= 0.0 for c in t.constraints.values())  # as best_trials counts it
    ]

    def near(t: FrozenTrial) -> bool:
        ratio = trial_metric(t, metric)
        return budget is not None and ratio is not None and at_budget(ratio, budget, metric)

    top = max((rung_of(t) for t in feasible if near(t)), default=0)
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    rows = [
        (t, [sign * v for sign, v in zip(signs, t.values, strict=True)])
        for t in feasible
        if not near(t) or rung_of(t) == top
    ]
    return [
        t
        for t, a in rows
        if not any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for _, b in rows)
    ]


def at_budget(ratio: float, budget: float, metric: str = "macs_ratio") -> bool:
    """Whether a feasible trial's budgeted ratio counts as *at* the budget.

    A MACs ratio is projected onto the budget, so "at" means within :data:`AT_BUDGET` under it.
    A latency ratio is measured, not projected (trials land anywhere under the budget, and
    timing noise moves them), so every trial within the budget is at it.
    """
    if metric == "latency_ratio":
        return ratio <= budget + 1e-9
    return budget - AT_BUDGET <= ratio <= budget + 1e-9


def winner(front: list[FrontPoint], budget: float | None = None) -> FrontPoint:
    """The best policy at the budget: the highest val accuracy among front points at the
    budget (:func:`at_budget`; ties: the lower ratio) that reached the highest rung any of them
    reached (a figure of a shorter fine-tune never wins over a longer one's); the whole front's
    best when no point is at the budget, or when no budget is given.
    """
    if not front:
        raise UserError(
            "the study has no feasible completed trial yet: run more trials or raise the budget "
            "(--budget-flops, or --budget-latency)"
        )
    near = [p for p in front if budget is not None and at_budget(p.ratio(), budget, p.front_metric)]
    if near:
        top = max(p.rung for p in near)
        near = [p for p in near if p.rung == top]
    return max(near or front, key=lambda p: (p.val_accuracy, -p.ratio()))


def baseline_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE baseline trials, in trial order: one per baseline, at the highest
    rung it reached."""
    return [t for t in current_trials(study) if TrialRecord.from_trial(t).is_baseline]


def waiting_baselines(study: optuna.Study) -> list[FrozenTrial]:
    """Baseline trials enqueued and not yet run."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if TrialRecord.from_trial(t).is_baseline
    ]


def best_searched(study: optuna.Study, budget: float) -> FrozenTrial | None:
    """The best feasible non-baseline COMPLETE trial at the budget, among those at the highest
    rung any of them reached (None when there is none)."""
    metric = front_metric(study)
    rows = [
        (t, ratio)
        for t in current_trials(study)
        if not TrialRecord.from_trial(t).is_baseline
        and (ratio := trial_metric(t, metric)) is not None
        and at_budget(ratio, budget, metric)
    ]
    top = max((rung_of(t) for t, _ in rows), default=0)
    rows = [row for row in rows if rung_of(row[0]) == top]
    best = max(rows, key=lambda row: (row[0].values[0], -row[1]), default=None)
    return best[0] if best else None


def hypervolume(
    points: list[tuple[float, float]], reference: tuple[float, float] = HYPERVOLUME_REFERENCE
) -> float:
    """The area a set of (ratio, accuracy) points dominates up to ``reference``: lower ratio
    and higher accuracy are better, so a point counts the rectangle between itself and
    (reference ratio, reference accuracy). Points outside it (costlier than the base, or below
    the reference accuracy) and non-finite ones add nothing.

    A front that reaches lower ratios at the same accuracy, or more accuracy at the same
    ratios, has a larger hypervolume: one figure for the whole trade-off, not only the winner.
    """
    ref_ratio, ref_acc = reference
    inside = sorted(
        (r, a)
        for r, a in points
        if math.isfinite(r) and math.isfinite(a) and r < ref_ratio and a > ref_acc
    )
    area, best = 0.0, ref_acc
    for i, (ratio, acc) in enumerate(inside):  # sweep by ratio: each strip to the next point
        best = max(best, acc)
        right = inside[i + 1][0] if i + 1 < len(inside) else ref_ratio
        area += (right - ratio) * (best - ref_acc)
    return area


def front_hypervolume(front: list[FrontPoint]) -> float:
    """:func:`hypervolume` of a feasible front in val accuracy against its budgeted ratio."""
    return hypervolume([(p.ratio(), p.val_accuracy) for p in front])
