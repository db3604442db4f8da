"""Evaluate one policy: project -> prune -> fine-tune -> measure. Pure: no Ray, no Optuna.

Both executors (Ray Tune workers and the local Optuna loop) and ``replay`` call into this
module, so a policy found by the search is reproduced by exactly the code that measured it.

    >>> from autoprune.objective import ObjectiveConfig, evaluate_policy  # doctest: +SKIP
    >>> metrics = evaluate_policy(ObjectiveConfig(base_checkpoint="studies/base/resnet20-mnist5k.pt",
    ...                                           dataset="mnist5k"), policy)
    >>> metrics.val_accuracy, metrics.macs_ratio
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune import data, prune
from autoprune.base import BaseCheckpoint, load_base
from autoprune.budget import project_to_budget
from autoprune.criteria.cache import ScoreCache
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringInputs
from autoprune.data import DataSplits
from autoprune.files import studies_dir
from autoprune.macs import count_macs_params
from autoprune.policy import BaseRef, Policy
from autoprune.train import TrainConfig, evaluate, fit, recalibrate_batchnorm, select_device

Log = Callable[[str], Any]


@dataclass
class ObjectiveConfig:
    """Where the base model and data come from, and how a trial runs. Shared by all trials."""

    base_checkpoint: str  # path of the base checkpoint every policy starts from
    dataset: str  # dataset registry name
    data_root: str | None = None  # folder of the dataset (cifar10/cifar100)
    download: bool = False  # let torchvision download the dataset
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads in this process (None: torch's default)
    max_rate: float = 0.9  # cap on any group's pruning rate during budget projection
    calibration_images: int = 256  # images data-driven criteria score on
    calibration_batch_size: int = 64
    score_cache: str | None = None  # folder of the base-score cache; None: studies/cache/scores
    batch_size: int = 128  # fine-tuning batch size
    num_workers: int = 0  # DataLoader workers for image-decoding datasets
    bn_recalibration_batches: int = 8  # BN statistics re-estimated when a policy has no fine-tune

    def cache_dir(self) -> Path:
        return Path(self.score_cache) if self.score_cache else studies_dir() / "cache" / "scores"


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


@functools.lru_cache(maxsize=4)
def _cached_base(path: str, mtime: float) -> BaseCheckpoint:
    return load_base(path)


@functools.lru_cache(maxsize=2)
def load_splits(name: str, root: str | None, download: bool = False) -> DataSplits:
    """A dataset's splits, cached per process (trial workers and the driver reuse them)."""
    return data.create(name, root=root, download=download)


def load_inputs(config: ObjectiveConfig) -> tuple[BaseCheckpoint, DataSplits]:
    """The base checkpoint and dataset splits, cached per process (trial workers reuse them)."""
    path = Path(config.base_checkpoint)
    base = _cached_base(str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)
    splits = load_splits(config.dataset, config.data_root, config.download)
    return base, splits


def prune_policy(config: ObjectiveConfig, policy: Policy) -> Pruned:
    """Project ``policy`` onto its budget and prune a fresh copy of the base model with it."""
    if config.threads:
        torch.set_num_threads(config.threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base, splits = load_inputs(config)
    device = select_device(config.device)
    spec = base.spec
    model = base.build()
    inputs = spec.example_inputs()
    base_macs, _ = base_macs_params(base)
    policy.validate_against(spec, base_sha256=base.sha256)
    policy = replace(policy, base=BaseRef(checkpoint=str(base.path), sha256=base.sha256))
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    projected = project_to_budget(
        policy, model, inputs, base_macs=base_macs, max_rate=config.max_rate
    )
    timings["project"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scoring = ScoringInputs(
        calibration=Calibration(
            splits.calibration,
            dataset_name=splits.name,
            num_images=config.calibration_images,
            batch_size=config.calibration_batch_size,
            seed=projected.seed,
        ),
        device=device,
        base_sha256=base.sha256,
        cache=ScoreCache(config.cache_dir()),
        num_classes=splits.num_classes,
    )
    between = None
    if projected.schedule.finetune_between_steps > 0:
        step_config = _train_config(projected, config, projected.schedule.finetune_between_steps)

        def between(m: nn.Module, step: int) -> None:
            fit(m, splits.train, step_config, device, seed=projected.seed + 1000 * (step + 1))
            m.cpu()

    model.cpu()
    result = prune.apply(model, projected, scoring, example_inputs=inputs, between_steps=between)
    timings["prune"] = time.perf_counter() - t0
    macs, params = count_macs_params(result.model, inputs)
    return Pruned(
        model=result.model,
        history=result.history,
        policy=result.policy,
        base=base,
        splits=splits,
        device=device,
        macs=macs,
        params=params,
        timings=timings,
        counters=dict(result.counters),
    )


def base_macs_params(base: BaseCheckpoint) -> tuple[int, int]:
    """MACs and parameters of the unpruned base model (stored at training, else counted)."""
    macs, params = int(base.metrics.get("macs") or 0), int(base.metrics.get("params") or 0)
    if macs and params:
        return macs, params
    return count_macs_params(base.build(), base.spec.example_inputs())


def _train_config(policy: Policy, config: ObjectiveConfig, epochs: float) -> TrainConfig:
    """The policy's retrain recipe for ``epochs`` epochs, run with this objective's loop settings."""
    return TrainConfig(
        replace(policy.retrain, epochs=epochs),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
    )


def finetune(
    pruned: Pruned, config: ObjectiveConfig, epochs: float, log: Log | None = None
) -> None:
    """Fine-tune a pruned model in place; with 0 epochs only BatchNorm statistics are refreshed."""
    t0 = time.perf_counter()
    if epochs > 0:
        fit(
            pruned.model,
            pruned.splits.train,
            _train_config(pruned.policy, config, epochs),
            pruned.device,
            seed=pruned.policy.seed,
            log=log,
        )
    elif config.bn_recalibration_batches > 0:
        recalibrate_batchnorm(
            pruned.model, pruned.splits.calibration, pruned.device, config.bn_recalibration_batches
        )
    pruned.timings["finetune"] = time.perf_counter() - t0


def evaluate_policy(config: ObjectiveConfig, policy: Policy, log: Log | None = None) -> Metrics:
    """Project, prune, fine-tune for the policy's retrain budget, and measure on the val split.

    Returns:
        Metrics with the applied policy (its ``measured`` section filled in).

    Raises:
        UserError: the policy does not fit the base checkpoint, or its target is unreachable.
    """
    start = time.perf_counter()
    pruned = prune_policy(config, policy)
    finetune(pruned, config, pruned.policy.retrain.epochs, log)
    t0 = time.perf_counter()
    val = evaluate(pruned.model, pruned.splits.val, pruned.device)
    pruned.timings["evaluate"] = time.perf_counter() - t0
    pruned.timings["total"] = time.perf_counter() - start
    base_macs, base_params = base_macs_params(pruned.base)
    macs_ratio = pruned.macs / base_macs
    params_ratio = pruned.params / base_params
    applied = replace(
        pruned.policy,
        measured={
            "val_accuracy": round(val.accuracy, 6),
            "macs_ratio": round(macs_ratio, 6),
            "params_ratio": round(params_ratio, 6),
        },
    )
    return Metrics(
        val_accuracy=val.accuracy,
        val_loss=val.loss,
        macs=pruned.macs,
        macs_ratio=macs_ratio,
        params=pruned.params,
        params_ratio=params_ratio,
        policy=applied,
        timings={k: round(v, 3) for k, v in pruned.timings.items()},
        counters=pruned.counters,
    )
