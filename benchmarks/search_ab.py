"""Two versions of the search, paired: does a change to autoprune find better policies?

    git worktree add --detach ../before <rev>               # the code to compare against
    PYTHONPATH=../before python benchmarks/search_ab.py run before --seeds 0 1 2
    python benchmarks/search_ab.py run after --seeds 0 1 2   # this tree
    python benchmarks/search_ab.py report before after       # the paired table

An ablation runs one tree twice, the second time with one dimension of the search changed:
``run depth --space benchmarks/spaces/ablate-depth.yaml`` against ``run default``, or
``--sampler`` for the sampler's; ``ablations`` prints every one run so far against its control
(:data:`ABLATIONS`), the table ``peers_vs_search.py`` puts in docs/benchmarks.md.

``run LABEL`` runs, with whatever autoprune the interpreter imports, the ``peers_vs_search.py``
``cpu`` profile's search (resnet20 on Fashion-MNIST, the ``fashion-mnist`` space, 14 trials of
which 6 baselines, Ray, 2 at once, no ladder) at each budget and seed, then replays its best
*searched* policy at the budget and the ``--baseline`` policy of the same study with the same
final fine-tune (0.3 epochs, test split). Rows are appended to ``--out``/LABEL.jsonl, so the two
versions run one after the other (alternate them per seed when the machine's speed drifts).
``report A B`` prints, per budget, both versions' test accuracy and search wall (mean +- SE over
seeds) and the paired difference B - A with its SE. The base (``autoprune train --model
resnet20 --dataset fashion-mnist --epochs 10``) must exist under ``$AUTOPRUNE_HOME``; both
versions must use the same file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

DATASET = "fashion-mnist"
SPACE = "fashion-mnist"
TRIALS = 14
REPLAY_EPOCHS = 0.3

# The ablations of the search's own dimensions, in the table's order: the label ``run`` writes
# its rows under -> the label of the runs it is paired with, and what it changes there. Most
# change one thing in the ``fashion-mnist`` space (benchmarks/spaces/ablate-LABEL.yaml) against
# that space as bundled (``default``); ``auto-every-step`` is the same space run by two versions.
CONTROL = "default"
ABLATIONS: dict[str, tuple[str, str]] = {
    "criterion-per-group": (
        CONTROL,
        "a criterion per group (`criterion_per: group`), not per stage",
    ),
    "criterion-global": (CONTROL, "one criterion for the network (`criterion_per: global`)"),
    "class-threshold": (
        CONTROL,
        "`class_aware` among the criteria, its class threshold searched in [1, 5]",
    ),
    "retrain-budget": (
        CONTROL,
        "fine-tune epochs searched in {0.1, 0.2, 0.3}, iterative steps in {1, 2}",
    ),
    "depth": (
        CONTROL,
        "PLS-VIP block removal cascaded with channel pruning (`max_blocks_per_stage: 1`)",
    ),
    "auto": (CONTROL, "LAASP's loss-aware selection (`auto`) among the criteria"),
    "auto-every-step": (
        "auto-once",
        "`auto` the only criterion, two steps: chosen again at every step, against once on the "
        "base (the code before 8d7efbe, `ablate-auto-steps.yaml`)",
    ),
    "tpe-univariate": (CONTROL, "TPE without `multivariate` (`--sampler tpe-univariate`)"),
    # Run on another machine than the rows above, whose Fashion-MNIST base trained to other
    # weights (uniform-relevance's val 0.841 there against 0.810): its control is the bundled
    # space run again on that base (``default-2``).
    "floor": (
        "default-2",
        "a floor under the priors' rates (`allocation.floor: 0.1`): a raised multiplier also "
        "prunes the groups a prior leaves whole (control: the bundled space on another base, "
        "`default-2`)",
    ),
}


def run(
    label: str,
    budgets: list[float],
    seeds: list[int],
    baseline: str,
    out: Path,
    space: str = SPACE,
    sampler: str = "tpe",
) -> None:
    """Search and replay each (budget, seed) with the imported autoprune; append JSON rows.

    ``space`` and ``sampler`` change the search itself: an ablation runs the same code twice,
    once with the default and once with one dimension changed (``benchmarks/spaces/``)."""
    from autoprune import study as studies
    from autoprune.base import default_base_path
    from autoprune.checkpoint import replay
    from autoprune.config import SearchConfig
    from autoprune.records import TrialRecord
    from autoprune.runner import search

    base = default_base_path("resnet20", DATASET)
    if not base.exists():
        raise SystemExit(
            f"no Fashion-MNIST base at {base}: autoprune train --model resnet20 --dataset "
            f"{DATASET} --epochs 10"
        )
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / f'{label}.db').resolve()}"
    for budget in budgets:
        for seed in seeds:
            name = f"ab-{label}-b{budget:g}-s{seed}"
            config = SearchConfig(
                model="resnet20", base_checkpoint=str(base), budget_flops=budget,
                dataset=DATASET, space=space, seed=seed, storage=storage, study=name,
                trials=TRIALS, sampler=sampler,
            )  # fmt: skip
            t0 = time.perf_counter()
            search(config, log=lambda _line: None, quiet=True, export=False)
            wall = time.perf_counter() - t0
            study = studies.load_study(studies.open_storage(storage), name)
            rho = studies.proxy_spearman(study)
            front_hv = studies.front_hypervolume(studies.pareto_front(study))
            picks = [("searched", studies.best_searched(study, budget))]
            picks += [
                (baseline, t)
                for t in studies.baseline_trials(study)
                if TrialRecord.from_trial(t).baseline == baseline
            ]
            for method, trial in picks:
                if trial is None:
                    print(f"{name}: no searched trial at the budget")
                    continue
                policy = TrialRecord.from_trial(trial).applied_policy(trial.number)
                assert policy is not None, f"trial {trial.number} stored no policy"
                result = replay(
                    policy, base_checkpoint=str(base), epochs=REPLAY_EPOCHS,
                    out=out / "checkpoints" / f"{name}-{method}.pt", export_program_file=False,
                    log=lambda _line: None,
                )  # fmt: skip
                row = {
                    "label": label, "space": space, "sampler": sampler,
                    "budget": budget, "seed": seed, "method": method,
                    "trial": trial.number, "val_accuracy": float(trial.values[0]),
                    "macs_ratio": float(trial.values[1]), "test_accuracy": result.test_accuracy,
                    "search_wall_s": wall, "spearman": None if rho is None else rho[0],
                    "screened_out": sum(t.state.name == "PRUNED" for t in study.trials),
                    "front_hypervolume": front_hv,
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                with (out / f"{label}.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")


def _mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {se:.4f}"


def _diff(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "-"
    scaled = [scale * v for v in values]
    se = statistics.stdev(scaled) / math.sqrt(len(scaled)) if len(scaled) > 1 else float("nan")
    return f"{statistics.mean(scaled):+.{digits}f} ± {se:.{digits}f}"


def report(a: str, b: str, out: Path) -> None:
    """Per budget and method: A and B (mean ± SE over seeds), and B - A paired by seed."""
    rows = {
        label: [json.loads(line) for line in (out / f"{label}.jsonl").read_text().splitlines()]
        for label in (a, b)
    }
    print(f"| B | method | {a} test | {b} test | {b} - {a}, pt (paired) | seeds |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(r["budget"], r["method"]) for r in rows[a]}, key=lambda k: (-k[0], k[1]))
    walls: dict[float, list[tuple[float, float]]] = {}
    volumes: dict[float, list[tuple[float, float]]] = {}
    for budget, method in keys:
        by_seed = {
            label: {
                r["seed"]: r for r in rows[label] if (r["budget"], r["method"]) == (budget, method)
            }
            for label in (a, b)
        }
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
        acc = {label: [by_seed[label][s]["test_accuracy"] for s in seeds] for label in (a, b)}
        diffs = [y - x for x, y in zip(acc[a], acc[b], strict=True)]
        print(
            f"| {budget:g} | {method} | {_mean_se(acc[a])} | {_mean_se(acc[b])} | "
            f"{_diff(diffs)} | {len(seeds)} |"
        )
        if method == "searched":
            walls[budget] = [
                (by_seed[a][s]["search_wall_s"], by_seed[b][s]["search_wall_s"]) for s in seeds
            ]
            # Rows written before the hypervolume was recorded have none.
            volumes[budget] = [
                (by_seed[a][s]["front_hypervolume"], by_seed[b][s]["front_hypervolume"])
                for s in seeds
                if "front_hypervolume" in by_seed[a][s] and "front_hypervolume" in by_seed[b][s]
            ]
    print()
    print(f"| B | {a} search s | {b} search s | {b} - {a}, s (paired) |")
    print("|---|---|---|---|")
    for budget, pairs in walls.items():
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        d = [y - x for x, y in pairs]
        print(
            f"| {budget:g} | {statistics.mean(xs):.0f} | {statistics.mean(ys):.0f} | "
            f"{_diff(d, scale=1.0, digits=0)} |"
        )
    if any(volumes.values()):
        print()
        print(f"| B | {a} front hypervolume | {b} front hypervolume | {b} - {a} (paired) |")
        print("|---|---|---|---|")
        for budget, pairs in volumes.items():
            if pairs:
                xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
                d = [y - x for x, y in pairs]
                print(
                    f"| {budget:g} | {_mean_se(xs)} | {_mean_se(ys)} | "
                    f"{_diff(d, scale=1.0, digits=4)} |"
                )


FRONT_POINTS = 4  # budgets per hand-made front, from 0.6 x B (where the space explores) to B
FRONT_METHODS = (
    "uniform-l1",
    "torch-pruning global (magnitude)",
    "searched front's policies, fine-tuned again",
)


def fine_tune_epochs(trial: Any) -> float:
    """The fine-tune epochs a stored trial ran (0 for none, or no trial)."""
    from autoprune.records import TrialRecord

    if trial is None:
        return 0.0
    return float((TrialRecord.from_trial(trial).policy or {}).get("retrain", {}).get("epochs", 0))


def fronts(label: str, out: Path, points: int = FRONT_POINTS) -> None:
    """The front each of ``label``'s searches made against the fronts uniform-l1 and
    Torch-Pruning's global magnitude pruning make with the same fine-tune epochs in all.

    A search of T trials spends E = the sum of their fine-tune epochs. Each hand-made front is
    ``points`` models at MACs ratios evenly from 0.6 x B to B, each fine-tuned E / points epochs
    (uniform-l1: the study's own baseline with its recipe, replayed at each ratio;
    Torch-Pruning: its library's global pruning, then autoprune's fine-tune with that recipe),
    measured on the val split as the search's trials are. A fourth front separates the policies
    from the epochs: the searched front's own policies, each fine-tuned again from the base for
    E / (its points) epochs, as a user would after the search (so E more in all).

    Rows go to ``fronts-LABEL.jsonl``; a (budget, seed, method) row already there is not
    measured again, so an interrupted run, or a method added later, costs only what is missing.
    """
    import copy
    from dataclasses import replace

    import peers

    from autoprune import study as studies
    from autoprune.base import default_base_path, load_base
    from autoprune.checkpoint import replay
    from autoprune.evaluate import load_splits
    from autoprune.policy import GroupPolicy, Policy
    from autoprune.records import TrialRecord
    from autoprune.train import TrainConfig, evaluate, finetune_pruned, select_device

    base = default_base_path("resnet20", DATASET)
    storage = studies.open_storage(f"sqlite:///{(out / f'{label}.db').resolve()}")
    rows = [r for r in _load(out, label) if r["method"] == "searched"]
    written = {(r["budget"], r["seed"], r["method"]) for r in _load(out, f"fronts-{label}")}
    device = select_device("auto")
    loaded = load_base(base)
    splits = load_splits(DATASET, None)
    example = loaded.spec.example_inputs().to(device)

    def replayed(policy: Policy, epochs: float, path: Path) -> tuple[float, float]:
        result = replay(
            policy, base_checkpoint=str(base), epochs=epochs, export_program_file=False,
            out=path, log=lambda _line: None,
        )  # fmt: skip
        return (result.macs_ratio, result.val_accuracy)

    def measure_row(r: dict) -> None:
        budget, seed = r["budget"], r["seed"]
        name = f"ab-{label}-b{budget:g}-s{seed}"
        study = studies.load_study(storage, name)
        epochs = sum(fine_tune_epochs(t) for t in studies.completed_trials(study))
        recipe = next(
            TrialRecord.from_trial(t).applied_policy(t.number)
            for t in studies.baseline_trials(study)
            if TrialRecord.from_trial(t).baseline == "uniform-l1"
        )
        assert recipe is not None
        each = epochs / points
        ratios = [budget * (0.6 + 0.4 * i / (points - 1)) for i in range(points)]
        front = studies.pareto_front(study)
        refit_each = epochs / len(front)

        def uniform_l1() -> list[tuple[float, float]]:
            made = []
            for ratio in ratios:
                uniform = replace(
                    recipe, target_macs_ratio=ratio, measured={}, removed_sha256=None,
                    groups={g: GroupPolicy(rate=0.5, criterion="l1") for g in recipe.groups},
                    retrain=replace(recipe.retrain, epochs=each),
                )  # fmt: skip
                path = out / "checkpoints" / f"{name}-front-uniform-{ratio:.3f}.pt"
                made.append(replayed(uniform, each, path))
            return made

        def torch_pruning() -> list[tuple[float, float]]:
            made = []
            for ratio in ratios:
                cut = peers.torch_pruning_global(
                    loaded.build().to(device), example, ratio, importance="magnitude",
                    calibration=splits.calibration, device=device,
                )  # fmt: skip
                tuned = copy.deepcopy(cut.model)
                finetune_pruned(
                    tuned, splits.train, splits.calibration,
                    TrainConfig(replace(recipe.retrain, epochs=each), cudnn_benchmark=False),
                    device, seed=recipe.seed,
                )  # fmt: skip
                made.append((cut.macs_ratio, evaluate(tuned, splits.val, device).accuracy))
            return made

        def refit() -> list[tuple[float, float]]:
            made = []
            for p in front:
                policy = replace(p.policy, retrain=replace(p.policy.retrain, epochs=refit_each))
                path = out / "checkpoints" / f"{name}-front-refit-{p.number}.pt"
                made.append(replayed(policy, refit_each, path))
            return made

        measure = {
            "searched": lambda: [(p.ratio(), p.val_accuracy) for p in front],
            FRONT_METHODS[0]: uniform_l1,
            FRONT_METHODS[1]: torch_pruning,
            FRONT_METHODS[2]: refit,
        }
        for method, make in measure.items():
            if (budget, seed, method) in written:
                continue
            points_made = make()
            row = {
                "label": label, "budget": budget, "seed": seed, "method": method,
                "hypervolume": studies.hypervolume(points_made), "points": points_made,
                "epochs_total": epochs,
                "epochs_each": {"searched": None, FRONT_METHODS[2]: refit_each}.get(method, each),
            }  # fmt: skip
            print(json.dumps(row), flush=True)
            with (out / f"fronts-{label}.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    for r in sorted(rows, key=lambda r: (-r["budget"], r["seed"])):
        measure_row(r)
    print("\n".join(front_table(out, label)))


def front_table(out: Path, label: str) -> list[str]:
    """Markdown lines: each method's front hypervolume (mean ± SE over seeds) and the search's
    margin over it, paired by seed, per budget."""
    rows = _load(out, f"fronts-{label}")
    lines = [
        "| B | front | hypervolume | search - it (paired) | fine-tune epochs | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        by = {
            m: {r["seed"]: r for r in rows if r["budget"] == budget and r["method"] == m}
            for m in ("searched", *FRONT_METHODS)
        }
        for method, runs in by.items():
            seeds = sorted(set(runs) & set(by["searched"]))
            if not seeds:
                continue
            hv = [runs[s]["hypervolume"] for s in seeds]
            margin = (
                "—"
                if method == "searched"
                else _diff(
                    [by["searched"][s]["hypervolume"] - runs[s]["hypervolume"] for s in seeds],
                    1.0,
                    4,
                )
            )
            spent = statistics.mean(runs[s]["epochs_total"] for s in seeds)
            n = statistics.mean(len(runs[s]["points"]) for s in seeds)
            if method == "searched":
                how = f"{spent:.1f} ({n:.3g} points)"
            else:
                each = statistics.mean(runs[s]["epochs_each"] for s in seeds)
                how = f"{spent:.1f} ({n:.3g} x {each:.2f})"
                if method == FRONT_METHODS[2]:  # after the search's own E
                    how = f"{spent:.1f} + {how}"
            lines.append(
                f"| {budget:g} | {method} | {_mean_se(hv)} | {margin} | {how} | {len(seeds)} |"
            )
    return lines


def _load(out: Path, label: str) -> list[dict]:
    path = out / f"{label}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def ablation_table(out: Path) -> list[str]:
    """Markdown lines: each ablation of :data:`ABLATIONS` run so far against its control.

    Per row: the searched winner's replayed test accuracy with and without the change, their
    paired difference (mean ± SE over the seeds both ran), the same for the front's
    hypervolume, and the search's wall as its cost (over the seeds whose walls compare). Empty
    when no ablation has rows.
    """
    lines = [
        "| dimension | change | B | searched test, without | with it | paired, pt | "
        "front hypervolume, paired | search s, without -> with it | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, (control_label, change) in ABLATIONS.items():
        arm, control = _load(out, label), _load(out, control_label)
        for budget in sorted({r["budget"] for r in arm}, reverse=True):

            def searched(rows: list[dict], budget: float = budget) -> dict[int, dict]:
                return {
                    r["seed"]: r
                    for r in rows
                    if r["budget"] == budget and r["method"] == "searched"
                }

            a, b = searched(control), searched(arm)
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            acc = [a[s]["test_accuracy"] for s in seeds], [b[s]["test_accuracy"] for s in seeds]
            hv = [b[s]["front_hypervolume"] - a[s]["front_hypervolume"] for s in seeds]
            # A wall a row marks as not comparable (``wall_note``: it measured the base's
            # sensitivity, or shared the cores) is left out of the cost, with its seed.
            timed = [s for s in seeds if "wall_note" not in a[s] and "wall_note" not in b[s]]
            wall = "-"
            if timed:
                before = statistics.mean(a[s]["search_wall_s"] for s in timed)
                after = statistics.mean(b[s]["search_wall_s"] for s in timed)
                wall = f"{before:.0f} -> {after:.0f}"
                if len(timed) < len(seeds):
                    wall += f" (seed{'s' if len(timed) > 1 else ''} {', '.join(map(str, timed))})"
            lines.append(
                f"| {label} | {change} | {budget:g} | {_mean_se(acc[0])} | {_mean_se(acc[1])} | "
                f"{_diff([y - x for x, y in zip(*acc, strict=True)])} | "
                f"{_diff(hv, scale=1.0, digits=4)} | {wall} | {len(seeds)} |"
            )
    return lines if len(lines) > 2 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="search and replay with the autoprune this interpreter imports")
    r.add_argument("label", help="a name for this version's rows, e.g. before or after")
    r.add_argument("--budgets", type=float, nargs="+", default=[0.2])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--baseline", default="uniform-relevance", help="the baseline replayed beside")
    r.add_argument("--out", type=Path, default=Path("benchmarks/results/ab"))
    r.add_argument(
        "--space", default=SPACE, help="a bundled space or a YAML path (benchmarks/spaces/)"
    )
    r.add_argument("--sampler", default="tpe", help="the search's sampler (autoprune.sampler)")
    p = sub.add_parser("report", help="the paired table of two runs")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ab"))
    f = sub.add_parser(
        "fronts",
        help="LABEL's search fronts against uniform-l1's and Torch-Pruning's, equal epochs",
    )
    f.add_argument("label")
    f.add_argument("--out", type=Path, default=Path("benchmarks/results/ab"))
    f.add_argument("--table", action="store_true", help="only print the table of rows written")
    t = sub.add_parser("ablations", help="every ablation run so far against its control")
    t.add_argument("--out", type=Path, default=Path("benchmarks/results/ab"))
    args = parser.parse_args()
    if args.verb == "run":
        run(args.label, args.budgets, args.seeds, args.baseline, args.out, args.space, args.sampler)
    elif args.verb == "report":
        report(args.a, args.b, args.out)
    elif args.verb == "fronts":
        if args.table:
            print("\n".join(front_table(args.out, args.label)))
        else:
            fronts(args.label, args.out)
    else:
        print("\n".join(ablation_table(args.out)) or f"no ablation pairs in {args.out}")


if __name__ == "__main__":
    main()
