"""Does a MACs ratio predict latency? Uniform prunings timed against their base, with and
without channel multiples.

    python benchmarks/latency.py                        # embedded ResNet-20 base, CPU
    python benchmarks/latency.py --models resnet20 timm:resnet18 --batches 1 32

For each model, MACs ratio and ``--channel-multiple`` (1 and 8), the base model is pruned
uniformly by L1 onto the ratio (the policy a user would write), then timed against the base
with :func:`autoprune.latency.measure` (what ``--objective latency`` does in every trial), in
``--rounds`` rounds interleaved across the configurations, so load on a shared machine hits
them alike. Prints the median latency ratio over rounds and its spread (the interquartile
range), i.e. how noisy one trial's measurement is on this machine.

A model name other than the embedded default is timed untrained (latency does not depend on
weights): its base checkpoint is written under ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    import torch

    from autoprune import data
    from autoprune.base import ensure_default_base, load_base, save_base
    from autoprune.evaluate import ObjectiveConfig, prune_policy
    from autoprune.groups import build_graph, current_groups
    from autoprune.latency import LatencySettings, describe, measure
    from autoprune.macs import count_macs_params
    from autoprune.modelspec import ModelSpec
    from autoprune.policy import GroupPolicy, Policy
    from autoprune.train import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple[str, float, int, int], list[float]] = {}
    pruned: dict[tuple[str, float, int], tuple[torch.nn.Module, float, int]] = {}
    bases = {}
    for name in args.models:
        if name == "resnet20" and args.dataset == "mnist5k":
            base = ensure_default_base(name, args.dataset, log=lambda _: None)
        else:
            splits = data.create(args.dataset)
            spec = ModelSpec(name, splits.num_classes, splits.input_shape)
            path = args.out / f"latency-{name.replace(':', '_')}-{args.dataset}.pt"
            save_base(path, spec.build(), spec, {"name": args.dataset, "seed": 0}, {})
            base = load_base(path)
        bases[name] = base
        config = ObjectiveConfig(base_checkpoint=str(base.path), dataset=args.dataset)
        model = base.build()
        inputs = base.spec.example_inputs()
        base_macs = count_macs_params(model, inputs)[0]
        groups = list(current_groups(model, build_graph(model, inputs)))
        for ratio in args.ratios:
            for multiple in args.multiples:
                policy = Policy(
                    model=base.spec,
                    groups={g: GroupPolicy(rate=0.5) for g in groups},
                    target_macs_ratio=ratio,
                    channel_multiple=multiple,
                )
                result = prune_policy(config, policy)
                pruned[(name, ratio, multiple)] = (
                    result.model,
                    result.macs / base_macs,
                    sum(
                        m.out_channels % 8 != 0
                        for m in result.model.modules()
                        if isinstance(m, torch.nn.Conv2d)
                    ),
                )

    started = time.perf_counter()
    for _ in range(args.rounds):
        for (name, ratio, multiple), (model, _, _) in pruned.items():
            base = bases[name]
            for batch in args.batches:
                settings = LatencySettings(batch_size=batch, repeats=args.repeats)
                timed = measure(model, base.build(), tuple(base.spec.input_shape), device, settings)
                rows.setdefault((name, ratio, multiple, batch), []).append(timed.ratio)

    print(
        f"latency ratio (pruned / base, median of {args.repeats} samples) on "
        f"{describe(device)}; {args.rounds} rounds, {time.perf_counter() - started:.0f} s"
    )
    print(
        f"{'model':<16} {'target':>6} {'MACs':>6} {'multiple':>8} {'convs not /8':>12} "
        f"{'batch':>5} {'latency':>8} {'IQR':>6}"
    )
    for (name, ratio, multiple, batch), ratios in rows.items():
        _, macs_ratio, odd = pruned[(name, ratio, multiple)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(
            f"{name:<16} {ratio:>6.2f} {macs_ratio:>6.3f} {multiple:>8} {odd:>12} {batch:>5} "
            f"{statistics.median(ratios):>8.3f} {q[2] - q[0]:>6.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
