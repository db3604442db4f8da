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
