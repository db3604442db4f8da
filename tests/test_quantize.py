"""``autoprune onnx --int8``: a pruned model quantized by ONNX Runtime, fp32 and INT8 side by
side (test accuracy, latency at batch 1 and 32), and one clear line when the data is missing."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from autoprune import groups
from autoprune.checkpoint import load_checkpoint, replay
from autoprune.cli import main
from autoprune.modelspec import ModelSpec
from autoprune.policy import BaseRef, GroupPolicy, Policy, Retrain

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

SPEC = ModelSpec("resnet20", 10, (1, 28, 28))


@pytest.fixture(scope="module")
def pruned(trained_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained mnist5k base, every group pruned by 40% and fine-tuned briefly."""
    model = SPEC.build()
    names = groups.current_groups(model, groups.build_graph(model, SPEC.example_inputs()))
    policy = Policy(
        model=SPEC, groups={n: GroupPolicy(0.4, "l1") for n in names},
        retrain=Retrain(epochs=0.2, lr=0.02),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("int8") / "pruned.pt"
    replay(
        policy, base_checkpoint=str(trained_base), epochs=0.2, out=out, device="cpu",
        export_program_file=False, log=lambda _: None,
    )  # fmt: skip
    return out


def test_int8_is_measured_beside_fp32(pruned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["onnx", str(pruned), "--int8", "--repeats", "3", "--calibration-images", "128"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in out.splitlines()]
    rows = {c[0]: c for c in cells if c and c[0] in ("fp32", "int8")}
    assert set(rows) == {"fp32", "int8"}, out
    assert rows["int8"][1] == str(pruned.with_suffix(".int8.onnx"))
    assert pruned.with_suffix(".int8.onnx").is_file()
    fp32_acc, int8_acc = (float(rows[p][3]) for p in ("fp32", "int8"))
    assert fp32_acc > 0.5, "the fine-tuned model is far above chance"
    assert int8_acc > fp32_acc - 0.06, "per-channel INT8 keeps most of a small CNN's accuracy"
    assert float(rows["int8"][2]) < float(rows["fp32"][2])  # a smaller file
    for row in rows.values():  # "median (IQR)" at batch 1 and 32
        assert all(re.fullmatch(r"[\d.]+ \([\d.]+\)", cell) for cell in row[4:6]), row
    assert "calibrated on 128 mnist5k training images" in out


def test_without_a_dataset_to_calibrate_on_it_says_what_to_pass(
    pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A pruned checkpoint on a machine without its base file: the dataset is unknown.
    base = tmp_path / "base.pt"
    shutil.copy(load_checkpoint(pruned).policy.base.checkpoint or "", base)
    policy = replace(load_checkpoint(pruned).policy, base=BaseRef(str(base)))
    alone = tmp_path / "alone.pt"
    replay(
        policy, base_checkpoint=str(base), epochs=0.0, out=alone, device="cpu",
        export_program_file=False, log=lambda _: None,
    )  # fmt: skip
    base.unlink()
    capsys.readouterr()
    assert main(["onnx", str(alone), "--int8", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "records no dataset" in err and "--dataset NAME" in err and "Traceback" not in err
    assert not alone.with_suffix(".int8.onnx").exists()
