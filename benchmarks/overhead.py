"""Per-trial framework overhead of the embedded default search, and trials per hour.

    python benchmarks/overhead.py                       # 8 fine-tuned trials; ray at 1 and 2, local at 1
    python benchmarks/overhead.py --label after --configs ray:1 ray:2 --seeds 0 1

Each configuration (``executor:max_concurrent``) runs the embedded default search (ResNet-20 on
MNIST-5k, the default space, default screening and baselines) in a new study of its own, then
reads what the study recorded of every bracket (a fine-tuned trial and the candidates screened
against it):

- ``work`` is what a bracket is run for: the candidates' ``score``, ``prune``, ``screen``,
  ``finetune`` and ``evaluate`` phases;
- ``overhead`` is everything else a bracket costs: the workers' ``load`` and ``project``
  phases, the driver's ``overhead`` (asking and sampling, Ray's scheduling, transport: the
  bracket's driver wall time less its candidates' phases) and ``record``, the driver's time
  from receiving the report to the last of the bracket's trials being told (the DB writes,
  which the stored ``wall`` does not include);
- ``overhead %`` is ``overhead / (wall + record)`` per bracket; the table gives its median.

Trials per hour count the fine-tuned (COMPLETE) trials and all candidates (COMPLETE and PRUNED)
from the first trial's start to the last one's end, so Ray's start and the driver's one-off
preparation are left out; ``search s`` is the whole call, with them. Several seeds show the
noise: compare figures taken in one run (``--label`` names the code being measured), and note
the machine's load average, printed with every row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

WORK = ("score", "prune", "screen", "finetune", "evaluate")
FRAMEWORK = ("load", "project")


def brackets(study: Any) -> list[dict[str, float]]:
    """Per bracket with a driver wall time: its phases, ``wall``, ``overhead`` and ``record``."""
    from optuna.trial import TrialState

    from autoprune import study as studies
    from autoprune.records import TrialRecord

    rows: dict[int, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        row = rows.setdefault(int(TrialRecord.from_trial(t).bracket or t.number), {"trials": []})
        row["trials"].append(t)
        for phase in studies.PHASES:
            row[phase] = row.get(phase, 0.0) + float(
                (TrialRecord.from_trial(t).timings or {}).get(phase, 0.0)
            )
        record = TrialRecord.from_trial(t)
        if record.wall is not None:
            row["wall"] = float(record.wall)
            row["overhead"] = float(record.overhead or 0.0)
    out = []
    for row in rows.values():
        if row.get("wall", 0.0) <= 0:
            continue
        trials = row.pop("trials")
        asked = min(t.datetime_start for t in trials)
        told = max(t.datetime_complete for t in trials)
        row["record"] = max((told - asked).total_seconds() - row["wall"], 0.0)
        out.append(row)
    return out


def measure(study: Any) -> dict[str, float]:
    """The figures of one finished search (see the module doc)."""
    from optuna.trial import TrialState

    rows = brackets(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    tuned = sum(1 for t in done if t.state == TrialState.COMPLETE)

    def share(r: dict[str, float]) -> float:
        framework = sum(r[p] for p in FRAMEWORK) + r["overhead"] + r["record"]
        return framework / (r["wall"] + r["record"])

    figures = {
        "tuned_per_h": 3600 * tuned / span,
        "candidates_per_h": 3600 * len(done) / span,
        "overhead_share": statistics.median(share(r) for r in rows),
        "brackets": len(rows),
    }
    for key in (*FRAMEWORK, "overhead", "record", *WORK, "wall"):
        figures[key] = statistics.median(r[key] for r in rows)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=8, help="fine-tuned trials per search")
    parser.add_argument(
        "--configs", nargs="+", default=["ray:1", "ray:2", "local:1"], help="executor:concurrency"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--label", default="", help="names the code measured (e.g. before, after)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    from autoprune import study as studies
    from autoprune.config import SearchConfig
    from autoprune.runner import search

    args.out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(args.out / 'overhead.db').resolve()}"
    print(
        "overhead % = median over brackets of (load + project + driver overhead + record) / "
        "(driver wall + record); phases: median seconds per bracket (candidates summed)"
    )
    columns = ["label", "config", "seed", "load1", "tuned/h", "cand/h", "overhead %", "load",
               "project", "drv ovh", "record", "score", "prune", "screen", "finetune",
               "evaluate", "wall", "search s"]  # fmt: skip
    print(" ".join(f"{c:>9}" for c in columns), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for config_text in args.configs:
        executor, _, concurrency = config_text.partition(":")
        for seed in args.seeds:
            name = f"overhead-{args.label or 'run'}-{executor}{concurrency}-s{seed}-{stamp}"
            config = SearchConfig(
                budget_flops=args.budget,
                trials=args.trials,
                seed=seed,
                executor=executor,
                max_concurrent=int(concurrency or 1),
                storage=storage,
                study=name,
            )
            t0 = time.perf_counter()
            search(config, log=lambda _line: None, quiet=True, export=False)
            wall = time.perf_counter() - t0
            f = measure(studies.load_study(studies.open_storage(storage), name))
            cells = [args.label or "-", config_text, str(seed), f"{os.getloadavg()[0]:.2f}",
                     f"{f['tuned_per_h']:.0f}", f"{f['candidates_per_h']:.0f}",
                     f"{100 * f['overhead_share']:.1f}"]  # fmt: skip
            cells += [
                f"{f[k]:.2f}" for k in ("load", "project", "overhead", "record", *WORK, "wall")
            ]
            cells.append(f"{wall:.0f}")
            print(" ".join(f"{c:>9}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
