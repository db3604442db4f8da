"""Base (unpruned) checkpoints: train, save, load, hash, and the cached embedded default.

A base checkpoint is a plain dict that loads with ``torch.load(weights_only=True)``::

    {format, model: ModelSpec dict, dataset: {name, seed}, state_dict, metrics, train, sha256}

``sha256`` hashes the state dict's tensors (names, dtypes, shapes and bytes), so it identifies
the weights no matter where or how often the file is re-saved. Policies and score caches refer
to a base model by this hash.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.files import read_torch_file, save_torch, studies_dir
from autoprune.modelspec import ModelSpec

BASE_FORMAT = "autoprune.base/1"

# Embedded default: what `autoprune search` uses when no model or dataset is given.
DEFAULT_MODEL = "resnet20"
DEFAULT_DATASET = "mnist5k"
DEFAULT_BASE_EPOCHS = 4.0


def default_base_path(model: str, dataset: str) -> Path:
    from autoprune.data import canonical_name

    safe = f"{model}-{canonical_name(dataset)}".replace("/", "_").replace(":", "_")
    return studies_dir() / "base" / f"{safe}.pt"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict, independent of file layout and pickling details."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def is_state_dict(value: Any) -> bool:
    """Whether ``value`` is ``{name: tensor}``, the only shape of weights a checkpoint holds."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


@dataclass
class BaseCheckpoint:
    """A loaded base checkpoint."""

    path: Path
    spec: ModelSpec
    dataset: dict[str, Any]  # {"name": ..., "seed": ...}
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    sha256: str

    def build(self) -> nn.Module:
        """A fresh model with the base weights loaded (eval mode)."""
        model = self.spec.build()
        model.load_state_dict(self.state_dict)
        return model.eval()

    def image_size(self, dataset: str, requested: int | None = None) -> int | None:
        """The ``image_size`` to load ``dataset`` with for this model: the size it was trained at.

        Only ``imagefolder:`` images are resized, so a search, its resume and a replay take the
        size from the checkpoint's ``input_shape`` and a user never repeats ``--image-size``.
        ``None`` for a non-square input: the model was trained at the images' own size.

        Raises:
            UserError: ``requested`` differs from the size the model was trained at.
        """
        if not dataset.startswith("imagefolder:"):
            return requested
        _, height, width = self.spec.input_shape
        if requested is None:
            return height if height == width else None
        if (requested, requested) != (height, width):
            raise UserError(
                f"--image-size {requested} differs from the {width}x{height} images base checkpoint "
                f"{self.path} was trained on: drop --image-size (the checkpoint's size is used)"
            )
        return requested


def save_base(
    path: Path,
    model: nn.Module,
    spec: ModelSpec,
    dataset: dict[str, Any],
    metrics: dict[str, float],
    train: dict[str, Any] | None = None,
) -> str:
    """Write a base checkpoint atomically and return its sha256."""
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    sha = state_dict_sha256(state_dict)
    payload = {
        "format": BASE_FORMAT,
        "model": spec.to_dict(),
        "dataset": dict(dataset),
        "state_dict": state_dict,
        "metrics": dict(metrics),
        "train": dict(train or {}),
        "sha256": sha,
    }
    save_torch(path, payload)
    return sha


def load_base(path: str | Path, payload: Any = None) -> BaseCheckpoint:
    """Load a base checkpoint with ``weights_only=True`` and verify its hash.

    ``payload`` is the file's content when the caller has read it already.

    Raises:
        UserError: the file is missing, not an autoprune base checkpoint, or corrupted.
    """
    path = Path(path)
    fix = "train one with `autoprune train` or fix --base-checkpoint"
    if payload is None:
        payload = read_torch_file(path, "base checkpoint", fix)
    if not isinstance(payload, dict) or payload.get("format") != BASE_FORMAT:
        raise UserError(
            f"{path} is not an autoprune base checkpoint (expected format {BASE_FORMAT}): {fix}"
        )
    if not is_state_dict(payload.get("state_dict")) or not isinstance(payload.get("model"), dict):
        raise UserError(
            f"base checkpoint {path} is damaged: it lacks its model or its weights; "
            f"re-download or re-create it: {fix}"
        )
    sha = state_dict_sha256(payload["state_dict"])
    if sha != payload.get("sha256"):
        raise UserError(
            f"base checkpoint {path}: its weights do not match the sha256 recorded in it, so the "
            f"file was modified or damaged; re-download or re-create it: {fix}"
        )
    return BaseCheckpoint(
        path=path,
        spec=ModelSpec.from_dict(payload["model"]),
        dataset=dict(payload.get("dataset", {})),
        state_dict=payload["state_dict"],
        metrics=dict(payload.get("metrics", {})),
        sha256=sha,
    )


def train_base(
    model_name: str,
    dataset_name: str,
    epochs: float,
    out: Path,
    *,
    data_root: str | None = None,
    download: bool = False,
    lr: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "auto",
    image_size: int | None = None,
    precision: str = "auto",
    loader_workers: int = 0,
    log: Any = print,
) -> BaseCheckpoint:
    """Train a model from scratch on a dataset and save it as a base checkpoint.

    ``image_size`` resizes ``imagefolder:`` images (default: their own size); the size trained
    at is the checkpoint's ``input_shape``, which searches and replays of it reuse.
    ``precision`` is the training autocast (:data:`autoprune.train.PRECISIONS`); val and test
    accuracy are measured in float32.
    """
    from autoprune import data, models
    from autoprune.macs import count_macs_params
    from autoprune.train import (
        Retrain,
        TrainConfig,
        evaluate,
        fit,
        seed_everything,
        select_device,
    )

    models.check_name(model_name)  # before loading data: a typo should not cost a dataset load
    dataset_name = data.canonical_name(dataset_name)
    splits = data.create(dataset_name, root=data_root, download=download, image_size=image_size)
    dev = select_device(device)
    seed_everything(seed)
    model = models.create(
        model_name, num_classes=splits.num_classes, in_channels=splits.input_shape[0]
    )
    spec = ModelSpec(model_name, splits.num_classes, splits.input_shape)
    steps_per_epoch = math.ceil(len(splits.train) / batch_size)  # type: ignore[arg-type]
    total_steps = math.ceil(epochs * steps_per_epoch)
    config = TrainConfig(
        Retrain(epochs=epochs, lr=lr),
        batch_size=batch_size,
        weight_decay=5e-4,
        num_workers=loader_workers,
        precision=precision,
        # From scratch at lr 0.1 a deep network needs a warm-up: ResNet-56 stays at chance
        # without one. One epoch, at most a quarter of the run.
        warmup_steps=min(steps_per_epoch, total_steps // 4),
    )
    log(f"training {model_name} on {dataset_name} for {epochs:g} epochs on {dev}")
    fit(model, splits.train, config, dev, seed=seed, log=log, val=splits.val)
    val = evaluate(model, splits.val, dev)
    test = evaluate(model, splits.test, dev)
    model.cpu()
    macs, params = count_macs_params(model, spec.example_inputs())
    metrics = {
        "val_accuracy": val.accuracy,
        "test_accuracy": test.accuracy,
        "macs": float(macs),
        "params": float(params),
    }
    save_base(out, model, spec, {"name": dataset_name, "seed": 0}, metrics, train=asdict(config))
    log(
        f"val acc {val.accuracy:.4f}  test acc {test.accuracy:.4f}  MACs {macs / 1e6:.2f}M  params {params / 1e6:.3f}M -> {out}"
    )
    return load_base(out)


def ensure_default_base(
    model_name: str, dataset_name: str, log: Any = print, **kwargs: Any
) -> BaseCheckpoint:
    """The cached base checkpoint for (model, dataset), training it on first use."""
    path = default_base_path(model_name, dataset_name)
    if path.is_file():
        return load_base(path)
    log(f"no base checkpoint for {model_name}/{dataset_name} yet: training one (cached at {path})")
    return train_base(
        model_name, dataset_name, kwargs.pop("epochs", DEFAULT_BASE_EPOCHS), path, log=log, **kwargs
    )
