"""``fashion-mnist``: the 70,000 Zalando images from their original gzip IDX files (offline).

Debian's package ``dataset-fashion-mnist`` installs the four files under
:data:`DEFAULT_ROOT`; ``--data-root`` points elsewhere (the same four names, gzipped or not,
as torchvision's ``FashionMNIST/raw`` folder holds them). A tenth of the 60,000 training
images, stratified, is the val split; the 10,000 official test images are the test split.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.data.splits import VAL_FRACTION, DataSplits, TensorSplit, stratified_split
from autoprune.errors import UserError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Pixel mean and std of the 60,000 training images (scaled to [0, 1]).
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
_IDX_TYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as an array of its declared type and shape.

    Raises:
        UserError: the file is truncated or is not an IDX file.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: corrupt gzip data ({exc}); reinstall the dataset") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number); reinstall the dataset")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header; reinstall the dataset")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count * dtype.itemsize:
        raise UserError(
            f"{path}: holds {len(raw) - header} data bytes, its header declares {count * dtype.itemsize} "
            "(truncated or corrupt); reinstall the dataset"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(
        f"dataset 'fashion-mnist': {root} has no {stem}.gz (or {stem}); install Debian's package "
        "`dataset-fashion-mnist` (apt-get install dataset-fashion-mnist, after apt-get update) "
        f"or point --data-root at a folder holding the four IDX files"
    )


def fashion_mnist(
    root: str | Path | None = None, download: bool = False, seed: int = 0
) -> DataSplits:
    """Fashion-MNIST's splits: 54,000 train / 6,000 val (from train, stratified) / 10,000 test."""
    folder = Path(root) if root else DEFAULT_ROOT
    if download:
        raise UserError(
            "dataset 'fashion-mnist' is not downloaded at run time: install Debian's package "
            "`dataset-fashion-mnist` or give --data-root"
        )
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"dataset 'fashion-mnist' in {folder}: {split} images {images.shape} and labels "
                f"{labels.shape} do not match (expected N x 28 x 28 and N)"
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise UserError(
                f"dataset 'fashion-mnist' in {folder}: {split} labels outside 0..9; reinstall the dataset"
            )

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(arrays[f"{split}_images"].astype(np.float32) / 255.0)
        images = ((images - FASHION_MEAN) / FASHION_STD).unsqueeze(1)
        return images, torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))

    train_x, train_y = tensors("train")
    test_x, test_y = tensors("test")
    val_idx, train_idx = stratified_split(train_y.numpy(), [VAL_FRACTION, 1 - VAL_FRACTION], seed)
    train = TensorSplit(train_x[train_idx], train_y[train_idx])
    return DataSplits(
        name="fashion-mnist",
        train=train,
        val=TensorSplit(train_x[val_idx], train_y[val_idx]),
        test=TensorSplit(test_x, test_y),
        num_classes=10,
        input_shape=(1, int(train_x.shape[-2]), int(train_x.shape[-1])),
        calib=train,
    )
