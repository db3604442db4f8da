"""``imagefolder:PATH``: one folder per class; ``train/``, ``val/``, ``test/`` subfolders when present.

**Size.** By default the model sees the images at their own size, read from the headers of all
training images (PIL reads no pixels for that, so checking thousands costs well under a
second); training images of different sizes are a :class:`~autoprune.errors.UserError` that
asks for ``--image-size N``. A non-square own size is kept as it is: the input shape is
``(3, H, W)``. With ``image_size=N`` every image is resized to ``N x N`` (its shorter side to
``N``, then a centre crop), and val/test images of another size than the training images are
fitted the same way.

**Augmentation** (training split only) depends on the size:

* at most :data:`SMALL_IMAGE_MAX` pixels a side (CIFAR, Tiny ImageNet, icons): the CIFAR
  recipe, a random crop of the image padded by an eighth of its side, and a horizontal flip.
  Each image is decoded and resized once and kept as a uint8 tensor (when a folder's images
  fit in :data:`CACHE_MAX_BYTES`), so an epoch only crops and flips tensors: decoding a small
  PNG costs about as much as training on it.
* larger (ImageNet-like): ``RandomResizedCrop`` and a flip, from the image decoded at full
  resolution every time; evaluation resizes the shorter side to 256/224 of the size and
  centre-crops. RandomResizedCrop may keep 8% of an image, which of a 32-pixel image leaves a
  few pixels of the object: that is why small images do not use it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from autoprune.data.splits import VAL_FRACTION, DataSplits, TransformSubset, stratified_split
from autoprune.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Largest side (pixels) trained with the CIFAR recipe from images decoded once; above it, the
# ImageNet recipe from images decoded every time.
SMALL_IMAGE_MAX = 64
# A folder's small images are kept decoded when they take at most this much memory (uint8):
# 50,000 CIFAR-sized images take 150 MB.
CACHE_MAX_BYTES = 512 * 2**20


def imagefolder_splits(name: str, path: Path, seed: int, image_size: int | None) -> DataSplits:
    """The splits of an image folder, at ``image_size`` or (``None``) the images' own size."""
    from torchvision import datasets

    if not path.is_dir():
        raise UserError(
            f"dataset '{name}': folder {path} does not exist; give 'imagefolder:PATH' with an existing folder"
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

    # The folders: training, and the held-out ones it has (test: the test split; val without
    # test is ImageNet's layout, whose published val set is the test split here).
    subdirs = {s: path / s for s in ("train", "val", "test") if (path / s).is_dir()}
    test_base: Any | None = None
    val_base: Any | None = None
    if "train" in subdirs:
        train_base = load(subdirs["train"])
        held_out = subdirs.get("test", subdirs.get("val"))
        if held_out is not None:
            test_base = load(held_out, like=train_base)
        if "val" in subdirs and "test" in subdirs:
            val_base = load(subdirs["val"], like=train_base)
    elif subdirs:
        raise UserError(
            f"dataset '{name}': {path} has {', '.join(sorted(subdirs))}/ but no train/ folder; "
            "add train/ or point at a folder with one subfolder per class"
        )
    else:
        train_base = load(path)

    size = (image_size, image_size) if image_size else own_size(name, train_base)
    source, train_tf, eval_tf = _recipe(size)
    train_source = source(train_base)
    labels = np.asarray(train_base.targets)
    if test_base is None:
        test_idx, val_idx, train_idx = stratified_split(labels, [0.1, 0.1, 0.8], seed)
        test = TransformSubset(train_source, test_idx, eval_tf)
    else:
        test = TransformSubset(source(test_base), np.arange(len(test_base)), eval_tf)
    if val_base is not None:
        train_idx = np.arange(len(train_base))
        val = TransformSubset(source(val_base), np.arange(len(val_base)), eval_tf)
    else:
        if test_base is not None:
            val_idx, train_idx = stratified_split(labels, [VAL_FRACTION, 1 - VAL_FRACTION], seed)
        val = TransformSubset(train_source, val_idx, eval_tf)
    return DataSplits(
        name=name,
        train=TransformSubset(train_source, train_idx, train_tf),
        val=val,
        test=test,
        num_classes=len(train_base.classes),
        input_shape=(3, size[0], size[1]),
        calib=TransformSubset(train_source, train_idx, eval_tf),
    )


def own_size(name: str, folder: Any) -> tuple[int, int]:
    """``(height, width)`` of every image of ``folder`` (an ``ImageFolder``), from the headers.

    Raises:
        UserError: an image cannot be read, or two differ in size (naming both).
    """
    from PIL import Image

    first: tuple[str, tuple[int, int]] | None = None
    for file, _ in folder.samples:
        try:
            with Image.open(file) as image:
                width, height = image.size
        except OSError as exc:
            raise UserError(
                f"dataset '{name}': cannot read {file} as an image ({exc}); remove or replace it"
            ) from exc
        if first is None:
            first = (file, (width, height))
        elif (width, height) != first[1]:
            root = Path(folder.root)
            raise UserError(
                f"dataset '{name}': the images in {root} differ in size "
                f"({Path(first[0]).relative_to(root)} is {first[1][0]}x{first[1][1]}, "
                f"{Path(file).relative_to(root)} is {width}x{height} pixels); "
                "pass --image-size N to resize them all to N x N"
            )
    assert first is not None, "ImageFolder refuses a folder without images"
    return first[1][1], first[1][0]


def _recipe(
    size: tuple[int, int],
) -> tuple[Callable[[Any], Dataset], Callable[[Any], Any], Callable[[Any], Any]]:
    """``(source, train transform, eval transform)`` for images of ``size`` (module docstring).

    ``source(folder)`` is what the transforms read from: the folder itself (PIL images) for
    large images, a :class:`PreparedImages` (uint8 tensors at ``size``) for small ones.
    """
    from torchvision import transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if max(size) <= SMALL_IMAGE_MAX:
        to_float = transforms.ConvertImageDtype(torch.float32)
        train_tf = transforms.Compose(
            [
                transforms.RandomCrop(size, padding=max(1, round(min(size) / 8))),
                transforms.RandomHorizontalFlip(),
                to_float,
                normalize,
            ]
        )
        eval_tf = transforms.Compose([to_float, normalize])
        return (lambda folder: PreparedImages(folder, size)), train_tf, eval_tf
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(round(min(size) * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    return (lambda folder: folder), train_tf, eval_tf


class PreparedImages(Dataset):
    """An ``ImageFolder``'s images fitted to ``size``, as uint8 ``(3, H, W)`` tensors.

    Each image is decoded (and resized, when its size differs) on its first read and kept when
    the whole folder fits in :data:`CACHE_MAX_BYTES`; later epochs read the tensor. The
    folder's ``root``, ``samples``, ``targets`` and ``classes`` are exposed unchanged. The
    memo lives in the process that reads: DataLoader workers (``num_workers > 0``, off by
    default) each fill a copy that ends with them, so small images are best read without.
    """

    def __init__(self, folder: Any, size: tuple[int, int]) -> None:
        self.folder = folder
        self.root, self.samples, self.targets = folder.root, folder.samples, folder.targets
        self.classes, self.class_to_idx = folder.classes, folder.class_to_idx
        self.size = size  # (height, width)
        self._images: torch.Tensor | None = None
        if len(folder) * 3 * size[0] * size[1] <= CACHE_MAX_BYTES:
            self._images = torch.zeros((len(folder), 3, *size), dtype=torch.uint8)
        self._decoded = np.zeros(len(folder), dtype=bool)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.targets[index])
        if self._images is not None and self._decoded[index]:
            return self._images[index], label
        from PIL import Image, ImageOps
        from torchvision.transforms.functional import pil_to_tensor

        image = self.folder.loader(self.samples[index][0])
        height, width = self.size
        if image.size != (width, height):
            image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
        tensor = pil_to_tensor(image)
        if self._images is not None:
            self._images[index] = tensor
            self._decoded[index] = True
        return tensor, label


def _image_folder_with_classes(folder: Path, class_to_idx: dict[str, int]) -> Any:
    """An ``ImageFolder`` whose labels come from ``class_to_idx``, not from its own subfolders."""
    from torchvision import datasets

    class FolderWithClasses(datasets.ImageFolder):
        def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
            return sorted(class_to_idx, key=class_to_idx.__getitem__), dict(class_to_idx)

    # allow_empty: a split may lack a class (a rare class with no test images)
    return FolderWithClasses(str(folder), allow_empty=True)
