"""``imagefolder:`` image sizes: the images' own size by default, ``--image-size N`` to resize.

A user's 32x32 images must train at 32x32 (not as 224-pixel ImageNet crops), images of
different sizes need an explicit size, and a study or replay of a base checkpoint keeps the
size the base was trained at without the user repeating it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from helpers import FAST_SPACE
from PIL import Image

from autoprune import data
from autoprune.cli import main
from autoprune.data.imagefolder import PreparedImages
from autoprune.errors import UserError

CLASSES = ("cat", "dog", "fox")


def write_images(folder: Path, per_class: int, sizes: list[tuple[int, int]]) -> Path:
    """``per_class`` random RGB PNGs per class; image ``i`` is ``sizes[i % len(sizes)]`` (w, h)."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            width, height = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i:03d}.png")
    return folder


def shapes(splits: data.DataSplits) -> set[tuple[int, ...]]:
    """The shapes of the first few images of every split (train augmented, others not)."""
    return {
        tuple(split[i][0].shape)
        for split in (splits.train, splits.val, splits.test, splits.calibration)
        for i in range(min(3, len(split)))  # type: ignore[arg-type]
    }


def test_own_size_is_read_from_the_images(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "pets", per_class=10, sizes=[(24, 24)])
    splits = data.create(f"imagefolder:{folder}")
    assert splits.input_shape == (3, 24, 24)
    assert shapes(splits) == {(3, 24, 24)}
    image = splits.val[0][0]
    assert image.dtype == torch.float32 and -3 < float(image.mean()) < 3  # normalised


def test_non_square_own_size_is_kept_as_height_by_width(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "pets", per_class=10, sizes=[(20, 12)])
    splits = data.create(f"imagefolder:{folder}")
    assert splits.input_shape == (3, 12, 20)
    assert shapes(splits) == {(3, 12, 20)}


def test_small_images_are_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each epoch re-reading every PNG is what made small datasets train slowly."""
    folder = write_images(tmp_path / "pets", per_class=4, sizes=[(16, 16)])
    splits = data.create(f"imagefolder:{folder}")
    source = splits.train.base  # type: ignore[attr-defined]
    assert isinstance(source, PreparedImages)
    reads: list[str] = []
    loader = source.folder.loader
    monkeypatch.setattr(source.folder, "loader", lambda p: reads.append(p) or loader(p))
    for _ in range(3):  # three epochs
        for i in range(len(splits.train)):
            splits.train[i]
    assert len(reads) == len(splits.train) == len(set(reads))


def test_mixed_sizes_without_image_size_are_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_images(tmp_path / "pets", per_class=4, sizes=[(32, 32), (28, 30)])
    code = main(["inspect", "--dataset", f"imagefolder:{folder}", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1, err
    assert str(folder) in err and "--image-size N" in err
    assert "32x32" in err and "28x30" in err  # the two example files' sizes (width x height)
    assert "cat/000.png" in err and "cat/001.png" in err


def test_image_size_resizes_every_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "pets"
    write_images(root / "train", per_class=6, sizes=[(32, 32), (28, 30)])
    write_images(root / "test", per_class=2, sizes=[(40, 20)])
    splits = data.create(f"imagefolder:{root}", image_size=16)
    assert splits.input_shape == (3, 16, 16)
    assert shapes(splits) == {(3, 16, 16)}
    assert (
        main(["inspect", "--dataset", f"imagefolder:{root}", "--image-size", "16", "--json"]) == 0
    )
    assert '"input_shape": [\n      3,\n      16,\n      16\n    ]' in capsys.readouterr().out


def test_large_images_keep_the_imagenet_recipe(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "pets", per_class=4, sizes=[(100, 90), (90, 100)])
    splits = data.create(f"imagefolder:{folder}", image_size=80)
    assert not isinstance(splits.train.base, PreparedImages)  # type: ignore[attr-defined]
    assert shapes(splits) == {(3, 80, 80)}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset", "cifar10", "--image-size", "64"], "fixed image size of 32x32"),
        (["--dataset", "mnist5k", "--image-size", "32"], "fixed image size of 28x28"),
        (["--dataset", "mnist5k", "--image-size", "0"], "--image-size 0 must be >= 1"),
        (["--image-size", "16"], "give --dataset too"),
    ],
)
def test_a_size_a_dataset_cannot_have_is_a_cli_error(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """cifar10 has no --data-root here: the size is refused before any data is looked for."""
    assert main(["inspect", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_a_fixed_size_dataset_accepts_its_own_size(mnist5k_splits: data.DataSplits) -> None:
    assert data.create("mnist5k", image_size=28).input_shape == mnist5k_splits.input_shape


@pytest.mark.slow  # a real search: make test runs it
def test_search_resume_and_replay_reuse_the_base_checkpoints_size(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    """Images of mixed sizes trained at --image-size 16: nothing later needs the flag again."""
    from autoprune import study as studies
    from autoprune.evaluate import ObjectiveConfig, load_inputs

    monkeypatch.chdir(tmp_path)
    folder = write_images(tmp_path / "pets", per_class=10, sizes=[(24, 24), (20, 18)])
    dataset = f"imagefolder:{folder}"
    base = tmp_path / "base.pt"
    train = ["train", "--dataset", dataset, "--epochs", "0.5", "--out", str(base)]
    assert main([*train, "--image-size", "16"]) == 0
    assert torch.load(base, weights_only=True)["model"]["input_shape"] == [3, 16, 16]

    # What every trial worker does: the size comes from the base checkpoint.
    _, splits = load_inputs(ObjectiveConfig(base_checkpoint=str(base), dataset=dataset))
    assert splits.input_shape == (3, 16, 16)
    with pytest.raises(UserError, match=r"--image-size 24 differs from the 16x16 images"):
        load_inputs(ObjectiveConfig(base_checkpoint=str(base), dataset=dataset, image_size=24))

    db = f"sqlite:///{tmp_path / 's.db'}"
    search = [
        "search", "--base-checkpoint", str(base), "--dataset", dataset, "--space", FAST_SPACE,
        "--trials", "1", "--executor", "local", "--screen", "1", "--baselines", "none",
        "--storage", db, "--study", "t", "--quiet",
    ]  # fmt: skip
    assert main(search) == 0
    config = studies.load_config(studies.open_storage(db), "t")
    assert config.image_size == 16
    assert (
        main(["resume", "t", "--storage", db, "--trials", "2", "--executor", "local", "--quiet"])
        == 0
    )
    trials = optuna.load_study(study_name="t", storage=db).get_trials()
    assert sum(t.state is optuna.trial.TrialState.COMPLETE for t in trials) == 2
    capsys.readouterr()
    out = tmp_path / "pruned.pt"
    assert (
        main(["replay", "--study", "t", "--storage", db, "--epochs", "0", "--out", str(out)]) == 0
    )
    assert out.is_file()
    assert main(["replay", "--study", "t", "--storage", db, "--image-size", "24"]) == 2
    assert "differs from the 16x16 images" in capsys.readouterr().err
