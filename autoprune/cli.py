"""Command-line interface: one function per verb.

Each verb parses and validates its arguments, calls the library, and prints. Heavy modules
(torch, Ray, Optuna) are imported inside the verbs so ``autoprune --help`` is instant.
A :class:`~autoprune.errors.UserError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from autoprune.errors import UserError

VERBS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def verb(
    name: str,
) -> Callable[
    [Callable[[argparse.Namespace], int | None]], Callable[[argparse.Namespace], int | None]
]:
    def wrap(
        fn: Callable[[argparse.Namespace], int | None],
    ) -> Callable[[argparse.Namespace], int | None]:
        VERBS[name] = fn
        return fn

    return wrap


def _print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None
) -> None:
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


# --------------------------------------------------------------------------- registries


@verb("models")
def cmd_models(args: argparse.Namespace) -> int:
    from autoprune import models

    _print_table(["model", "description"], models.describe(), title="models")
    return 0


@verb("datasets")
def cmd_datasets(args: argparse.Namespace) -> int:
    from autoprune import data

    _print_table(["dataset", "description"], data.describe(), title="datasets")
    return 0


# --------------------------------------------------------------------------- train


@verb("train")
def cmd_train(args: argparse.Namespace) -> int:
    from autoprune.base import default_base_path, train_base

    if args.epochs <= 0:
        raise UserError(f"--epochs {args.epochs} must be > 0")
    _set_threads(args.threads)
    out = Path(args.out) if args.out else default_base_path(args.model, args.dataset)
    train_base(
        args.model,
        args.dataset,
        args.epochs,
        out,
        data_root=args.data_root,
        download=args.download,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
    )
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- inspect


@verb("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from autoprune import data, models
    from autoprune.groups import discover_groups
    from autoprune.macs import count_macs_params

    if args.base_checkpoint:
        from autoprune.base import load_base

        base = load_base(args.base_checkpoint)
        model, spec = base.build(), base.spec
    else:
        if args.dataset:
            splits = data.create(args.dataset, root=args.data_root)
            shape, classes = splits.input_shape, splits.num_classes
        else:
            shape, classes = (args.in_channels, args.input_size, args.input_size), args.num_classes
        spec = models.ModelSpec(args.model, classes, shape)
        model = spec.build().eval()
    if args.blocks:
        return _inspect_blocks(args, model, spec)
    inputs = spec.example_inputs()
    macs, params = count_macs_params(model, inputs)
    groups = discover_groups(model, inputs)
    if args.json:
        payload = {
            "model": spec.to_dict(),
            "macs": macs,
            "params": params,
            "groups": [
                {
                    "name": g.name,
                    "channels": g.channels,
                    "macs_share": round(g.macs_share, 6),
                    "layers": g.layers,
                }
                for g in groups
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    rows = [(g.name, g.channels, f"{100 * g.macs_share:.1f}", len(g.layers)) for g in groups]
    _print_table(
        ["group (root module)", "channels", "MACs share %", "layers"],
        rows,
        title=f"{spec.name} {list(spec.input_shape)}: {len(groups)} prunable groups, {macs / 1e6:.2f}M MACs, {params / 1e6:.3f}M params",
    )
    return 0


def _inspect_blocks(args: argparse.Namespace, model: object, spec: object) -> int:
    from autoprune import data, depth
    from autoprune.criteria.calibration import Calibration

    dataset = args.dataset
    if args.base_checkpoint and not dataset:
        from autoprune.base import load_base

        dataset = load_base(args.base_checkpoint).dataset.get("name")
    if not dataset:
        raise UserError(
            "--blocks scores blocks on data: give --dataset (and --base-checkpoint for trained weights)"
        )
    splits = data.create(dataset, root=args.data_root)
    calibration = Calibration(splits.calibration, splits.name, num_images=args.calibration_images)
    rows = depth.block_scores(model, calibration.batches(), num_classes=splits.num_classes)  # type: ignore[arg-type]
    _print_table(
        ["block", "VIP score", "removable", "MACs share %"],
        [
            (r.name, f"{r.score:.4f}", "yes" if r.removable else "no", f"{100 * r.macs_share:.2f}")
            for r in rows
        ],
        title=f"residual blocks of {getattr(spec, 'name', '')} scored by PLS-VIP on {splits.name}",
    )
    return 0


# --------------------------------------------------------------------------- search & studies


def _search_config(args: argparse.Namespace) -> object:
    from autoprune.config import SearchConfig

    fields = {
        "budget_flops", "model", "dataset", "data_root", "base_checkpoint", "space", "trials", "sampler", "seed",
        "executor", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "ray_address", "storage", "study",
        "device", "calibration_images",
    }  # fmt: skip
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return SearchConfig(**values)


def _print_front(study_obj: object, title: str) -> None:
    from collections import Counter

    from autoprune.study import pareto_front

    front = pareto_front(study_obj)  # type: ignore[arg-type]
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
    _print_table(
        ["trial", "val acc", "MACs ratio", "params ratio", "criteria", "blocks dropped"],
        rows,
        title=title,
    )


@verb("search")
def cmd_search(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.runner import search

    config = _search_config(args)
    outcome = search(config, quiet=args.quiet)  # type: ignore[arg-type]
    study_obj = studies.load_study(studies.open_storage(outcome.storage), outcome.study_name)
    _print_front(
        study_obj,
        f"feasible Pareto front of '{outcome.study_name}' ({outcome.complete} complete trials)",
    )
    if outcome.export_dir:
        print(f"exported the front to {outcome.export_dir}/ (policies, front.yaml, front.png)")
    print(f"resume with: autoprune resume {outcome.study_name}")
    return 0


@verb("resume")
def cmd_resume(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from autoprune import study as studies
    from autoprune.runner import search

    storage = studies.open_storage(args.storage)
    config = studies.load_config(storage, args.name)
    overrides = {
        k: getattr(args, k)
        for k in ("trials", "executor", "max_concurrent")
        if getattr(args, k) is not None
    }
    config = replace(config, storage=args.storage or config.storage, study=args.name, **overrides)
    outcome = search(config, quiet=args.quiet)
    _print_front(
        studies.load_study(storage, args.name),
        f"feasible Pareto front of '{args.name}' ({outcome.complete} complete trials)",
    )
    return 0


@verb("studies")
def cmd_studies(args: argparse.Namespace) -> int:
    from autoprune import study as studies

    rows = [
        (s.name, "" if s.budget is None else s.budget, s.complete, s.failed, s.running, s.front)
        for s in studies.summaries(studies.open_storage(args.storage))
    ]
    _print_table(
        ["study", "budget", "complete", "failed", "running", "front"], rows, title="studies"
    )
    return 0


@verb("show")
def cmd_show(args: argparse.Namespace) -> int:
    from autoprune import study as studies

    study_obj = studies.load_study(studies.open_storage(args.storage), args.name)
    _print_front(study_obj, f"feasible Pareto front of '{args.name}'")
    return 0


@verb("export")
def cmd_export(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.export import export_front

    study_obj = studies.load_study(studies.open_storage(args.storage), args.name)
    out = Path(args.out) if args.out else Path("policies") / args.name
    written = export_front(study_obj, out)
    for path in written:
        print(path)
    print(f"{len(written)} policies, front.yaml and front.png in {out}/")
    return 0


@verb("replay")
def cmd_replay(args: argparse.Namespace) -> int:
    from autoprune.checkpoint import replay
    from autoprune.policy import Policy

    if args.epochs is not None and args.epochs < 0:
        raise UserError(f"--epochs {args.epochs} must be >= 0")
    if args.policy and args.study:
        raise UserError("give either a policy file or --study NAME, not both")
    if args.policy:
        policy = Policy.load(args.policy)
        label = args.policy
    elif args.study:
        from autoprune import study as studies

        point = studies.winner(
            studies.pareto_front(studies.load_study(studies.open_storage(args.storage), args.study))
        )
        policy, label = (
            point.policy,
            f"trial {point.number} of study '{args.study}' (highest val accuracy on the front)",
        )
    else:
        raise UserError("give a policy file (e.g. policies/STUDY/trial-0003.yaml) or --study NAME")
    _set_threads(args.threads)
    print(f"replaying {label}")
    result = replay(
        policy,
        base_checkpoint=args.base_checkpoint,
        data_root=args.data_root,
        epochs=args.epochs,
        out=args.out,
        device=args.device,
    )
    _print_table(
        ["test acc", "val acc", "MACs ratio", "params ratio", "checkpoint"],
        [
            (
                f"{result.test_accuracy:.4f}",
                f"{result.val_accuracy:.4f}",
                f"{result.macs_ratio:.4f}",
                f"{result.params_ratio:.4f}",
                result.checkpoint,
            )
        ],
        title="replayed policy",
    )
    return 0


@verb("onnx")
def cmd_onnx(args: argparse.Namespace) -> int:
    from autoprune.deploy import (
        ABS_TOLERANCE,
        REL_TOLERANCE,
        OnnxCheckError,
        check_onnx,
        load_any_checkpoint,
    )
    from autoprune.macs import count_macs_params

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} must be >= 1")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be >= 1")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats} must be >= 1")
    _set_threads(args.threads)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    if out.resolve() == Path(args.checkpoint).resolve():
        raise UserError(f"--out {out} is the checkpoint itself: choose another file name")
    model, inputs, kind = load_any_checkpoint(args.checkpoint)
    macs, params = count_macs_params(model, inputs)
    try:
        report = check_onnx(model, inputs, out, batch=args.batch, repeats=args.repeats)
    except OnnxCheckError as exc:
        print(f"autoprune onnx: {exc}; nothing written to {out}", file=sys.stderr)
        return 1
    _print_table(
        [
            "onnx file",
            "size MB",
            "MACs",
            "params",
            "max |diff|",
            "top-1 agree",
            "torch ms",
            "onnxruntime ms",
        ],
        [
            (
                report.path if report.matches else f"{out} (not written)",
                f"{report.size_bytes / 2**20:.2f}",
                f"{macs / 1e6:.2f}M",
                f"{params / 1e6:.3f}M",
                f"{report.max_abs_diff:.2e}",
                f"{report.top1_agreement:.3f}",
                f"{report.torch_ms:.2f}",
                f"{report.onnxruntime_ms:.2f}",
            )
        ],
        title=f"ONNX check of the {kind} model (batch-1 median latency on {report.threads} CPU threads)",
    )
    if not report.matches:
        print(
            f"autoprune onnx: the exported model's logits differ from PyTorch's by {report.max_abs_diff:.3g} "
            f"(allowed {ABS_TOLERANCE:g} + {REL_TOLERANCE:g} x {report.max_abs_logit:.3g}); nothing written to {out}",
            file=sys.stderr,
        )
        return 1
    return 0


# --------------------------------------------------------------------------- parser


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder holding the dataset (cifar10/cifar100)")
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download the dataset into --data-root",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="AutoML search over structured pruning policies for CNNs.",
        epilog="Start with: autoprune search --budget-flops 0.5   (ResNet-20 on the bundled MNIST-5k)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")

    sub.add_parser("models", help="list the model registry")
    sub.add_parser("datasets", help="list the dataset registry")

    p = sub.add_parser("train", help="train a base model and write a base checkpoint")
    p.add_argument("--model", default="resnet20", help="model name (see `autoprune models`)")
    p.add_argument("--dataset", default="mnist5k", help="dataset name (see `autoprune datasets`)")
    p.add_argument("--epochs", type=float, default=4.0, help="training epochs (default 4)")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="checkpoint path (default: studies/base/MODEL-DATASET.pt)")
    _add_data_args(p)

    p = sub.add_parser(
        "inspect", help="list a model's prunable DepGraph groups (or residual block scores)"
    )
    p.add_argument("--model", default="resnet20")
    p.add_argument(
        "--dataset", help="take input shape and classes from a dataset (needed for --blocks)"
    )
    p.add_argument(
        "--base-checkpoint", help="inspect a trained base checkpoint instead of a fresh model"
    )
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument(
        "--blocks",
        action="store_true",
        help="score residual blocks by PLS-VIP (discriminative layer pruning)",
    )
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_data_args(p)

    p = sub.add_parser("search", help="search pruning policies under a MACs budget (resumable)")
    p.add_argument(
        "--budget-flops",
        type=float,
        default=0.5,
        help="max pruned/base MACs ratio, in (0, 1] (default 0.5)",
    )
    p.add_argument("--model", help="model of the base checkpoint (default resnet20)")
    p.add_argument("--dataset", help="dataset (default mnist5k)")
    p.add_argument(
        "--base-checkpoint",
        help="base checkpoint (default: embedded ResNet-20/MNIST-5k, trained once)",
    )
    p.add_argument(
        "--space", help="search space name in search_spaces/ or a YAML path (default: default)"
    )
    p.add_argument("--trials", type=int, help="the study's total of complete trials (default 12)")
    p.add_argument("--sampler", help="tpe | nsga2 | gp | random (default tpe)")
    p.add_argument("--seed", type=int)
    p.add_argument("--executor", help="ray (default) | local")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default 2)")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float, help="fractions allowed, e.g. 0.5")
    p.add_argument("--ray-address", help="join an existing Ray cluster ('auto' or host:port)")
    p.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///studies/autoprune.db)")
    p.add_argument("--study", help="study name (default: MODEL-DATASET-SPACE-bBUDGET)")
    p.add_argument("--device", help="device inside trials: auto | cpu | cuda")
    p.add_argument("--calibration-images", type=int)
    p.add_argument("--data-root")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("resume", help="continue a study with the config stored in it")
    p.add_argument("name")
    p.add_argument("--storage")
    p.add_argument("--trials", type=int, help="new total of complete trials")
    p.add_argument("--executor")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("studies", help="list studies with trial counts")
    p.add_argument("--storage")

    p = sub.add_parser("show", help="print a study's feasible Pareto front")
    p.add_argument("name")
    p.add_argument("--storage")

    p = sub.add_parser("export", help="write a study's Pareto-front policies as YAML files")
    p.add_argument("name")
    p.add_argument("--storage")
    p.add_argument("--out", help="folder (default policies/NAME)")

    p = sub.add_parser("replay", help="policy -> pruned, fine-tuned checkpoint with test accuracy")
    p.add_argument("policy", nargs="?", help="policy YAML file")
    p.add_argument("--study", help="replay the winning policy of this study instead of a file")
    p.add_argument("--storage")
    p.add_argument("--base-checkpoint", help="override the policy's base checkpoint path")
    p.add_argument(
        "--epochs", type=float, help="fine-tune epochs (default: the policy's retrain epochs x 10)"
    )
    p.add_argument("--out", help="checkpoint path (default: next to the base checkpoint)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-root")
    p = sub.add_parser(
        "onnx",
        help="export a checkpoint to ONNX and check it under ONNX Runtime (needs the onnx extra)",
    )
    p.add_argument("checkpoint", help="a pruned checkpoint (replay --out) or a base checkpoint")
    p.add_argument("--out", help="ONNX file (default: the checkpoint's path with .onnx)")
    p.add_argument("--batch", type=int, default=8, help="images compared with PyTorch (default 8)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per runtime (default 30)")
    p.add_argument("--threads", type=int, help="CPU threads for both runtimes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return VERBS[args.verb](args) or 0
    except UserError as exc:
        print(f"autoprune {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
