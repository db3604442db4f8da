"""The verbs: one function each; it validates its arguments, calls the library, and prints.

Heavy modules (torch, Ray, Optuna) are imported inside the verbs, so ``autoprune --help``
stays instant. A user's mistake is raised as :class:`~autoprune.errors.UserError`; ``main``
prints it on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.cli.tables import print_study, print_table
from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.config import SearchConfig

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


# --------------------------------------------------------------------------- registries


@verb("models")
def cmd_models(args: argparse.Namespace) -> int:
    from autoprune import models

    print_table(["model", "description"], models.describe(), title="models")
    return 0


@verb("datasets")
def cmd_datasets(args: argparse.Namespace) -> int:
    from autoprune import data

    print_table(["dataset", "description"], data.describe(), title="datasets")
    return 0


@verb("spaces")
def cmd_spaces(args: argparse.Namespace) -> int:
    from autoprune.space import bundled_spaces, spaces_dir

    print_table(
        ["space", "description"],
        [(s.name, s.description) for s in bundled_spaces()],
        title=f"search spaces bundled in {spaces_dir()} (--space also takes a YAML path)",
    )
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
        image_size=args.image_size,
        precision=args.precision,
        loader_workers=args.loader_workers,
    )
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- inspect


@verb("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    from autoprune import data
    from autoprune.cli.reports import groups_report, render
    from autoprune.cli.tables import groups_table
    from autoprune.groups import discover_groups
    from autoprune.macs import count_macs_params
    from autoprune.modelspec import ModelSpec

    if args.image_size is not None and not args.dataset:
        raise UserError(
            "--image-size resizes a --dataset's images: give --dataset too, or use --input-size"
        )
    if args.base_checkpoint:
        from autoprune.base import load_base

        base = load_base(args.base_checkpoint)
        model, spec = base.build(), base.spec
    else:
        if args.dataset:
            splits = data.create(args.dataset, root=args.data_root, image_size=args.image_size)
            shape, classes = splits.input_shape, splits.num_classes
        else:
            shape, classes = (args.in_channels, args.input_size, args.input_size), args.num_classes
        spec = ModelSpec(args.model, classes, shape)
        model = spec.build().eval()
    if args.blocks:
        return _inspect_blocks(args, model, spec)
    inputs = spec.example_inputs()
    macs, params = count_macs_params(model, inputs)
    excluded: dict[str, str] = {}
    groups = discover_groups(model, inputs, excluded)
    render(groups_report(spec, macs, params, groups, excluded), args.format, groups_table)
    return 0


def _inspect_blocks(args: argparse.Namespace, model: object, spec: object) -> int:
    from autoprune import data, depth
    from autoprune.cli.reports import blocks_report, render
    from autoprune.cli.tables import blocks_table
    from autoprune.criteria.calibration import Calibration

    dataset = args.dataset
    image_size = args.image_size
    if args.base_checkpoint:
        from autoprune.base import load_base

        base = load_base(args.base_checkpoint)
        dataset = dataset or base.dataset.get("name")
        if dataset:
            image_size = base.image_size(dataset, image_size)
    if not dataset:
        raise UserError(
            "--blocks scores blocks on data: give --dataset (and --base-checkpoint for trained weights)"
        )
    splits = data.create(dataset, root=args.data_root, image_size=image_size)
    calibration = Calibration(splits.calibration, splits.name, num_images=args.calibration_images)
    rows = depth.block_scores(model, calibration.batches(), num_classes=splits.num_classes)  # type: ignore[arg-type]
    render(blocks_report(spec, splits.name, rows), args.format, blocks_table)
    return 0


# --------------------------------------------------------------------------- search & studies


def _search_config(args: argparse.Namespace) -> SearchConfig:
    """The search the flags name: every SearchConfig field a flag of the same name set (an unset
    flag stays None, so the field keeps its default, or a resumed study its stored value)."""
    from dataclasses import fields

    from autoprune.config import SearchConfig, parse_resources

    names = {f.name for f in fields(SearchConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if values.get("resources_per_trial") is not None:  # JSON on the command line
        values["resources_per_trial"] = parse_resources(args.resources_per_trial)
    return SearchConfig(**values)


@verb("search")
def cmd_search(args: argparse.Namespace) -> int:
    config = _search_config(args)
    config.validate()  # a mistyped flag is told before torch and Optuna are imported

    from autoprune import study as studies
    from autoprune.runner import search

    outcome = search(
        config,
        quiet=args.quiet,
        policies_dir=_policies_dir(args),
    )
    study_obj = studies.load_study(studies.open_storage(outcome.storage), outcome.study_name)
    print_study(study_obj, outcome.study_name)
    _print_exported(outcome.export_dir)
    print(f"resume with: autoprune resume {outcome.study_name}")
    return 0


def _policies_dir(args: argparse.Namespace) -> str:
    return args.policies_dir or "policies"  # the default --help states


def _print_exported(export_dir: Path | None) -> None:
    if export_dir:
        print(f"exported the front to {export_dir}/ (policies, front.yaml, front.png, front.html)")


@verb("resume")
def cmd_resume(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from autoprune import study as studies
    from autoprune.runner import search

    storage = studies.open_storage(args.storage)
    config = studies.load_config(storage, args.name)
    overrides = {
        k: getattr(args, k)
        for k in ("trials", "executor", "max_concurrent", "max_failures")
        if getattr(args, k) is not None
    }
    config = replace(config, storage=args.storage or config.storage, study=args.name, **overrides)
    outcome = search(config, quiet=args.quiet, policies_dir=_policies_dir(args))
    print_study(studies.load_study(storage, args.name), args.name)
    _print_exported(outcome.export_dir)
    return 0


@verb("baselines")
def cmd_baselines(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from autoprune import study as studies
    from autoprune.runner import search

    storage = studies.open_storage(args.storage)
    config = studies.load_config(storage, args.name)
    overrides = {"executor": args.executor} if args.executor else {}
    config = replace(config, storage=args.storage or config.storage, study=args.name, **overrides)
    outcome = search(
        config, quiet=args.quiet, baselines_only=args.which, policies_dir=_policies_dir(args)
    )
    print_study(studies.load_study(storage, args.name), args.name)
    _print_exported(outcome.export_dir)
    return 0


@verb("studies")
def cmd_studies(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.cli.reports import render, studies_report
    from autoprune.cli.tables import studies_table

    render(studies_report(studies.open_storage(args.storage)), args.format, studies_table)
    return 0


@verb("show")
def cmd_show(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.cli.reports import render, study_report
    from autoprune.cli.tables import study_table

    study_obj = studies.load_study(studies.open_storage(args.storage), args.name)
    report = study_report(study_obj, _policies_dir(args), timing=args.timing)
    render(report, args.format, study_table)
    return 0


@verb("plot")
def cmd_plot(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.plots import plot_study

    study_obj = studies.load_study(studies.open_storage(args.storage), args.name)
    out = Path(args.out) if args.out else Path("policies") / args.name
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file: give a folder to write front.png and front.html in"
        )
    for path in plot_study(study_obj, out):
        print(path)
    return 0


@verb("sensitivity")
def cmd_sensitivity(args: argparse.Namespace) -> int:
    from autoprune.cli.sensitivity import run

    return run(args)


@verb("dashboard")
def cmd_dashboard(args: argparse.Namespace) -> int:
    from autoprune.cli.dashboard import serve

    return serve(args.storage, args.host, args.port)


@verb("export")
def cmd_export(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.export import export_front
    from autoprune.interop import remove_orphan_views, write_views

    study_obj = studies.load_study(studies.open_storage(args.storage), args.name)
    out = Path(args.out) if args.out else Path("policies") / args.name
    written = export_front(study_obj, out)
    for path in written:
        print(path)
    remove_orphan_views(out)  # views of points that left the front
    views = write_views(written, args.format)
    for path in views:
        print(path)
    also = f", {len(views)} {args.format} views" if views else ""
    print(f"{len(written)} policies{also}, front.yaml, front.png and front.html in {out}/")
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

        study_obj = studies.load_study(studies.open_storage(args.storage), args.study)
        budget = studies.study_budget(study_obj)
        point = studies.winner(studies.pareto_front(study_obj), budget)
        policy, label = (
            point.policy,
            f"trial {point.number} of study '{args.study}' (highest val accuracy at the budget)",
        )
    else:
        raise UserError("give a policy file (e.g. policies/STUDY/trial-0003.yaml) or --study NAME")
    _set_threads(args.threads)
    print(f"replaying {label}")
    result = replay(
        policy,
        base_checkpoint=args.base_checkpoint,
        data_root=args.data_root,
        image_size=args.image_size,
        epochs=args.epochs,
        out=args.out,
        device=args.device,
        precision=args.precision,
        loader_workers=args.loader_workers,
    )
    print_table(
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
    if result.program is not None:
        print(
            f"torch.export program: {result.program} (stock PyTorch loads it, no autoprune: "
            f"torch.export.load('{result.program}').module(); any batch size, eval mode)"
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
    int8 = _int8_data(args) if args.int8 else None
    macs, params = count_macs_params(model, inputs)
    try:
        report = check_onnx(model, inputs, out, batch=args.batch, repeats=args.repeats)
    except OnnxCheckError as exc:
        print(f"autoprune onnx: {exc}; nothing written to {out}", file=sys.stderr)
        return 1
    print_table(
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
    if int8 is not None:
        _int8(args, out, inputs, *int8)
    return 0


def _int8_data(args: argparse.Namespace) -> tuple[str, Any]:
    """``onnx --int8``'s dataset and splits, before anything is exported (a missing dataset
    stops here, in one line)."""
    from autoprune.deploy import checkpoint_dataset
    from autoprune.evaluate import load_splits

    if args.calibration_images < 1:
        raise UserError(f"--calibration-images {args.calibration_images} must be >= 1")
    name, image_size = checkpoint_dataset(args.checkpoint)
    dataset = args.dataset or name
    if not dataset:
        raise UserError(
            f"{args.checkpoint} records no dataset (its base checkpoint is not where the policy "
            "says): pass --dataset NAME, the data INT8 is calibrated on (training images) and "
            "tested on"
        )
    return dataset, load_splits(dataset, args.data_root, image_size=image_size)


def _int8(args: argparse.Namespace, fp32: Path, inputs: Any, dataset: str, splits: Any) -> None:
    """``onnx --int8``: quantize the checked fp32 file, then fp32 and INT8 side by side."""
    from autoprune.quantize import LATENCY_BATCHES, int8_report

    out = fp32.with_suffix(".int8.onnx")
    report = int8_report(
        fp32, out, splits.train, splits.test, inputs[:1].numpy(), repeats=args.repeats,
        threads=args.threads, calibration_images=args.calibration_images,
    )  # fmt: skip

    def timing(model: Any, batch: int) -> str:
        t = model.latency[batch]
        return f"{t.median_ms:.2f} ({t.iqr_ms:.2f})"

    print_table(
        ["precision", "onnx file", "size MB", "test acc"]
        + [f"batch {b} ms, median (IQR)" for b in LATENCY_BATCHES],
        [
            (
                m.precision,
                m.path,
                f"{m.size_bytes / 2**20:.2f}",
                f"{m.test_accuracy:.4f}",
                *(timing(m, b) for b in LATENCY_BATCHES),
            )
            for m in (report.fp32, report.int8)
        ],
        title=(
            f"INT8 (ONNX Runtime static quantization, QDQ, per-channel weights, calibrated on "
            f"{report.calibration_images} {dataset} training images) on {report.test_images} test "
            f"images; latency over {args.repeats} runs on the CPU execution provider"
        ),
    )
