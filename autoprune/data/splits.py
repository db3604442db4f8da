"""Dataset splits: the train/val/test container, in-memory and transformed splits.

Every dataset loader returns a :class:`DataSplits`; the validation split is always carved from
training data (:func:`stratified_split`), so the search never looks at the test split.
Batching lives in :mod:`autoprune.data.loader`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

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

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at ``index``."""
        return self.images[index], self.labels[index]


@dataclass(frozen=True)
class Augment:
    """Training augmentation of a :class:`PixelSplit`: torchvision's ``RandomCrop(size,
    padding=pad)`` (zero padding) followed by ``RandomHorizontalFlip()``, done with tensor ops.
    """

    pad: int = 0  # pixels of zero padding on every side before a random crop back to size
    hflip: bool = False  # mirror left-right with probability 0.5

    def draw(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets (top, left) in ``[0, 2 * pad]`` and flip flags for ``n`` images."""
        top = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        return top, left, flip & self.hflip


def crop_flip(
    pixels: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Zero-pad a batch (B, C, H, W) by ``pad``, crop each image back to H x W at its own
    (top, left) and mirror the images whose ``flip`` is set: one gather, on the batch's device.
    """
    b, c, h, w = pixels.shape
    padded = pixels.new_zeros(b, c, h + 2 * pad, w + 2 * pad)
    padded[:, :, pad : pad + h, pad : pad + w] = pixels
    device = pixels.device
    rows = top.to(device)[:, None] + torch.arange(h, device=device)  # (B, H)
    forward = torch.arange(w, device=device)
    cols = left.to(device)[:, None] + torch.where(
        flip.to(device)[:, None], w - 1 - forward, forward
    )  # (B, W)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices around a slice: the result is (B, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


class PixelSplit(Dataset):
    """An in-memory split of uint8 pixels (N, C, H, W), normalised (and augmented) on access.

    Four times smaller than float images, so a whole split fits on a GPU, where
    :class:`~autoprune.data.loader.Loader` gathers, augments and normalises each batch without
    the CPU. ``split[i]`` gives what torchvision's ``ToTensor`` + ``Normalize`` (after the
    augmentation, drawn from torch's global RNG) would.
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
    ) -> None:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            raise ValueError(
                f"PixelSplit needs uint8 (N, C, H, W) pixels, got {pixels.dtype} {tuple(pixels.shape)}"
            )
        self.pixels = pixels
        self.labels = labels
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Per-device copies of mean and std stay in this process (a GPU's may not exist there).
        return {**self.__dict__, "_stats": {}}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.pixels[index : index + 1]
        if self.augment is not None:
            pixels = crop_flip(
                pixels, self.augment.pad, *self.augment.draw(1, torch.default_generator)
            )
        return self.normalise(pixels)[0], int(self.labels[index])

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> float32 images, exactly as ``ToTensor`` then ``Normalize`` compute them."""
        if pixels.device not in self._stats:  # one copy per device, not one per batch
            shape = (len(self.mean), 1, 1)
            self._stats[pixels.device] = (
                torch.tensor(self.mean, dtype=torch.float32).view(shape).to(pixels.device),
                torch.tensor(self.std, dtype=torch.float32).view(shape).to(pixels.device),
            )
        mean, std = self._stats[pixels.device]
        return pixels.float().div_(255).sub_(mean).div_(std)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (normalised, not augmented) and labels at ``index``."""
        return self.normalise(self.pixels[index]), self.labels[index]


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
