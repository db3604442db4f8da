"""``cifar10`` / ``cifar100``: torchvision's loaders on ``--data-root``, 10% of train held out for val.

The images are kept as uint8 pixels (:class:`~autoprune.data.splits.PixelSplit`, 150 MiB for
CIFAR's 50,000 training images), so a GPU can hold a split and augment its batches itself; the
training augmentation is torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoprune.data.splits import (
    VAL_FRACTION,
    Augment,
    DataSplits,
    PixelSplit,
    stratified_split,
)
from autoprune.errors import UserError

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
TRAIN_AUGMENT = Augment(pad=4, hflip=True)


def _cifar(name: str, root: str | Path | None, download: bool, seed: int) -> DataSplits:
    from torchvision import datasets

    if root is None:
        raise UserError(
            f"dataset '{name}' needs --data-root: the folder that holds (or will hold) it"
        )
    mean, std = _CIFAR_STATS[name]
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train_base = cls(str(root), train=True, download=download)
        test_base = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise UserError(
            f"dataset '{name}' was not found under --data-root {root} ({exc}); "
            "point --data-root at the folder containing the extracted batches, or add --download"
        ) from exc

    def split(base: object, indices: np.ndarray, augment: Augment | None = None) -> PixelSplit:
        # torchvision holds (N, 32, 32, 3) uint8 images and a list of labels
        pixels = torch.from_numpy(np.ascontiguousarray(base.data[indices]))  # type: ignore[attr-defined]
        labels = torch.as_tensor(np.asarray(base.targets)[indices], dtype=torch.long)  # type: ignore[attr-defined]
        return PixelSplit(pixels.permute(0, 3, 1, 2).contiguous(), labels, mean, std, augment)

    labels = np.asarray(train_base.targets)
    val_idx, train_idx = stratified_split(labels, [VAL_FRACTION, 1 - VAL_FRACTION], seed)
    train = split(train_base, train_idx, TRAIN_AUGMENT)
    return DataSplits(
        name=name,
        train=train,
        val=split(train_base, val_idx),
        test=split(test_base, np.arange(len(test_base))),
        num_classes=len(train_base.classes),
        input_shape=(3, 32, 32),
        # the training pixels themselves, without augmentation
        calib=PixelSplit(train.pixels, train.labels, mean, std),
    )


def cifar10(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    return _cifar("cifar10", root, download, seed)


def cifar100(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    return _cifar("cifar100", root, download, seed)
