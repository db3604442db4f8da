"""Export: a study's feasible Pareto front as policy files, a summary and a plot.

``export_front`` writes ``trial-NNNN.yaml`` (each the applied policy that produced the trial's
metrics, so it replays to them), ``baseline-NAME.yaml`` for each baseline trial,
``front.yaml`` (the front, the winner at the budget and the baselines at a glance) and
``front.png`` (accuracy against MACs ratio of every completed trial, baselines marked). Every file is written atomically, so
two drivers of a shared study exporting at once never leave a half-written file.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml

from autoprune.files import atomic_write, write_text
from autoprune.policy import Policy
from autoprune.study import (
    BASELINE_ATTR,
    CONFIG_ATTR,
    baseline_trials,
    completed_trials,
    pareto_front,
    study_budget,
    winner,
)


def export_front(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Write every feasible front policy (with its measured metrics) as YAML, plus a summary and a plot."""
    front = pareto_front(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("trial-*.yaml", "baseline-*.yaml"):
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)  # another driver of a shared study may export at once
    written = []
    for point in front:
        path = out_dir / f"trial-{point.number:04d}.yaml"
        point.policy.save(path)
        written.append(path)
    baselines = []
    for t in baseline_trials(study):
        name = str(t.user_attrs[BASELINE_ATTR])
        path = out_dir / f"baseline-{name}.yaml"
        Policy.from_dict(t.user_attrs["policy"], source=f"trial {t.number}").save(path)
        written.append(path)
        baselines.append(
            {"file": path.name, "trial": t.number, "val_accuracy": round(t.values[0], 6),
             "macs_ratio": round(t.values[1], 6)}
        )  # fmt: skip
    summary: dict = {
        "study": study.study_name,
        "front": [
            {"file": f"trial-{p.number:04d}.yaml", "trial": p.number, "val_accuracy": round(p.val_accuracy, 6),
             "macs_ratio": round(p.macs_ratio, 6), "params_ratio": round(p.params_ratio, 6)}
            for p in front
        ],
    }  # fmt: skip
    if front:
        summary["winner_at_budget"] = f"trial-{winner(front, study_budget(study)).number:04d}.yaml"
    summary["baselines"] = baselines
    write_text(out_dir / "front.yaml", yaml.safe_dump(summary, sort_keys=False))
    plot_front(study, out_dir / "front.png")
    return written


def plot_front(study: optuna.Study, path: Path) -> None:
    """Accuracy vs MACs ratio of every completed trial, the feasible front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = completed_trials(study)
    front = {p.number for p in pareto_front(study)}
    config = study.user_attrs.get(CONFIG_ATTR, {})
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    others = [t for t in trials if t.number not in front]
    ax.scatter(
        [t.values[1] for t in others], [t.values[0] for t in others], s=18, c="0.6", label="trials"
    )
    base = baseline_trials(study)
    if base:
        ax.scatter(
            [t.values[1] for t in base],
            [t.values[0] for t in base],
            s=40,
            marker="x",
            c="C2",
            label="baselines",
            zorder=3,
        )
    pts = sorted((t for t in trials if t.number in front), key=lambda t: t.values[1])
    ax.plot(
        [t.values[1] for t in pts],
        [t.values[0] for t in pts],
        "o-",
        c="C3",
        label="feasible Pareto front",
    )
    if "budget_flops" in config:
        ax.axvline(
            config["budget_flops"], ls="--", c="C0", label=f"budget {config['budget_flops']:g}"
        )
    ax.set_xlabel("MACs ratio (pruned / base)")
    ax.set_ylabel("val accuracy")
    ax.set_title(study.study_name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
