"""Plots of a study: every trial's val accuracy against its budgeted ratio, as a PNG (matplotlib)
and as a self-contained interactive HTML page (plotly, plotly.js inlined so it opens offline).

Both files show the same points (:func:`collect`):

- the feasible Pareto front (:func:`autoprune.study.pareto_front`, what ``export`` writes), as a line;
- the other fine-tuned trials: feasible ones grey, infeasible ones (over a budget) hollow;
- the baseline trials, marked and named;
- the candidates the adaptive-BN proxy screened out (PRUNED: they have a ratio but no val
  accuracy), as ticks along the bottom;
- the budget, a vertical line, and the base model: ratio 1.0 at the val accuracy stored in its
  base checkpoint.

The x axis is the study's budgeted ratio (:func:`autoprune.study.front_metric`): the MACs ratio,
or with ``--objective latency`` the latency ratio.

The interactive figure is built from plotly graph objects rather than on top of
:func:`optuna.visualization.plot_pareto_front`: that function's hover text is the JSON of every
user attribute (the whole applied policy, the timings and counters: kilobytes per point, which
no one can read in a tooltip), its ``constraints_func`` is deprecated since Optuna 4.0, and its
front is Optuna's rather than the one autoprune exports; baselines, screened candidates, the
budget and the base model would all have been traces added to it anyway.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError
from autoprune.files import atomic_write, read_torch_file
from autoprune.policy import Policy
from autoprune.records import TrialRecord
from autoprune.study import (
    front_metric,
    has_config,
    pareto_front,
    rung_of,
    search_config,
    study_budget,
    trial_metric,
)

# The PNG's size: 7 x 4.5 inches at 120 dpi, 840 x 540 pixels.
PNG_INCHES = (7.0, 4.5)
PNG_DPI = 120
PNG_LABEL_PT = 7  # a stacked label's step down, in points (fontsize 6)
HTML_LABEL_PX = 12  # the same in the HTML, in pixels (font size 9)
METRIC_LABELS = {"macs_ratio": "MACs ratio", "latency_ratio": "latency ratio"}
AXIS_TITLES = {
    "macs_ratio": "MACs ratio (pruned / base)",
    "latency_ratio": "latency ratio (pruned / base median latency)",
}
# The kinds of plotted trials, in drawing order, with their legend names.
KINDS = {
    "screened": "screened out by the proxy (no val accuracy)",
    "infeasible": "infeasible (over the budget)",
    "feasible": "feasible, dominated",
    "front": "feasible Pareto front",
}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass
class PlottedTrial:
    """One trial as plotted: where it goes and what its hover text says."""

    number: int
    kind: str  # a key of KINDS
    ratio: float  # the study's budgeted ratio (x)
    val_accuracy: float | None  # y; None for a candidate screened out before fine-tuning
    baseline: str | None  # the baseline's name, e.g. "uniform-l1"; None for a searched trial
    hover: str  # plotly hover text (lines joined by <br>)
    rung: int = 0  # the ladder rung its figure was fine-tuned at (--rungs)

    @property
    def y(self) -> float:
        """The val accuracy as plotted (NaN, drawn nowhere, for a screened-out candidate)."""
        return math.nan if self.val_accuracy is None else self.val_accuracy


@dataclass
class FrontPlot:
    """What :func:`write_png` and :func:`figure` draw, read once from the study."""

    study: str
    metric: str  # macs_ratio | latency_ratio: the x axis
    budget: float | None  # the bound on ``metric`` (None: not an autoprune study)
    trials: list[PlottedTrial] = field(default_factory=list)
    base_accuracy: float | None = None  # the base checkpoint's val accuracy (None: unreadable)
    unplaced: int = 0  # finished trials without a ``metric`` value (e.g. latency not measured)

    def of(self, kind: str) -> list[PlottedTrial]:
        return [t for t in self.trials if t.kind == kind]

    def baselines(self) -> list[PlottedTrial]:
        return [t for t in self.trials if t.baseline and t.val_accuracy is not None]

    def title(self) -> str:
        finetuned = sum(t.val_accuracy is not None for t in self.trials)
        return (
            f"{self.study}: val accuracy vs {METRIC_LABELS[self.metric]} "
            f"({finetuned} fine-tuned, {len(self.of('screened'))} screened out)"
        )


LABEL_NEAR = (0.04, 0.03)  # labels of points closer than this share of the x / y span collide


def label_rows(points: list[PlottedTrial], everything: list[PlottedTrial]) -> list[int]:
    """A row per label of ``points`` (baselines), so that labels of points that tie or nearly
    tie stack instead of printing over each other: 0 beside the point, 1 one line lower, ...

    Near means within :data:`LABEL_NEAR` of the spans of ``everything`` plotted.
    """
    placed = [p for p in everything if p.val_accuracy is not None]

    def span(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return (max(finite) - min(finite)) if len(finite) > 1 else 0.0

    near_x = LABEL_NEAR[0] * (span([p.ratio for p in placed]) or 1.0)
    near_y = LABEL_NEAR[1] * (span([p.y for p in placed]) or 1.0)
    rows: dict[int, int] = {}
    order = sorted(range(len(points)), key=lambda i: (-points[i].y, points[i].ratio, i))
    for i in order:
        taken = {
            rows[j]
            for j in rows
            if abs(points[j].ratio - points[i].ratio) <= near_x
            and abs(points[j].y - points[i].y) <= near_y
        }
        rows[i] = next(r for r in range(len(points)) if r not in taken)
    return [rows[i] for i in range(len(points))]


def criteria_counts(policy: Policy) -> dict[str, int]:
    """How many groups each criterion scores, most used first (ties by name)."""
    counts = Counter(g.criterion for g in policy.groups.values())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def criteria_text(counts: dict[str, int]) -> str:
    """``l1x12 fpgmx3``: the criteria of a policy as tables and hover text show them."""
    return " ".join(f"{name}x{n}" for name, n in counts.items())


def collect(study: optuna.Study, log: Callable[[str], None] = _stderr) -> FrontPlot:
    """Every finished trial of ``study`` placed on the plot, and the base model's accuracy.

    ``log`` is told (one line each) when the base model's point is left out and when trials
    have no value of the plotted ratio.
    """
    metric = front_metric(study)
    plot = FrontPlot(study.study_name, metric, study_budget(study))
    front = {p.number for p in pareto_front(study)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        ratio = trial_metric(t, metric)
        if ratio is None or not math.isfinite(ratio):
            plot.unplaced += 1
            continue
        if t.state is TrialState.PRUNED:
            kind = "screened"
        elif t.number in front:
            kind = "front"
        elif any(v > 0 for v in t.constraints.values()):
            kind = "infeasible"
        else:
            kind = "feasible"
        accuracy = trial_metric(t, "val_accuracy") if kind != "screened" else None
        baseline = TrialRecord.from_trial(t).baseline
        plot.trials.append(
            PlottedTrial(
                t.number,
                kind,
                ratio,
                accuracy,
                str(baseline) if baseline else None,
                _hover(t, kind),
                rung_of(t),
            )
        )
    if plot.unplaced:
        log(
            f"{plot.unplaced} finished trial(s) of '{study.study_name}' have no "
            f"{METRIC_LABELS[metric]} and are not plotted"
        )
    plot.base_accuracy = _base_accuracy(study, log)
    return plot


def _hover(t: FrozenTrial, kind: str) -> str:
    record = TrialRecord.from_trial(t)
    baseline = record.baseline
    lines = [f"trial {t.number} ({f'baseline {baseline}' if baseline else 'searched'})"]
    if kind == "screened":
        lines.append("screened out by the adaptive-BN proxy: not fine-tuned")
    else:
        lines.append(f"val acc {t.values[0]:.4f}")
    if record.level:
        lines.append(
            f"ladder rung {record.level}: trial {record.promoted_from} promoted to a "
            "longer fine-tune"
        )
    proxy = record.metric("proxy_accuracy")
    if proxy is not None:
        lines.append(f"proxy acc {proxy:.4f}")
    for name in ("macs_ratio", "latency_ratio", "params_ratio"):
        value = trial_metric(t, name)
        if value is None:
            continue
        text = f"{name.replace('_', ' ').replace('macs', 'MACs')} {value:.4f}"
        latency_ms = record.metric("latency_ms")
        if name == "latency_ratio" and latency_ms is not None:
            text += f" ({latency_ms:.3g} ms)"
        lines.append(text)
    policy = record.applied_policy(t.number)
    if policy is not None:
        lines.append(f"criteria {criteria_text(criteria_counts(policy))}")
        if policy.depth.drop_blocks:
            lines.append(f"blocks dropped: {', '.join(policy.depth.drop_blocks)}")
    if kind == "front":
        lines.append("on the feasible Pareto front")
    elif kind == "infeasible":
        lines.append("infeasible: over the budget")
    return "<br>".join(lines)


def _base_accuracy(study: optuna.Study, log: Callable[[str], None]) -> float | None:
    """The val accuracy stored in the study's base checkpoint (None, said on ``log``, if unreadable)."""
    path = search_config(study).base_checkpoint if has_config(study) else None
    if not path:
        log(
            f"study '{study.study_name}' names no base checkpoint: plotted without the base model's point"
        )
        return None
    try:
        payload = read_torch_file(path, "base checkpoint", "plotted without the base model's point")
    except UserError as exc:
        log(str(exc))
        return None
    metrics = payload.get("metrics") if isinstance(payload, dict) else None
    accuracy = metrics.get("val_accuracy") if isinstance(metrics, dict) else None
    if not isinstance(accuracy, (int, float)):
        log(
            f"base checkpoint {path} stores no val accuracy: plotted without the base model's point"
        )
        return None
    return float(accuracy)


# --------------------------------------------------------------------------- PNG


def write_png(plot: FrontPlot, path: Path) -> Path:
    """Draw ``plot`` with matplotlib (Agg) into a :data:`PNG_INCHES` x :data:`PNG_DPI` PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=PNG_INCHES, dpi=PNG_DPI)
    styles: dict[str, dict[str, Any]] = {
        "infeasible": {"marker": "o", "s": 22, "facecolors": "none", "edgecolors": "C1"},
        "feasible": {"marker": "o", "s": 18, "c": "0.6"},
    }
    for kind, style in styles.items():
        points = plot.of(kind)
        if points:
            ax.scatter(
                [p.ratio for p in points],
                [p.y for p in points],
                label=KINDS[kind],
                zorder=2,
                **style,
            )
    front = sorted(plot.of("front"), key=lambda p: p.ratio)
    if front:
        ax.plot(
            [p.ratio for p in front],
            [p.y for p in front],
            "o-",
            c="C3",
            ms=5,
            label=KINDS["front"],
            zorder=3,
        )
    baselines = plot.baselines()
    if baselines:
        ax.scatter(
            [p.ratio for p in baselines],
            [p.y for p in baselines],
            s=50,
            marker="x",
            c="C2",
            label="baselines",
            zorder=4,
        )
        for p, row in zip(baselines, label_rows(baselines, plot.trials), strict=True):
            ax.annotate(
                str(p.baseline),
                (p.ratio, p.y),
                xytext=(5, -2 - PNG_LABEL_PT * row),
                textcoords="offset points",
                fontsize=6,
                color="C2",
            )
    for p in plot.trials:  # which rung of the ladder a figure comes from
        if p.rung and p.val_accuracy is not None:
            ax.annotate(
                f"r{p.rung}", (p.ratio, p.y), xytext=(-9, 3), textcoords="offset points",
                fontsize=6, color="0.3",
            )  # fmt: skip
    if plot.base_accuracy is not None:
        ax.scatter(
            [1.0], [plot.base_accuracy], s=90, marker="*", c="k", label="base model", zorder=4
        )
    screened = plot.of("screened")
    if screened:  # no val accuracy: ticks at the bottom of the axes, at their ratio
        ax.plot(
            [p.ratio for p in screened],
            [0.02] * len(screened),
            "|",
            c="0.45",
            ms=8,
            transform=ax.get_xaxis_transform(),
            label=KINDS["screened"],
        )
    if plot.budget is not None:
        ax.axvline(
            plot.budget,
            ls="--",
            c="C0",
            label=f"budget {plot.budget:g} ({METRIC_LABELS[plot.metric]})",
        )
    ax.set_xlabel(AXIS_TITLES[plot.metric])
    ax.set_ylabel("val accuracy")
    ax.set_title(plot.title(), fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- HTML


def figure(plot: FrontPlot) -> Any:
    """``plot`` as a plotly ``Figure``: one trace per kind of trial, baselines, base model."""
    import plotly.graph_objects as go

    fig = go.Figure()
    markers = {
        "infeasible": {"symbol": "circle-open", "color": "#ff7f0e", "size": 8},
        "feasible": {"symbol": "circle", "color": "#999999", "size": 7},
        "front": {"symbol": "circle", "color": "#d62728", "size": 9},
    }
    for kind, marker in markers.items():
        points = sorted(plot.of(kind), key=lambda p: p.ratio)
        if not points:
            continue
        fig.add_trace(
            go.Scatter(
                x=[p.ratio for p in points],
                y=[p.val_accuracy for p in points],
                mode="lines+markers" if kind == "front" else "markers",
                name=KINDS[kind],
                marker=marker,
                text=[p.hover for p in points],
                customdata=[p.number for p in points],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    baselines = plot.baselines()
    if baselines:
        fig.add_trace(
            go.Scatter(
                x=[p.ratio for p in baselines],
                y=[p.val_accuracy for p in baselines],
                mode="markers",
                name="baselines",
                marker={"symbol": "x", "color": "#2ca02c", "size": 11},
                hovertext=[p.hover for p in baselines],
                customdata=[p.number for p in baselines],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
        for p, row in zip(baselines, label_rows(baselines, plot.trials), strict=True):
            fig.add_annotation(
                x=p.ratio, y=p.val_accuracy, text=str(p.baseline), showarrow=False,
                xanchor="left", xshift=7, yshift=-HTML_LABEL_PX * row,
                font={"size": 9, "color": "#2ca02c"},
            )  # fmt: skip
    if plot.base_accuracy is not None:
        fig.add_trace(
            go.Scatter(
                x=[1.0],
                y=[plot.base_accuracy],
                mode="markers",
                name="base model",
                marker={"symbol": "star", "color": "black", "size": 14},
                text=[
                    f"base model (unpruned)<br>val acc {plot.base_accuracy:.4f}<br>"
                    f"{METRIC_LABELS[plot.metric]} 1.0"
                ],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    screened = plot.of("screened")
    if screened:  # no val accuracy: ticks along the bottom, on a hidden 0..1 axis
        fig.add_trace(
            go.Scatter(
                x=[p.ratio for p in screened],
                y=[0.03] * len(screened),
                yaxis="y2",
                mode="markers",
                name=KINDS["screened"],
                marker={"symbol": "line-ns-open", "color": "#777777", "size": 12},
                text=[p.hover for p in screened],
                customdata=[p.number for p in screened],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if plot.budget is not None:
        fig.add_vline(
            x=plot.budget,
            line={"dash": "dash", "color": "#1f77b4"},
            annotation_text=f"budget {plot.budget:g}",
            annotation_position="top",
        )
    fig.update_layout(
        title={"text": plot.title(), "font": {"size": 14}},
        xaxis_title=AXIS_TITLES[plot.metric],
        yaxis_title="val accuracy",
        yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
        hovermode="closest",
    )
    return fig


def write_html(plot: FrontPlot, path: Path) -> Path:
    """Write :func:`figure` as one HTML file with plotly.js inlined (it opens offline)."""
    fig = figure(plot)
    with atomic_write(path) as tmp:
        fig.write_html(
            str(tmp), include_plotlyjs=True, full_html=True, config={"displaylogo": False}
        )
    return path


def plot_study(
    study: optuna.Study, out_dir: Path, log: Callable[[str], None] = _stderr
) -> list[Path]:
    """Write ``front.png`` and ``front.html`` of ``study`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = collect(study, log)
    return [write_png(plot, out_dir / "front.png"), write_html(plot, out_dir / "front.html")]
