"""Batches of a split on a device: the tensor loader for in-memory splits, a DataLoader otherwise.

In-memory splits (:class:`~autoprune.data.splits.TensorSplit`,
:class:`~autoprune.data.splits.PixelSplit`, and ``Subset`` views of them) never go through a
DataLoader: the split is copied to the device once per process (when it fits, see
:data:`RESIDENT_MAX_BYTES`), and every batch is gathered, augmented and normalised there with
tensor ops, so a GPU is not fed by one CPU process. The shuffling order and the augmentation are
drawn on the CPU from a generator seeded with ``seed + epoch``, so a run is the same batches on
any device. Other datasets (image files) use a DataLoader with ``num_workers`` worker processes
that live as long as the :class:`Loader` (``persistent_workers``), and pinned memory on CUDA so
the copies to the GPU overlap with compute.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from autoprune.data.splits import PixelSplit, TensorSplit, crop_flip

Batch = tuple[torch.Tensor, torch.Tensor]

# A split is kept on a GPU only when it takes at most this many bytes and at most a quarter of
# the GPU's free memory (trials sharing a GPU each hold their own copy); otherwise batches are
# gathered on the CPU and copied from pinned memory. CIFAR's 50,000 uint8 images take 150 MiB.
RESIDENT_MAX_BYTES = 2 * 1024**3

# Per process: each in-memory split's copy on each device, dropped with the split.
_RESIDENT: weakref.WeakKeyDictionary[Dataset, dict[torch.device, Batch]] = (
    weakref.WeakKeyDictionary()
)


def _in_memory(dataset: Dataset) -> tuple[TensorSplit | PixelSplit, torch.Tensor | None] | None:
    """The in-memory split behind ``dataset`` and the rows of it that ``dataset`` holds."""
    if isinstance(dataset, (TensorSplit, PixelSplit)):
        return dataset, None
    if isinstance(dataset, Subset):
        inner = _in_memory(dataset.dataset)
        if inner is not None:
            split, rows = inner
            picked = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return split, picked if rows is None else rows[picked]
    return None


def _storage(split: TensorSplit | PixelSplit) -> Batch:
    return (split.pixels if isinstance(split, PixelSplit) else split.images), split.labels


def _fits(split: TensorSplit | PixelSplit, device: torch.device) -> bool:
    if device.type != "cuda":
        return device.type == "cpu"
    if device in _RESIDENT.get(split, {}):
        return True
    images, labels = _storage(split)
    size = images.nbytes + labels.nbytes
    free, _ = torch.cuda.mem_get_info(device)
    return size <= min(RESIDENT_MAX_BYTES, free // 4)


def resident(split: TensorSplit | PixelSplit, device: torch.device) -> Batch:
    """``split``'s images (or pixels) and labels on ``device``, copied once per process."""
    if device.type == "cpu":
        return _storage(split)
    copies = _RESIDENT.setdefault(split, {})
    if device not in copies:
        images, labels = _storage(split)
        copies[device] = (images.to(device), labels.to(device))
    return copies[device]


class _EpochSampler(Sampler[int]):
    """Indices in ``randperm(n)`` order of a generator seeded with ``seed + epoch`` (or in order).

    The same order the tensor loader uses; one sampler serves every epoch of a DataLoader
    whose workers persist.
    """

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class Loader:
    """Batches ``(images, labels)`` of ``dataset`` on ``device``, epoch after epoch.

    Args:
        dataset: a split; in-memory splits take the tensor path, others a DataLoader.
        batch_size: images per batch (the last batch may be smaller).
        shuffle: a new order every epoch, from a generator seeded with ``seed + epoch``.
        seed: seeds the order and the augmentation (tensor path); the same on every device.
        num_workers: DataLoader worker processes (datasets that decode images only).
        device: where batches are delivered; ``None`` is the CPU.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._source = _in_memory(dataset)
        self._loader: DataLoader[Any] | None = None
        if self._source is None:
            self._sampler = _EpochSampler(len(dataset), shuffle, seed)  # type: ignore[arg-type]
            self._loader = DataLoader(
                dataset,
                batch_size=batch_size,
                sampler=self._sampler,
                num_workers=num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=num_workers > 0,
                generator=torch.Generator().manual_seed(seed),  # seeds the workers
            )

    @property
    def on_device(self) -> bool:
        """Whether the tensor path holds the whole split on the target device."""
        return self._source is not None and _fits(self._source[0], self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)  # type: ignore[arg-type]
        return (n + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (its order and augmentation are seeded by it)."""
        if self._loader is None:
            yield from self._tensor_epoch(epoch)
            return
        self._sampler.epoch = epoch
        for images, labels in self._loader:
            # From pinned memory on CUDA, so these copies overlap with the previous step.
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )

    def _tensor_epoch(self, epoch: int) -> Iterator[Batch]:
        assert self._source is not None
        split, rows = self._source
        n = len(self.dataset)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if rows is not None:
            order = rows[order]
        augment = split.augment if isinstance(split, PixelSplit) else None
        draws = augment.draw(n, generator) if augment is not None else None
        on_device = self.on_device
        images, labels = resident(split, self.device) if on_device else _storage(split)
        order = order.to(images.device)
        if draws is not None:
            draws = tuple(d.to(self.device, non_blocking=True) for d in draws)  # type: ignore[assignment]
        pin = self.device.type == "cuda" and not on_device
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x, y = images[idx], labels[idx]
            if x.device != self.device:
                if pin:
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            if isinstance(split, PixelSplit):
                if augment is not None and draws is not None:
                    top, left, flip = (d[start : start + self.batch_size] for d in draws)
                    x = crop_flip(x, augment.pad, top, left, flip)
                x = split.normalise(x)
            yield x, y


def batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[Batch]:
    """One pass of ``(images, labels)`` batches on ``device`` (``None``: CPU).

    Shuffling uses its own generator seeded with ``seed``, so the order is reproducible and
    independent of the global RNG. For several epochs keep a :class:`Loader`.
    """
    return Loader(
        dataset,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        num_workers=num_workers,
        device=device,
    ).epoch(0)
