"""Dataset splits: the train/val/test container, in-memory and transformed splits, batching.

Every dataset loader returns a :class:`DataSplits`; the validation split is always carved from
training data (:func:`stratified_split`), so the search never looks at the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# Share of the training data held out for validation when a dataset has no val split of its own.
VAL_FRACTION = 0.1


@dataclass
class DataSplits:
    """A dataset's three splits plus what a model needs to know about its inputs."""

    name: str  # registry name, e.g. "mnist5k" or "imagefolder:/data/flowers"
    train: Dataset  # augmented training data (fine-tuning, calibration draws its own view)
    val: Dataset  # carved from training data; the search's objective
    test: Dataset  # never seen by the search; reported at replay
    num_classes: int
    input_shape: tuple[int, int, int]  # (channels, height, width) of one sample
    calib: Dataset | None = None  # training images with eval transforms (criteria calibration)

    @property
    def calibration(self) -> Dataset:
        """Training images without augmentation: what criteria score channels on."""
        return self.calib if self.calib is not None else self.train


class TensorSplit(Dataset):
    """An in-memory split: images (N, C, H, W) float and labels (N,) long."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class TransformSubset(Dataset):
    """A subset of a base dataset that yields ``(transform(image), label)``."""

    def __init__(
        self, base: Any, indices: Sequence[int] | np.ndarray, transform: Callable[[Any], Any] | None
    ) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        base_labels = _base_labels(base)
        self.labels = torch.as_tensor(base_labels[self.indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[int(self.indices[index])]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)


def _base_labels(base: Any) -> np.ndarray:
    for attr in ("targets", "labels"):
        if hasattr(base, attr):
            return np.asarray(getattr(base, attr))
    return np.asarray([base[i][1] for i in range(len(base))])


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of a split as a (N,) long tensor, without decoding images."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        return labels
    return torch.as_tensor(_base_labels(dataset), dtype=torch.long)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices class by class into parts of the given fractions (the last takes the rest).

    Deterministic for a seed, disjoint, and every class is represented in every part in
    proportion to its frequency.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for i, fraction in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + round(fraction * len(idx))
            parts[i].extend(idx[start:stop].tolist())
            start = stop
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(images, labels)`` batches; in-memory splits are sliced without a DataLoader.

    Shuffling uses its own generator seeded with ``seed``, so the order is reproducible and
    independent of the global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorSplit):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield dataset.images[idx], dataset.labels[idx]
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=False,
    )
    yield from loader
