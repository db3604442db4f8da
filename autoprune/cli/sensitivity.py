"""``autoprune sensitivity``: the per-group sensitivity curves the search allocates with, shown.

The sensitivity prior (:func:`autoprune.priors.sensitivity_curves`) prunes each DepGraph group
alone at a few rates and measures the adaptive-BN proxy's val-loss increase. A user who is
asked to trust an allocation built from those curves should be able to see them: this verb
prints them as a table beside each group's share of the base's MACs (what pruning the group
can save) and draws both in one PNG. The curves come from the same cache a search uses, so
after a search they cost nothing; otherwise they are measured once (and cached for searches).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoprune.errors import UserError


def sensitivity_report(args: argparse.Namespace) -> dict[str, Any]:
    """The curves and MACs shares of ``args``' base model on its dataset (a dict for ``render``)."""
    from autoprune import prepare, priors
    from autoprune.base import load_base
    from autoprune.config import SearchConfig
    from autoprune.macs import MacsModel
    from autoprune.space import SearchSpace

    dataset = args.dataset
    if dataset is None and args.base_checkpoint:
        dataset = load_base(args.base_checkpoint).dataset.get("name")
    config = SearchConfig(
        model=args.model,
        dataset=dataset or SearchConfig().dataset,
        base_checkpoint=args.base_checkpoint,
        space=args.space,
        data_root=args.data_root,
    )
    config.validate()
    base = prepare.resolve_base(config, print)
    config = replace(
        config,
        base_checkpoint=str(Path(base.path).resolve()),
        image_size=base.image_size(config.dataset, None),
    )
    space = SearchSpace.load(config.space)
    objective = prepare.objective_config(config, space)
    curves = priors.sensitivity_curves(objective, log=print)
    model = base.build()
    mm = MacsModel(model, base.spec.example_inputs())
    unpruned = mm.macs([0] * len(mm.group_names))
    rows = []
    for i, name in enumerate(mm.group_names):
        counts = [0] * len(mm.group_names)
        counts[i] = mm.channels[i] - 1  # all but one channel: what the group's width costs
        share = 1.0 - mm.macs(counts) / unpruned
        rows.append(
            {
                "group": name,
                "channels": mm.channels[i],
                "macs_share": share,
                "loss_increase": {f"{r:g}": d for r, d in curves.get(name, [])},
            }
        )
    return {
        "model": base.spec.name,
        "dataset": config.dataset,
        "base_checkpoint": config.base_checkpoint,
        "criterion": priors.SENSITIVITY_CRITERION,
        "rates": sorted({r for c in curves.values() for r, _ in c}),
        "groups": rows,
    }


def sensitivity_table(report: dict[str, Any]) -> None:
    from autoprune.cli.tables import print_table

    rates = [f"{r:g}" for r in report["rates"]]
    print_table(
        ["group", "channels", "MACs share"] + [f"loss +, rate {r}" for r in rates],
        [
            (
                row["group"],
                row["channels"],
                f"{row['macs_share']:.3f}",
                *(f"{row['loss_increase'].get(r, float('nan')):.4f}" for r in rates),
            )
            for row in report["groups"]
        ],
        title=(
            f"sensitivity of {report['model']} on {report['dataset']}: adaptive-BN proxy val-loss "
            f"increase when one group alone loses that share of its channels "
            f"({report['criterion']}); MACs share: what the group's channels cost"
        ),
    )


def write_png(report: dict[str, Any], path: Path) -> Path:
    """Loss increase against rate per group (left) and MACs share per group (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["groups"]
    fig, (curves, shares) = plt.subplots(
        1, 2, figsize=(11, max(4.0, 0.22 * len(rows) + 1.5)), dpi=110,
        gridspec_kw={"width_ratios": [1.3, 1]},
    )  # fmt: skip
    cmap = plt.get_cmap("tab20")  # 20 distinct colours, then they repeat
    for i, row in enumerate(rows):
        points = sorted((float(r), d) for r, d in row["loss_increase"].items())
        curves.plot(
            [0.0] + [r for r, _ in points], [0.0] + [d for _, d in points], marker="o",
            markersize=3, color=cmap(i % 20), label=row["group"],
        )  # fmt: skip
    curves.set_xlabel("rate (share of the group's channels removed)")
    curves.set_ylabel("proxy val-loss increase")
    curves.set_title("each group pruned alone")
    if len(rows) <= 24:
        curves.legend(fontsize=6, ncol=2)
    names = [row["group"] for row in rows]
    shares.barh(range(len(rows)), [row["macs_share"] for row in rows],
                color=[cmap(i % 20) for i in range(len(rows))])  # fmt: skip
    shares.set_yticks(range(len(rows)), names, fontsize=6)
    shares.invert_yaxis()
    shares.set_xlabel("share of the base's MACs")
    shares.set_title("what each group costs")
    fig.suptitle(f"{report['model']} on {report['dataset']}: per-group sensitivity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    from autoprune.cli.reports import render

    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a folder: give a .png file name")
    report = sensitivity_report(args)
    path = out or Path(f"sensitivity-{report['model']}-{report['dataset']}.png".replace(":", "_"))
    report["png"] = str(write_png(report, path))
    render(report, args.format, sensitivity_table)
    if args.format == "table":
        print(f"plot: {report['png']}")
    return 0
