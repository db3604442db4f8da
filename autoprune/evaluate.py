"""Evaluate one policy: project -> prune -> fine-tune -> measure. Pure: no Ray, no Optuna.

Both executors (Ray Tune workers and the local Optuna loop) and ``replay`` call into this
module, so a policy found by the search is reproduced by exactly the code that measured it.

    >>> from autoprune.evaluate import ObjectiveConfig, evaluate_policy  # doctest: +SKIP
    >>> metrics = evaluate_policy(ObjectiveConfig(base_checkpoint="studies/base/resnet20-mnist5k.pt",
    ...                                           dataset="mnist5k"), policy)
    >>> metrics.val_accuracy, metrics.macs_ratio
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from autoprune import criteria, data, prune
from autoprune.base import BaseCheckpoint, load_base
from autoprune.budget import DEFAULT_TOLERANCE, base_macs_model, project_to_budget
from autoprune.criteria.cache import ScoreCache
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringInputs
from autoprune.data import DataSplits
from autoprune.errors import UserError
from autoprune.failures import Failure, classify
from autoprune.files import score_cache_dir
from autoprune.latency import Latency, LatencySettings, measure
from autoprune.logs import Log
from autoprune.macs import count_macs_params
from autoprune.policy import DEFAULT_MAX_RATE, BaseRef, Policy, Scoring
from autoprune.train import (
    TrainConfig,
    evaluate,
    finetune_pruned,
    recalibrate_batchnorm,
    select_device,
)


@dataclass
class ObjectiveConfig:
    """Where the base model and data come from, and how a trial runs. Shared by all trials."""

    base_checkpoint: str  # path of the base checkpoint every policy starts from
    dataset: str  # dataset registry name
    data_root: str | None = None  # folder of the dataset (cifar10/cifar100)
    image_size: int | None = None  # imagefolder: side images are resized to; None: the base's
    download: bool = False  # let torchvision download the dataset
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads in this process (None: torch's default)
    max_rate: float = DEFAULT_MAX_RATE  # cap on any group's pruning rate during budget projection
    calibration_images: int = 256  # images data-driven criteria score on
    calibration_batch_size: int = 64
    score_cache: str | None = None  # folder of the base-score cache; None: studies/cache/scores
    batch_size: int = 128  # fine-tuning batch size
    num_workers: int = 0  # DataLoader workers for image-decoding datasets
    precision: str = "auto"  # fine-tune autocast (train.PRECISIONS); evaluation is always fp32
    # BN statistics re-estimated around every fine-tune, and instead of one when a policy has none
    bn_recalibration_batches: int = 8
    proxy_batches: int = 8  # adaptive-BN proxy: training batches its BN statistics come from
    proxy_batch_size: int = 64
    proxy_images: int = 2000  # adaptive-BN proxy: val images it is measured on (a fixed subset)
    # Set on Ray workers: the base is the one installed in this process under this hash
    # (sent by the driver, see autoprune.shipping), never read from ``base_checkpoint``.
    base_sha256: str | None = None
    # --objective latency|both: time every candidate against its base (None: don't)
    latency: LatencySettings | None = None

    def cache_dir(self) -> Path:
        return Path(self.score_cache) if self.score_cache else score_cache_dir()


@dataclass
class Metrics:
    """What one evaluation measured."""

    val_accuracy: float  # top-1 on the validation split (carved from training data)
    val_loss: float
    macs: int
    macs_ratio: float  # pruned MACs / base MACs
    params: int
    params_ratio: float
    policy: Policy  # the applied policy: projected rates, chosen criteria, measured values
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    counters: dict[str, int] = field(default_factory=dict)  # e.g. calibration passes
    proxy: Proxy | None = None  # the adaptive-BN proxy, when it was measured
    finetuned: bool = True  # False: screened out by the proxy (val metrics are NaN)
    latency: Latency | None = None  # median latency against the base's, when asked for


@dataclass
class Proxy:
    """The adaptive-BatchNorm proxy of a pruned model (EagleEye): no weight is updated."""

    accuracy: float  # top-1 on the first ``proxy_images`` val images
    loss: float


@dataclass
class Pruned:
    """A pruned (and possibly fine-tuned) model with everything needed to save it."""

    model: nn.Module
    history: list[list[Any]]
    policy: Policy  # applied
    base: BaseCheckpoint
    splits: DataSplits
    device: torch.device
    macs: int
    params: int
    timings: dict[str, float]
    counters: dict[str, int]
    latency: Latency | None = None  # timed against the base (--objective latency|both)


@functools.lru_cache(maxsize=4)
def _cached_base(path: str, mtime: float) -> BaseCheckpoint:
    return load_base(path)


# Base checkpoints this process received from the driver, by weights hash (Ray workers).
_installed_bases: dict[str, BaseCheckpoint] = {}


def install_base(base: BaseCheckpoint) -> None:
    """Make ``base`` what configs with ``base_sha256 == base.sha256`` evaluate against."""
    _installed_bases[base.sha256] = base


def load_splits(
    name: str, root: str | None, download: bool = False, image_size: int | None = None
) -> DataSplits:
    """A dataset's splits, cached per process (trial workers and the driver reuse them).

    Keyed by all four arguments however they are passed: an imagefolder at another size is
    other data.
    """
    return _cached_splits(name, root, download, image_size)


@functools.lru_cache(maxsize=2)
def _cached_splits(
    name: str, root: str | None, download: bool, image_size: int | None
) -> DataSplits:
    return data.create(name, root=root, download=download, image_size=image_size)


def load_inputs(config: ObjectiveConfig) -> tuple[BaseCheckpoint, DataSplits]:
    """The base checkpoint and dataset splits, cached per process (trial workers reuse them).

    With ``config.base_sha256`` the base is the installed one (:func:`install_base`); a Ray
    worker on another node has no file at ``base_checkpoint``.
    """
    if config.base_sha256 is not None:
        base = _installed_bases.get(config.base_sha256)
        if base is None:
            raise RuntimeError(
                f"base checkpoint {config.base_checkpoint} (sha256 {config.base_sha256[:12]}...) "
                "was not installed in this worker: call autoprune.shipping.unpack first"
            )
    else:
        path = Path(config.base_checkpoint)
        base = _cached_base(str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)
    image_size = base.image_size(config.dataset, config.image_size)
    splits = load_splits(config.dataset, config.data_root, config.download, image_size)
    if config.dataset.startswith("imagefolder:") and splits.input_shape != base.spec.input_shape:
        raise UserError(
            f"dataset '{config.dataset}' now gives inputs of shape {list(splits.input_shape)}, "
            f"but base checkpoint {base.path} was trained on {list(base.spec.input_shape)}: "
            "restore the images the base was trained on, or train a new base"
        )
    return base, splits


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``threads`` for the block (None: left as they are), then
    restored: a trial's or a replay's setting must not outlive it in the caller's process (a
    search's in-process sensitivity pass left a library user's later replay on one thread)."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prune_policy(config: ObjectiveConfig, policy: Policy) -> Pruned:
    """Project ``policy`` onto its budget and prune a fresh copy of the base model with it,
    on ``config.threads`` threads."""
    with torch_threads(config.threads):
        return _prune_policy(config, policy)


def _prune_policy(config: ObjectiveConfig, policy: Policy) -> Pruned:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base, splits = load_inputs(config)
    device = select_device(config.device)
    spec = base.spec
    model = base.build()
    inputs = spec.example_inputs()
    base_macs, _ = base_macs_params(base)
    policy.validate_against(spec, base_sha256=base.sha256)
    criteria.check_policy(policy)
    policy = replace(
        policy,
        base=BaseRef(checkpoint=str(base.path), sha256=base.sha256),
        scoring=scoring_settings(policy, config),
    )
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    settings = policy.scoring
    assert settings.max_rate is not None
    # The MACs model depends only on the base and its dropped blocks: built once per process.
    macs_model = base_macs_model(
        base.sha256, base.build, inputs, policy.depth.drop_blocks, float(base_macs)
    )
    projected = project_to_budget(
        policy,
        model,
        inputs,
        base_macs=base_macs,
        max_rate=settings.max_rate,
        macs_model=macs_model,
    )
    timings["project"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scoring = scoring_inputs(config, settings, splits, base.sha256, device, projected.seed)
    between = None
    if projected.schedule.finetune_between_steps > 0:
        step_config = _train_config(projected, config, projected.schedule.finetune_between_steps)

        def between(m: nn.Module, step: int) -> None:
            finetune_pruned(
                m, splits.train, splits.calibration, step_config, device,
                seed=projected.seed + 1000 * (step + 1),
                teacher=base.build() if step_config.retrain.distill.on else None,
                bn_batches=config.bn_recalibration_batches,
            )  # fmt: skip
            m.cpu()

    model.cpu()
    result = prune.apply(
        model,
        projected,
        scoring,
        example_inputs=inputs,
        between_steps=between,
        macs_model=macs_model,
    )
    timings["score"] = result.score_seconds
    timings["prune"] = time.perf_counter() - t0 - result.score_seconds
    macs, params = count_macs_params(result.model, inputs)
    _check_target(projected, macs / base_macs, result.history)
    digest = result.removed_sha256
    if policy.removed_sha256 is not None and policy.removed_sha256 != digest:
        raise UserError(
            f"this policy removed other channels than the trial that measured it did "
            f"({policy.removed_sha256[:19]}... then, {digest[:19]}... now), so its measured "
            "accuracy would not hold for this model. Base weights and scoring settings match; the "
            "channel scores differ, so the calibration data (dataset files or split), the score "
            f"cache under {config.cache_dir()} or the autoprune/torch version changed. Restore "
            "them, or remove 'removed_sha256' from the policy to accept the new channels."
        )
    return Pruned(
        model=result.model,
        history=result.history,
        policy=replace(result.policy, removed_sha256=digest),
        base=base,
        splits=splits,
        device=device,
        macs=macs,
        params=params,
        timings=timings,
        counters=dict(result.counters),
    )


def scoring_settings(policy: Policy, config: ObjectiveConfig) -> Scoring:
    """The policy's recorded scoring settings, the run's settings filling in what it lacks."""
    recorded = policy.scoring
    return Scoring(
        calibration_images=recorded.calibration_images or config.calibration_images,
        calibration_batch_size=recorded.calibration_batch_size or config.calibration_batch_size,
        max_rate=recorded.max_rate if recorded.max_rate is not None else config.max_rate,
    )


def scoring_inputs(
    config: ObjectiveConfig,
    settings: Scoring,
    splits: DataSplits,
    base_sha256: str,
    device: torch.device,
    seed: int,
) -> ScoringInputs:
    """What data-driven criteria score on: the one construction a trial and the driver's
    precomputed base scores (:mod:`autoprune.shipping`) share, so their cache keys agree."""
    return ScoringInputs(
        calibration=Calibration(
            splits.calibration,
            dataset_name=splits.name,
            num_images=settings.calibration_images or config.calibration_images,
            batch_size=settings.calibration_batch_size or config.calibration_batch_size,
            seed=seed,
        ),
        device=device,
        base_sha256=base_sha256,
        cache=ScoreCache(config.cache_dir()),
        num_classes=splits.num_classes,
    )


def _check_target(policy: Policy, achieved: float, history: list[list[Any]]) -> None:
    """Refuse a pruned model whose MACs ratio misses its target: never fine-tune a wrong size."""
    target = policy.target_macs_ratio
    if target is None:
        return
    over = achieved - target > DEFAULT_TOLERANCE
    # Under the target is a miss only when channels went (a target at or above what block
    # removal leaves prunes no channel, and lands where the blocks put it).
    under = target - achieved > DEFAULT_TOLERANCE and any(idx for *_, idx in history)
    if over or under:
        raise UserError(
            f"the pruned model's MACs ratio {achieved:.4f} misses its target {target:.4f} by more "
            f"than {DEFAULT_TOLERANCE:g}; it was not fine-tuned. This is a bug in budget "
            "projection: please report it with the policy"
        )


def adaptive_bn(
    model: nn.Module, dataset: Any, device: torch.device, batches: int, batch_size: int
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``batches`` batches.

    EagleEye's adaptive BN: forward passes in train mode without gradients, so only the BN
    running statistics change; no weight does, and ``model`` itself is untouched.
    """
    copied = copy.deepcopy(model)
    with torch.no_grad():
        recalibrate_batchnorm(copied, dataset, device, num_batches=batches, batch_size=batch_size)
    return copied


def adaptive_bn_proxy(pruned: Pruned, config: ObjectiveConfig) -> Proxy:
    """Score a pruned model cheaply: adaptive BN (:func:`adaptive_bn`), then part of val.

    The pruned model itself is left exactly as pruning made it, so its fine-tune (and
    therefore ``replay``) does not depend on whether it was screened.
    """
    t0 = time.perf_counter()
    model = adaptive_bn(
        pruned.model,
        pruned.splits.calibration,
        pruned.device,
        config.proxy_batches,
        config.proxy_batch_size,
    )
    val = pruned.splits.val
    if config.proxy_images < len(val):  # type: ignore[arg-type]
        # A fixed random subset: a split stored class by class must not give the first classes.
        order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
        val = Subset(val, order[: config.proxy_images].tolist())
    result = evaluate(model, val, pruned.device)
    pruned.timings["screen"] = pruned.timings.get("screen", 0.0) + time.perf_counter() - t0
    return Proxy(accuracy=result.accuracy, loss=result.loss)


def base_macs_params(base: BaseCheckpoint) -> tuple[int, int]:
    """MACs and parameters of the unpruned base model (stored at training, else counted once
    per process and base)."""
    macs, params = int(base.metrics.get("macs") or 0), int(base.metrics.get("params") or 0)
    if macs and params:
        return macs, params
    counted = _base_counts.get(base.sha256)
    if counted is None:
        counted = count_macs_params(base.build(), base.spec.example_inputs())
        _base_counts[base.sha256] = counted
    return counted


# (MACs, params) of base checkpoints that do not store them, by weights hash.
_base_counts: dict[str, tuple[int, int]] = {}


def _train_config(policy: Policy, config: ObjectiveConfig, epochs: float) -> TrainConfig:
    """The policy's retrain recipe for ``epochs`` epochs, run with this objective's loop settings.

    cuDNN autotuning is off: a pruned model's layer shapes are new to the process, so it would
    search kernels again for every candidate: on an H200 it made a 1.5 s fine-tune epoch of a
    pruned ResNet-56 take 10.4 s (benchmarks/gpu_campaign.py, the ``autotune`` stage).
    """
    return TrainConfig(
        replace(policy.retrain, epochs=epochs),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        precision=config.precision,
        cudnn_benchmark=False,
    )


def finetune(
    pruned: Pruned, config: ObjectiveConfig, epochs: float, log: Log | None = None
) -> None:
    """Fine-tune a pruned model in place (:func:`~autoprune.train.finetune_pruned`: BatchNorm
    statistics re-estimated after the last step, the base as teacher when the policy distils);
    with 0 epochs only BatchNorm statistics are refreshed."""
    t0 = time.perf_counter()
    if epochs > 0:
        train_config = _train_config(pruned.policy, config, epochs)
        finetune_pruned(
            pruned.model,
            pruned.splits.train,
            pruned.splits.calibration,
            train_config,
            pruned.device,
            seed=pruned.policy.seed,
            teacher=pruned.base.build() if train_config.retrain.distill.on else None,
            bn_batches=config.bn_recalibration_batches,
            log=log,
        )
    elif config.bn_recalibration_batches > 0:
        recalibrate_batchnorm(
            pruned.model, pruned.splits.calibration, pruned.device, config.bn_recalibration_batches
        )
    pruned.timings["finetune"] = time.perf_counter() - t0


def evaluate_policy(
    config: ObjectiveConfig, policy: Policy, log: Log | None = None, proxy: bool = True
) -> Metrics:
    """Project, prune, fine-tune for the policy's retrain budget, and measure on the val split.

    Args:
        proxy: also measure the adaptive-BN proxy (before the fine-tune, on a copy).

    Returns:
        Metrics with the applied policy (its ``measured`` section filled in).

    Raises:
        UserError: the policy does not fit the base checkpoint, or its target is unreachable.
    """
    with torch_threads(config.threads):
        pruned = prune_policy(config, policy)
        screened = adaptive_bn_proxy(pruned, config) if proxy else None
        return _finish(pruned, config, screened, log)


def evaluate_bracket(
    config: ObjectiveConfig, policies: list[Policy], keep: int = 1, log: Log | None = None
) -> list[Metrics | Failure]:
    """Screen candidates by the adaptive-BN proxy; fine-tune and measure only the best ``keep``.

    One rung of successive halving: every candidate is pruned and scored by
    :func:`adaptive_bn_proxy`; the ``keep`` with the highest proxy accuracy (ties: lower
    proxy loss) get their full fine-tune. The others come back with ``finetuned=False`` and
    NaN val metrics. Candidates should share a MACs target, so the proxy compares like with like.

    A candidate that fails (its settings make it impossible, a bug, out of memory) comes back
    as its :class:`~autoprune.failures.Failure` and the others go on. A fine-tune that diverges
    is that candidate's own (its learning rate), so the next best takes its place; any other
    fine-tune failure would most likely repeat, so no other candidate is fine-tuned after it.
    """
    with torch_threads(config.threads):
        return _evaluate_bracket(config, policies, keep, log)


def _evaluate_bracket(
    config: ObjectiveConfig, policies: list[Policy], keep: int, log: Log | None
) -> list[Metrics | Failure]:
    screened: dict[int, tuple[Pruned, Proxy]] = {}
    results: list[Metrics | Failure | None] = [None] * len(policies)
    for i, policy in enumerate(policies):
        try:
            pruned = prune_policy(config, policy)
            screened[i] = (pruned, adaptive_bn_proxy(pruned, config))
        except Exception as exc:  # recorded as this candidate's failure
            results[i] = classify(exc, "pruning")
    ranked = sorted(screened, key=lambda i: (-screened[i][1].accuracy, screened[i][1].loss, i))
    to_finetune, stopped = max(1, keep), False
    for i in ranked:
        pruned, proxy = screened[i]
        if to_finetune and not stopped:
            try:
                results[i] = _finish(pruned, config, proxy, log)
                to_finetune -= 1
            except Exception as exc:  # recorded as this candidate's failure
                failure = classify(exc, "fine-tune")
                results[i], stopped = failure, failure.kind != "nan"
            continue
        # Screened-out candidates are timed too: their latency constrains the sampler like
        # their MACs do, and places them on the plot.
        try:
            time_against_base(pruned, config)
        except Exception as exc:  # recorded as this candidate's failure
            results[i] = classify(exc, "latency")
            continue
        pruned.timings["total"] = sum(pruned.timings.values())
        results[i] = _metrics(pruned, proxy, None)
    return [r for r in results if r is not None]


def _finish(
    pruned: Pruned, config: ObjectiveConfig, proxy: Proxy | None, log: Log | None
) -> Metrics:
    """Fine-tune a pruned model for its policy's retrain budget and measure it on val."""
    time_against_base(pruned, config)
    finetune(pruned, config, pruned.policy.retrain.epochs, log)
    t0 = time.perf_counter()
    val = evaluate(pruned.model, pruned.splits.val, pruned.device)
    pruned.timings["evaluate"] = time.perf_counter() - t0
    # The sum of the phases, not the time since ``start``: in a bracket other candidates were
    # screened in between, and each second must be counted once.
    pruned.timings["total"] = sum(pruned.timings.values())
    return _metrics(pruned, proxy, val)


def time_against_base(pruned: Pruned, config: ObjectiveConfig) -> None:
    """Time the pruned model against its base when the search asks for latency (once: the
    architecture, and so the latency, does not change with the fine-tune)."""
    if config.latency is None or pruned.latency is not None:
        return
    t0 = time.perf_counter()
    pruned.latency = measure(
        pruned.model,
        pruned.base.build(),
        tuple(pruned.base.spec.input_shape),
        pruned.device,
        config.latency,
    )
    pruned.timings["latency"] = pruned.timings.get("latency", 0.0) + time.perf_counter() - t0


def _metrics(pruned: Pruned, proxy: Proxy | None, val: Any) -> Metrics:
    latency = pruned.latency
    base_macs, base_params = base_macs_params(pruned.base)
    macs_ratio = pruned.macs / base_macs
    params_ratio = pruned.params / base_params
    measured = {"macs_ratio": round(macs_ratio, 6), "params_ratio": round(params_ratio, 6)}
    if val is not None:
        measured = {"val_accuracy": round(val.accuracy, 6), **measured}
    if latency is not None:
        measured["latency_ratio"] = round(latency.ratio, 6)
    return Metrics(
        val_accuracy=val.accuracy if val is not None else float("nan"),
        val_loss=val.loss if val is not None else float("nan"),
        macs=pruned.macs,
        macs_ratio=macs_ratio,
        params=pruned.params,
        params_ratio=params_ratio,
        policy=replace(pruned.policy, measured=measured),
        timings={k: round(v, 3) for k, v in pruned.timings.items()},
        counters=pruned.counters,
        proxy=proxy,
        finetuned=val is not None,
        latency=latency,
    )
