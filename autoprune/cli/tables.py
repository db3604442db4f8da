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
    rows = []
    for p in front:
        crits = Counter(g.criterion for g in p.policy.groups.values())
        rows.append(
            (
                p.number,
                f"{p.val_accuracy:.4f}",
                f"{p.macs_ratio:.4f}",
                f"{p.params_ratio:.4f}",
                " ".join(f"{c}x{n}" for c, n in crits.most_common()),
                len(p.policy.depth.drop_blocks),
            )
        )
    print_table(
        ["trial", "val acc", "MACs ratio", "params ratio", "criteria", "blocks dropped"],
        rows,
        title=title,
    )
