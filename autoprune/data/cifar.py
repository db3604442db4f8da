"""``cifar10`` / ``cifar100``: torchvision's loaders on ``--data-root``, 10% of train held out for val."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoprune.data.splits import VAL_FRACTION, DataSplits, TransformSubset, stratified_split
from autoprune.errors import UserError

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(name: str, root: str | Path | None, download: bool, seed: int) -> DataSplits:
    from torchvision import datasets, transforms

    if root is None:
        raise UserError(
            f"dataset '{name}' needs --data-root: the folder that holds (or will hold) it"
        )
    mean, std = _CIFAR_STATS[name]
    normalize = transforms.Normalize(mean, std)
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train_base = cls(str(root), train=True, download=download)
        test_base = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise UserError(
            f"dataset '{name}' was not found under --data-root {root} ({exc}); "
            "point --data-root at the folder containing the extracted batches, or add --download"
        ) from exc
    labels = np.asarray(train_base.targets)
    val_idx, train_idx = stratified_split(labels, [VAL_FRACTION, 1 - VAL_FRACTION], seed)
    return DataSplits(
        name=name,
        train=TransformSubset(train_base, train_idx, train_tf),
        val=TransformSubset(train_base, val_idx, eval_tf),
        test=TransformSubset(test_base, np.arange(len(test_base)), eval_tf),
        num_classes=len(train_base.classes),
        input_shape=(3, 32, 32),
        calib=TransformSubset(train_base, train_idx, eval_tf),
    )


def cifar10(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    return _cifar("cifar10", root, download, seed)


def cifar100(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    return _cifar("cifar100", root, download, seed)
