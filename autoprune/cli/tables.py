"""How verbs show results on the terminal: rich tables, and the Pareto-front table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None
) -> None:
    """A rich table on stdout; numeric-looking columns (ratios, accuracies, shares) right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for h in headers:
        table.add_column(
            h,
            justify="right"
            if h.endswith(("%", "ratio", "acc", "accuracy", "channels", "share"))
            else "left",
        )
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=200).print(table)


def print_front(study_obj: Any, title: str) -> None:
    """A study's feasible Pareto front, one row per point, with the criteria each policy uses."""
    from autoprune.study import pareto_front

    front = pareto_front(study_obj)
    if not front:
        print("no feasible completed trial yet: the Pareto front is empty")
        return
    from autoprune.study import BASELINE_ATTR

    names = {
        t.number: t.user_attrs.get(BASELINE_ATTR) or "searched"
        for t in study_obj.get_trials(deepcopy=False)
    }
    rows = []
    for p in front:
        rows.append(
            (
                p.number,
                names.get(p.number, "searched"),
                f"{p.val_accuracy:.4f}",
                f"{p.macs_ratio:.4f}",
                f"{p.params_ratio:.4f}",
                _criteria_text(p.policy),
                len(p.policy.depth.drop_blocks),
            )
        )
    print_table(
        ["trial", "source", "val acc", "MACs ratio", "params ratio", "criteria", "blocks dropped"],
        rows,
        title=title,
    )


def _criteria_text(policy: Any) -> str:
    crits = Counter(g.criterion for g in policy.groups.values())
    return " ".join(f"{c}x{n}" for c, n in crits.most_common())


def print_study(study_obj: Any, name: str) -> None:
    """What ``show`` prints: the front, the baselines, the winner at the budget, the proxy."""
    from optuna.trial import TrialState

    from autoprune import study as studies
    from autoprune.policy import Policy

    complete = studies.complete_count(study_obj)
    screened = len(study_obj.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    print_front(
        study_obj,
        f"feasible Pareto front of '{name}' ({complete} fine-tuned trials, {screened} screened out)",
    )
    budget = studies.study_budget(study_obj)
    base = studies.baseline_trials(study_obj)
    if base:
        print_table(
            ["baseline", "trial", "val acc", "MACs ratio", "proxy acc", "criteria"],
            [
                (
                    t.user_attrs[studies.BASELINE_ATTR],
                    t.number,
                    f"{t.values[0]:.4f}",
                    f"{t.values[1]:.4f}",
                    _proxy_text(t),
                    _criteria_text(Policy.from_dict(t.user_attrs["policy"])),
                )
                for t in base
                if "policy" in t.user_attrs
            ],
            title="baselines (at the budget; the space's first fine-tune epochs at its middle lr)",
        )
    front = studies.pareto_front(study_obj)
    if front and budget is not None:
        best = studies.winner(front, budget)
        searched = studies.best_searched(study_obj, budget)
        near = best.macs_ratio >= budget - studies.AT_BUDGET
        line = (
            f"winner at the budget {budget:g}: trial {best.number}, val acc {best.val_accuracy:.4f}, "
            f"MACs ratio {best.macs_ratio:.4f}"
            + ("" if near else f" (no trial within {studies.AT_BUDGET} of the budget)")
        )
        if base:
            top = max(base, key=lambda t: t.values[0])
            line += f"; best baseline {top.user_attrs[studies.BASELINE_ATTR]} {top.values[0]:.4f}"
        if searched is not None:
            line += f"; best searched trial {searched.number} {searched.values[0]:.4f}"
        print(line)
    rho = studies.proxy_spearman(study_obj)
    if rho is not None:
        print(
            f"adaptive-BN proxy vs fine-tuned val accuracy at the budget: Spearman {rho[0]:.3f} over {rho[1]} trials"
        )
    print_failures(study_obj)


FAILURES_SHOWN = 10  # the latest failed trials ``show`` lists; older ones are counted


def print_failures(study_obj: Any) -> None:
    """The study's failed trials, latest last: number, kind and the reason's first line."""
    from optuna.trial import TrialState

    failed = study_obj.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return
    shown = failed[-FAILURES_SHOWN:]
    title = f"failed trials ({len(failed)})"
    if len(failed) > len(shown):
        title += f", the latest {len(shown)}"
    print_table(
        ["trial", "kind", "reason"],
        [
            (
                t.number,
                t.user_attrs.get("error_kind", "-"),
                _first_line(str(t.user_attrs.get("error", "no reason stored")), 200),
            )
            for t in shown
        ],
        title=title,
    )


def _first_line(text: str, chars: int) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= chars else line[: chars - 3] + "..."


def _proxy_text(trial: Any) -> str:
    value = trial.user_attrs.get("proxy_accuracy")
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def print_timing(study_obj: Any) -> None:
    """``show --timing``: median seconds per bracket for each phase, and shares of wall time."""
    from autoprune import study as studies

    rows = studies.timing_summary(study_obj)
    if not rows:
        print("no timed trials yet (studies made before per-phase timing have none)")
        return
    print_table(
        ["phase", "median s", "median share %", "total share %"],
        [
            (phase, f"{median:.2f}", f"{100 * share:.1f}", f"{100 * total:.1f}")
            for phase, median, share, total in rows
        ],
        title="time per fine-tuned trial (screened candidates included); overhead = wall - phases",
    )
