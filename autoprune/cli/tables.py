"""How verbs show results on the terminal: rich tables drawn from the reports' dicts.

Every table here is ``--format table`` of a report in :mod:`.reports`: it draws only what the
report holds, so the JSON and YAML forms of a verb say the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None
) -> None:
    """A rich table on stdout; numeric-looking columns (ratios, accuracies, shares) right-aligned."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Cells are data, not markup: "autoprune[timm]" or a path with brackets prints as written.
    table = Table(title=escape(title) if title else None, show_lines=False)
    for h in headers:
        table.add_column(
            h,
            justify="right"
            if h.endswith(("%", "ratio", "acc", "accuracy", "channels", "share"))
            else "left",
        )
    for row in rows:
        table.add_row(*(escape(str(c)) for c in row))
    Console(width=200).print(table)


LABELS = {"macs_ratio": "MACs ratio", "latency_ratio": "latency ratio"}


def print_study(study_obj: Any, name: str) -> None:
    """The ``show`` table of a study (what ``search``, ``resume`` and ``baselines`` end with)."""
    from autoprune.cli.reports import study_report

    study_table(study_report(study_obj))


def study_table(report: dict[str, Any]) -> None:
    """``show``: the front, the baselines, the winner at the budget, the proxy, the failures
    (and ``--timing``), drawn from :func:`~autoprune.cli.reports.study_report`'s dict."""
    from autoprune.plots import criteria_text
    from autoprune.study import AT_BUDGET

    latency = report["measures_latency"]
    counts = report["trials"]
    front_table(
        report["front"],
        latency,
        f"feasible Pareto front of '{report['study']}' ({counts['complete']} fine-tuned trials, "
        f"{counts['screened_out']} screened out)",
    )
    if report["baselines"]:
        print_table(
            ["baseline", "trial", "val acc", "MACs ratio"]
            + (["latency ratio"] if latency else [])
            + ["proxy acc", "criteria"],
            [
                (
                    b["name"],
                    b["trial"],
                    _number(b["val_accuracy"]),
                    _number(b["macs_ratio"]),
                    *([_number(b["latency_ratio"])] if latency else []),
                    _number(b["proxy_accuracy"]),
                    criteria_text(b["criteria"]),
                )
                for b in report["baselines"]
            ],
            title="baselines (at the budget; the space's first fine-tune epochs at its middle lr)",
        )
    best = report["winner"]
    if best is not None:
        metric = report["front_metric"]
        line = (
            f"winner at the budget {report['budget']:g}: trial {best['trial']}, val acc "
            f"{best['val_accuracy']:.4f}, {LABELS[metric]} {_number(best[metric])}"
            + ("" if best["at_budget"] else f" (no trial within {AT_BUDGET} of the budget)")
        )
        top = report["best_baseline"]
        if top is not None:
            line += f"; best baseline {top['name']} {top['val_accuracy']:.4f}"
        searched = report["best_searched"]
        if searched is not None:
            line += f"; best searched trial {searched['trial']} {searched['val_accuracy']:.4f}"
        print(line)
    if report["front"]:
        hv = report["hypervolume"]
        ref = hv["reference"]
        print(
            f"front hypervolume (val acc against {LABELS[report['front_metric']]}, reference "
            f"{ref[report['front_metric']]:g} / {ref['val_accuracy']:g}): {_number(hv['value'], 4)}"
        )
    if report.get("sensitivity_command"):
        print(
            f"per-group sensitivity behind the sensitivity prior: {report['sensitivity_command']}"
        )
    rho = report["proxy_spearman"]
    if rho is not None:
        print(
            "adaptive-BN proxy vs fine-tuned val accuracy at the budget: Spearman "
            f"{_number(rho['rho'], 3)} over {rho['trials']} trials"
        )
    failures_table(report["failed_trials"])
    if "timing" in report:
        timing_table(report["timing"])


def front_table(points: list[dict[str, Any]], latency: bool, title: str) -> None:
    """A study's feasible Pareto front, one row per point, with the criteria each policy uses."""
    from autoprune.plots import criteria_text

    if not points:
        print("no feasible completed trial yet: the Pareto front is empty")
        return
    print_table(
        ["trial", "source", "val acc", "MACs ratio"]
        + (["latency ratio", "latency ms"] if latency else [])
        + ["params ratio", "criteria", "blocks dropped"],
        [
            (
                p["trial"],
                p["source"] + (f" (rung {p['rung']})" if p.get("rung") else ""),
                _number(p["val_accuracy"]),
                _number(p["macs_ratio"]),
                *([_number(p["latency_ratio"]), _number(p["latency_ms"], 3)] if latency else []),
                _number(p["params_ratio"]),
                criteria_text(p["criteria"]),
                len(p["blocks_dropped"]),
            )
            for p in points
        ],
        title=title,
    )


def _number(value: float | None, digits: int = 4) -> str:
    """A metric in a table: ``-`` when unmeasured, ``nan`` when undefined."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


FAILURES_SHOWN = 10  # the latest failed trials ``show`` lists; older ones are counted


def failures_table(failed: list[dict[str, Any]]) -> None:
    """The study's failed trials, latest last: number, kind and the reason's first line."""
    if not failed:
        return
    shown = failed[-FAILURES_SHOWN:]
    title = f"failed trials ({len(failed)})"
    if len(failed) > len(shown):
        title += f", the latest {len(shown)}"
    print_table(
        ["trial", "kind", "reason"],
        [(f["trial"], f["kind"] or "-", _shorten(f["reason"], 200)) for f in shown],
        title=title,
    )


def _shorten(line: str, chars: int) -> str:
    return line if len(line) <= chars else line[: chars - 3] + "..."


def timing_table(rows: list[dict[str, Any]]) -> None:
    """``show --timing``: median seconds per bracket for each phase, and shares of wall time."""
    if not rows:
        print("no timed trials yet (studies made before per-phase timing have none)")
        return
    print_table(
        ["phase", "median s", "median share %", "total share %"],
        [
            (
                r["phase"],
                f"{r['median_s']:.2f}",
                f"{100 * r['median_share']:.1f}",
                f"{100 * r['total_share']:.1f}",
            )
            for r in rows
        ],
        title="time per fine-tuned trial (screened candidates included); overhead = wall - phases",
    )


def studies_table(rows: list[dict[str, Any]]) -> None:
    """``studies``: one row per study, from :func:`~autoprune.cli.reports.studies_report`."""
    print_table(
        ["study", "objective", "budget", "complete", "failed", "running", "front"],
        [
            (
                r["name"],
                r["objective"],
                "" if r["budget"] is None else f"{r['budget']:g}",
                r["complete"],
                r["failed"],
                r["running"],
                r["front"],
            )
            for r in rows
        ],
        title="studies",
    )


def groups_table(report: dict[str, Any]) -> None:
    """``inspect``: the model's prunable DepGraph groups."""
    groups = report["groups"]
    model = report["model"]
    print_table(
        ["group (root module)", "channels", "MACs share %", "layers"],
        [
            (g["name"], g["channels"], f"{100 * g['macs_share']:.1f}", len(g["layers"]))
            for g in groups
        ],
        title=f"{model['name']} {list(model['input_shape'])}: {len(groups)} prunable groups, "
        f"{report['macs'] / 1e6:.2f}M MACs, {report['params'] / 1e6:.3f}M params",
    )
    for name, reason in report.get("excluded", {}).items():
        print(f"not pruned: group {name}: {reason}")


def blocks_table(report: dict[str, Any]) -> None:
    """``inspect --blocks``: each residual block's PLS-VIP score."""
    print_table(
        ["block", "VIP score", "removable", "MACs share %"],
        [
            (
                b["name"],
                f"{b['score']:.4f}",
                "yes" if b["removable"] else "no",
                f"{100 * b['macs_share']:.2f}",
            )
            for b in report["blocks"]
        ],
        title=f"residual blocks of {report['model']['name']} scored by PLS-VIP on {report['dataset']}",
    )
