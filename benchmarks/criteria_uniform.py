"""Every criterion used uniformly on one model: val accuracy and timings at one MACs target.

    python benchmarks/criteria_uniform.py                      # resnet20/mnist5k, target 0.3, 1 epoch
    python benchmarks/criteria_uniform.py --target 0.5 --criteria l1 energy auto --json out.json

Each criterion prunes every group with the same raw rate; budget projection scales the rates
onto ``--target``; the model is fine-tuned for ``--epochs`` and measured on the val split. All
criteria share the base checkpoint, the seed and the fine-tune, so the accuracy differences
come from which channels each criterion removes. Prints one line per criterion.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument(
        "--base-checkpoint", help="default: the cached embedded base (trained on first use)"
    )
    parser.add_argument("--target", type=float, default=0.3, help="MACs ratio (default 0.3)")
    parser.add_argument("--epochs", type=float, default=1.0, help="fine-tune epochs (default 1)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--rate", type=float, default=0.5, help="raw rate of every group before projection"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--criteria", nargs="*", help="default: every registered criterion and auto"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)

    import torch

    from autoprune import criteria
    from autoprune.base import ensure_default_base, load_base
    from autoprune.evaluate import ObjectiveConfig, evaluate_policy
    from autoprune.groups import discover_groups
    from autoprune.policy import GroupPolicy, Policy, Retrain

    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = (
        load_base(args.base_checkpoint)
        if args.base_checkpoint
        else ensure_default_base(args.model, args.dataset)
    )
    names = [g.name for g in discover_groups(base.build(), base.spec.example_inputs())]
    config = ObjectiveConfig(base_checkpoint=str(base.path), dataset=args.dataset)
    chosen = args.criteria or criteria.available()
    print(
        f"{base.spec.name} on {args.dataset}: base val acc {base.metrics.get('val_accuracy', float('nan')):.4f}; "
        f"target MACs ratio {args.target}, raw rate {args.rate} on all {len(names)} groups, "
        f"{args.epochs:g} epoch(s) at lr {args.lr}, seed {args.seed}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'criterion':<12} {'val acc':>8} {'MACs ratio':>10} {'params':>7} {'prune s':>8} {'total s':>8}"
    )
    rows = []
    for name in chosen:
        policy = Policy(
            model=base.spec,
            groups={g: GroupPolicy(rate=args.rate, criterion=name) for g in names},
            target_macs_ratio=args.target,
            retrain=Retrain(epochs=args.epochs, lr=args.lr),
            seed=args.seed,
        )
        t0 = time.perf_counter()
        metrics = evaluate_policy(config, policy)
        total = time.perf_counter() - t0
        row = {
            "criterion": name,
            "val_accuracy": metrics.val_accuracy,
            "macs_ratio": metrics.macs_ratio,
            "params_ratio": metrics.params_ratio,
            "prune_s": metrics.timings.get("prune", float("nan")),
            "total_s": total,
        }
        if name == "auto":
            picked = sorted({g.criterion for g in metrics.policy.groups.values()})
            row["auto_chose"] = picked
        rows.append(row)
        extra = f"  chose {','.join(row['auto_chose'])}" if "auto_chose" in row else ""
        print(
            f"{name:<12} {row['val_accuracy']:>8.4f} {row['macs_ratio']:>10.4f} {row['params_ratio']:>7.3f} "
            f"{row['prune_s']:>8.2f} {total:>8.1f}{extra}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
