"""What screening costs: the same number of fine-tuned trials with and without the proxy rung.

    python benchmarks/screening_cost.py                 # mnist5k, B=0.5, 12 fine-tuned trials, seeds 0 1

For each seed it runs the default search twice with ``--baselines none`` (so every fine-tuned
trial is a searched one): ``--screen 1`` (every candidate fine-tuned) and ``--screen K``
(K candidates pruned and scored by the adaptive-BN proxy per fine-tuned trial). Prints the
candidates evaluated, the trials fine-tuned, the search wall time and the ratio of wall times,
plus the proxy's Spearman correlation and the best val accuracy at the budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--space", default="default")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--screen", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--executor", default="ray")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    from autoprune import study as studies
    from autoprune.config import SearchConfig
    from autoprune.runner import search

    args.out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(args.out / 'screening.db').resolve()}"
    print(
        f"{'seed':>4} {'screen':>6} {'candidates':>10} {'fine-tuned':>10} {'wall s':>7} "
        f"{'wall ratio':>10} {'Spearman':>8} {'best val @B':>11}",
        flush=True,
    )
    for seed in args.seeds:
        walls = {}
        for screen in (1, args.screen):
            name = f"screening-{args.dataset}-b{args.budget:g}-s{seed}-k{screen}"
            config = SearchConfig(
                budget_flops=args.budget,
                dataset=args.dataset,
                space=args.space,
                trials=args.trials,
                seed=seed,
                executor=args.executor,
                storage=storage,
                study=name,
                screen=screen,
                baselines="none",
            )
            t0 = time.perf_counter()
            search(config, log=lambda _line: None, quiet=True, export=False)
            walls[screen] = time.perf_counter() - t0
            study = studies.load_study(studies.open_storage(storage), name)
            done = study.get_trials(deepcopy=False)
            tuned = studies.complete_count(study)
            candidates = sum(1 for t in done if t.state.name in ("COMPLETE", "PRUNED"))
            rho = studies.proxy_spearman(study)
            best = studies.winner(studies.pareto_front(study), args.budget)
            print(
                f"{seed:>4} {screen:>6} {candidates:>10} {tuned:>10} {walls[screen]:>7.0f} "
                f"{walls[screen] / walls[1]:>10.2f} {rho[0] if rho else float('nan'):>8.3f} "
                f"{best.val_accuracy:>11.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
