"""Export: a study's feasible Pareto front as policy files, a summary and plots.

``export_front`` writes ``trial-NNNN.yaml`` (each the applied policy that produced the trial's
metrics, so it replays to them), ``baseline-NAME.yaml`` for each baseline trial,
``front.yaml`` (the front, the winner at the budget and the baselines at a glance),
``front.png`` and ``front.html`` (val accuracy against the budgeted ratio of every trial, see
:mod:`autoprune.plots`). Every file is written atomically, so two drivers of a shared study
exporting at once never leave a half-written file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from autoprune.files import write_text
from autoprune.plots import plot_study
from autoprune.records import TrialRecord
from autoprune.study import (
    baseline_trials,
    front_metric,
    pareto_front,
    study_budget,
    trial_metric,
    winner,
)

# What front.yaml states of each point, besides its file and trial number (when measured).
METRICS = ("val_accuracy", "macs_ratio", "params_ratio", "latency_ratio", "latency_ms")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def policy_file_name(trial: FrozenTrial | int, baseline: str | None = None) -> str:
    """The file a front point (``trial-NNNN.yaml``) or a baseline (``baseline-NAME.yaml``) is
    exported to, inside the study's policies folder."""
    if baseline:
        return f"baseline-{baseline}.yaml"
    number = trial if isinstance(trial, int) else trial.number
    return f"trial-{number:04d}.yaml"


def export_front(
    study: optuna.Study, out_dir: Path, log: Callable[[str], None] = _stderr
) -> list[Path]:
    """Write every feasible front policy (with its measured metrics) as YAML, plus a summary
    and the plots; ``log`` is told when a plot leaves something out (e.g. the base model's point)."""
    front = pareto_front(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("trial-*.yaml", "baseline-*.yaml"):
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)  # another driver of a shared study may export at once
    written = []
    for point in front:
        path = out_dir / policy_file_name(point.number)
        point.policy.save(path)
        written.append(path)
    baselines = []
    for t in baseline_trials(study):
        record = TrialRecord.from_trial(t)
        policy = record.applied_policy(t.number)
        if policy is None:  # a baseline trial always stores one; a foreign trial may not
            continue
        path = out_dir / policy_file_name(t, str(record.baseline))
        policy.save(path)
        written.append(path)
        baselines.append({"file": path.name, "trial": t.number, **_metrics(t)})
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    summary: dict[str, Any] = {
        "study": study.study_name,
        "metric": front_metric(study),
        "front": [
            {"file": policy_file_name(p.number), "trial": p.number, **_metrics(by_number[p.number])}
            for p in front
        ],
    }
    if front:
        summary["winner_at_budget"] = policy_file_name(winner(front, study_budget(study)).number)
    summary["baselines"] = baselines
    write_text(out_dir / "front.yaml", yaml.safe_dump(summary, sort_keys=False))
    plot_study(study, out_dir, log)
    return written


def _metrics(trial: FrozenTrial) -> dict[str, float]:
    """The trial's measured metrics, rounded for reading (unmeasured ones left out)."""
    values = {name: trial_metric(trial, name) for name in METRICS}
    return {name: round(v, 6) for name, v in values.items() if v is not None}
