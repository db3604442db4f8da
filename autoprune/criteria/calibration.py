"""Calibration data: the fixed, seeded set of training images data-driven criteria score on.

The set is drawn once per (dataset, number of images, seed) and kept in memory; its
:attr:`Calibration.spec` is part of every score-cache key, so scores computed on one set are
never read for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from autoprune.data import PixelSplit, TensorSplit, labels_of


@dataclass
class Calibration:
    """A fixed, deterministic set of training images that data-driven criteria score on."""

    dataset: Dataset  # training images without augmentation
    dataset_name: str  # part of the cache key
    num_images: int = 256  # how many images (drawn with ``seed``)
    batch_size: int = 64
    seed: int = 0
    _batches: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    _balanced: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def spec(self) -> str:
        """Identifies the calibration set for the score cache."""
        return f"{self.dataset_name}/n{self.num_images}/s{self.seed}"

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The calibration batches, drawn once and kept in memory."""
        if self._batches is None:
            n = min(self.num_images, len(self.dataset))  # type: ignore[arg-type]
            generator = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(self.dataset), generator=generator)[:n].sort().values  # type: ignore[arg-type]
            images, labels = self._load(idx)
            self._batches = [
                (images[i : i + self.batch_size], labels[i : i + self.batch_size])
                for i in range(0, n, self.batch_size)
            ]
        return self._batches

    def class_balanced(self, samples_per_class: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``samples_per_class`` training images of every class, batched class by class.

        Drawn with ``seed`` independently of :meth:`batches`; every batch holds one class only
        (classes in increasing order), so per-class statistics can be finished batch by batch.
        """
        if samples_per_class not in self._balanced:
            all_labels = labels_of(self.dataset)
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(all_labels), generator=generator)
            batches: list[tuple[torch.Tensor, torch.Tensor]] = []
            for cls in torch.unique(all_labels).tolist():
                idx = order[all_labels[order] == cls][:samples_per_class].sort().values
                images, labels = self._load(idx)
                batches += [
                    (images[i : i + self.batch_size], labels[i : i + self.batch_size])
                    for i in range(0, len(idx), self.batch_size)
                ]
            self._balanced[samples_per_class] = batches
        return self._balanced[samples_per_class]

    def _load(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.dataset, (TensorSplit, PixelSplit)):
            return self.dataset.take(idx)
        items = [self.dataset[int(i)] for i in idx]
        images = torch.stack([torch.as_tensor(x) for x, _ in items])
        return images, torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
