"""What a study says about itself: the proxy's rank correlation with fine-tuned accuracy, the
seconds per phase, and one summary row per study (``autoprune studies``)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from autoprune.records import TrialRecord
from autoprune.study.front import AT_BUDGET, pareto_front
from autoprune.study.recording import completed_trials
from autoprune.study.stored import (
    has_config,
    objective_of,
    search_config,
    study_budget,
    trial_metric,
)

PHASES = ("load", "project", "score", "prune", "screen", "finetune", "evaluate", "latency")


def proxy_spearman(study: optuna.Study) -> tuple[float, int] | None:
    """Spearman rank correlation of the proxy with fine-tuned val accuracy, and its sample size.

    Over the COMPLETE trials at the budget that carry both (every fine-tuned trial measures its
    proxy first): screening compares candidates at one target, and pooling targets would
    inflate the figure (proxy and accuracy both rise with MACs). Only candidates the proxy let
    through are fine-tuned, so this is the correlation among those; ladder rungs (longer
    fine-tunes of the same policies) are left out. None below three trials.
    """
    # Candidates are projected onto a MACs target (with a latency budget, the calibrated one).
    target = search_config(study).target() if has_config(study) else None
    pairs = []
    for t in completed_trials(study):
        record = TrialRecord.from_trial(t)
        proxy = record.metric("proxy_accuracy")
        if (
            proxy is not None
            and record.level == 0
            and (target is None or (trial_metric(t, "macs_ratio") or 0.0) >= target - AT_BUDGET)
        ):
            pairs.append((proxy, float(t.values[0])))
    if len(pairs) < 3:
        return None
    return spearman([p for p, _ in pairs], [v for _, v in pairs]), len(pairs)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when a side is constant."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")


def timing_summary(study: optuna.Study) -> list[tuple[str, float, float, float]]:
    """Per phase (and ``overhead``): the median seconds per bracket, the median share of a
    bracket's wall time, and the share of all brackets' wall time.

    A bracket is a fine-tuned trial plus the candidates it was screened against; its phases
    are summed over its candidates. The first bracket of each worker also pays for loading
    the dataset and base model: the medians are robust to it, the total share includes it.
    """
    by_bracket: dict[int, dict[str, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        record = TrialRecord.from_trial(t)
        key = int(record.bracket if record.bracket is not None else t.number)
        row = by_bracket.setdefault(key, {})
        for phase in PHASES:
            row[phase] = row.get(phase, 0.0) + float((record.timings or {}).get(phase, 0.0))
        if record.wall is not None:
            row["wall"] = float(record.wall)
            row["overhead"] = float(record.overhead or 0.0)
    rows = [r for r in by_bracket.values() if r.get("wall", 0.0) > 0]
    if not rows:
        return []
    total = sum(r["wall"] for r in rows)
    return [
        (
            phase,
            statistics.median(r.get(phase, 0.0) for r in rows),
            statistics.median(r.get(phase, 0.0) / r["wall"] for r in rows),
            sum(r.get(phase, 0.0) for r in rows) / total,
        )
        for phase in (*PHASES, "overhead", "wall")
    ]


@dataclass
class StudySummary:
    """A row of ``autoprune studies``."""

    name: str
    budget: float | None  # the stored search's budget on its budgeted ratio (None: not autoprune's)
    objective: str  # macs | latency | both
    complete: int
    failed: int
    running: int
    front: int  # feasible Pareto-front size


def summaries(storage: optuna.storages.BaseStorage) -> list[StudySummary]:
    """Every study in ``storage``, by name, with its trial counts and front size."""
    rows = []
    for summary in sorted(
        optuna.get_all_study_summaries(storage, include_best_trial=False),
        key=lambda s: s.study_name,
    ):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = {
            state: len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)
        }
        rows.append(
            StudySummary(
                name=summary.study_name,
                budget=study_budget(study),
                objective=objective_of(study),
                complete=counts[TrialState.COMPLETE],
                failed=counts[TrialState.FAIL],
                running=counts[TrialState.RUNNING],
                front=len(pareto_front(study)),
            )
        )
    return rows
