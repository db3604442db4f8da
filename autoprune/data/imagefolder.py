"""``imagefolder:PATH``: one folder per class; ``train/``, ``val/``, ``test/`` subfolders when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from autoprune.data.splits import VAL_FRACTION, DataSplits, TransformSubset, stratified_split
from autoprune.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagefolder_splits(name: str, path: Path, seed: int, image_size: int) -> DataSplits:
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
