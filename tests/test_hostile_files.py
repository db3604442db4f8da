"""Hostile and broken files are refused with one line of ours, exit status 2 and no traceback.

A checkpoint or YAML file a user downloads may carry pickled code, be cut short, or have been
edited. The CLI must refuse each one on a single line that names the file, says what is wrong
and how to get a good one, and must never pass on a library's advice to load unsafely (torch's
own message suggests ``weights_only=False``, which would run the file's code).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from autoprune.base import save_base
from autoprune.checkpoint import save_checkpoint
from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.files import atomic_write, read_torch_file, write_text
from autoprune.modelspec import ModelSpec
from autoprune.policy import Policy
from autoprune.space import SearchSpace

SPEC = ModelSpec("resnet20", 10, (1, 28, 28))
# Library text that must never reach a user: torch's advice to load unsafely, its request to
# file an issue upstream, and anything of a traceback.
FORBIDDEN = (
    "weights_only",
    "arbitrary code",
    "traceback",
    "file an issue",
    "github.com/pytorch",
    "pytorch.org",
    "add_safe_globals",
)


class RunsCommand:
    """Pickles as a call of ``os.system``: loading it unsafely would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid (untrained) ResNet-20 base checkpoint: the files below are made from it."""
    path = tmp_path_factory.mktemp("hostile") / "base.pt"
    torch.manual_seed(0)
    save_base(path, SPEC.build(), SPEC, {"name": "mnist5k", "seed": 0}, {})
    return path


def refused(argv: list[str], path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, assert it refused ``path`` on one clean line, and return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"autoprune {argv[0]}: error: "), line
    assert str(path) in line
    for text in FORBIDDEN:
        assert text not in line.lower(), line
    return line


def base_payload(base_file: Path) -> dict[str, Any]:
    payload = torch.load(base_file, map_location="cpu", weights_only=True)
    assert isinstance(payload, dict)
    return payload


# --------------------------------------------------------------------------- pickled code


@pytest.mark.parametrize("verb", ["inspect", "onnx"])
def test_a_checkpoint_of_a_pickled_module_is_refused(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.pt"
    torch.save(SPEC.build(), path)  # the whole nn.Module, not a state_dict
    argv = ["inspect", "--base-checkpoint", str(path)] if verb == "inspect" else ["onnx", str(path)]
    line = refused(argv, path, capsys)
    assert "holds pickled Python objects" in line
    assert "can run code" in line
    assert "autoprune train" in line  # how to get a file autoprune accepts


def test_a_checkpoint_whose_pickle_would_run_a_command_is_refused_without_running_it(
    base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "base.pt"
    torch.save({**base_payload(base_file), "note": RunsCommand(marker)}, path)
    line = refused(["inspect", "--base-checkpoint", str(path)], path, capsys)
    assert "holds pickled Python objects (posix.system)" in line or "(os.system)" in line
    assert not marker.exists()


@pytest.mark.parametrize("verb", ["inspect", "onnx"])
def test_a_plain_pickle_that_would_run_a_command_is_refused_without_running_it(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "base.pt"
    path.write_bytes(pickle.dumps(RunsCommand(marker), protocol=4))  # not torch.save at all
    argv = ["inspect", "--base-checkpoint", str(path)] if verb == "inspect" else ["onnx", str(path)]
    assert "holds pickled Python objects" in refused(argv, path, capsys)
    assert not marker.exists()


@pytest.mark.slow  # fresh interpreter: make test runs it
def test_torch_warnings_do_not_reach_stderr(tmp_path: Path) -> None:
    """In a fresh interpreter, as a user runs it: torch warns on pickle protocol 4 and asks
    to file an issue; stderr must hold our one line and nothing else."""
    marker = tmp_path / "pwned"
    path = tmp_path / "base.pt"
    path.write_bytes(pickle.dumps(RunsCommand(marker), protocol=4))
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", "inspect", "--base-checkpoint", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith(f"autoprune inspect: error: base checkpoint {path} holds")
    assert "file an issue" not in proc.stderr
    assert not marker.exists()


def test_the_refused_global_is_named_but_torch_advice_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "conv.pt"
    torch.save(torch.nn.Conv2d(1, 1, 1), path)
    with pytest.raises(UserError) as caught:
        read_torch_file(path, "checkpoint", "give a file written by `autoprune replay`")
    message = str(caught.value)
    assert "(torch.nn.modules.conv.Conv2d)" in message
    assert "\n" not in message
    # torch's own text stays chained for debugging, and only there.
    assert "weights_only" in str(caught.value.__cause__)


# --------------------------------------------------------------------------- damaged files

_rng = random.Random(2024)
CUT_AT = [0.0, *sorted(_rng.random() for _ in range(5))]


@pytest.mark.parametrize("fraction", CUT_AT, ids=[f"cut-at-{f:.3f}" for f in CUT_AT])
def test_a_truncated_base_checkpoint_is_refused(
    fraction: float, base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base_file.read_bytes()
    path = tmp_path / "base.pt"
    path.write_bytes(data[: int(fraction * len(data))])
    line = refused(["inspect", "--base-checkpoint", str(path)], path, capsys)
    assert "truncated or damaged" in line
    assert "re-download or re-create it" in line


@pytest.mark.parametrize("size", [1, 2, 29448])
def test_a_base_checkpoint_cut_at_awkward_sizes_is_refused(
    size: int, base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zip magic cut short, and an offset where torch raises a bare OSError (Errno 22)."""
    path = tmp_path / "base.pt"
    path.write_bytes(base_file.read_bytes()[:size])
    line = refused(["onnx", str(path)], path, capsys)
    assert "truncated or damaged" in line


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"model: resnet20\ngroups: {}\n", "is not a torch checkpoint (it holds text"),
        (bytes(range(256)), "is not a torch checkpoint (unknown format)"),
    ],
    ids=["yaml", "binary"],
)
def test_a_file_that_is_not_a_torch_file_is_refused(
    content: bytes, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "base.pt"
    path.write_bytes(content)
    assert needle in refused(["inspect", "--base-checkpoint", str(path)], path, capsys)


@pytest.mark.parametrize("verb", ["inspect", "onnx"])
def test_a_base_checkpoint_with_a_wrong_sha256_is_refused(
    verb: str, base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = base_payload(base_file)
    state_dict = dict(payload["state_dict"])
    state_dict["conv1.weight"] = state_dict["conv1.weight"] + 1.0  # edited after it was saved
    path = tmp_path / "base.pt"
    torch.save({**payload, "state_dict": state_dict}, path)
    argv = ["inspect", "--base-checkpoint", str(path)] if verb == "inspect" else ["onnx", str(path)]
    line = refused(argv, path, capsys)
    assert "weights do not match the sha256 recorded in it" in line
    assert "modified or damaged" in line


def test_a_pruned_checkpoint_with_a_wrong_sha256_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = SPEC.build()
    good = save_checkpoint(
        tmp_path / "pruned.pt", model, [], Policy(model=SPEC, groups={}), {}, None
    )
    payload = torch.load(good, map_location="cpu", weights_only=True)
    assert isinstance(payload["sha256"], str)
    state_dict = dict(payload["state_dict"])
    state_dict["fc.bias"] = torch.zeros_like(state_dict["fc.bias"]) + 3.0
    path = tmp_path / "edited.pt"
    torch.save({**payload, "state_dict": state_dict}, path)
    line = refused(["onnx", str(path)], path, capsys)
    assert "weights do not match the sha256 recorded in it" in line


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    ("tag", "needle"),
    [
        ('!!python/object/apply:os.system ["touch {marker}"]', "!!python/object/apply:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
    ],
    ids=["object-apply", "name"],
)
def test_a_policy_with_a_python_tag_is_refused(
    tag: str,
    needle: str,
    base_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "policy.yaml"
    Policy(model=SPEC, groups={}).save(path)
    path.write_text(path.read_text() + f"seed: {tag.format(marker=marker)}\n")
    line = refused(["replay", str(path), "--base-checkpoint", str(base_file)], path, capsys)
    assert f"the YAML tag {needle} would construct a Python object" in line
    assert "policies are plain data: remove the tag" in line
    assert not marker.exists()


def test_a_policy_that_is_not_text_is_refused(
    base_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(base_file.read_bytes()[:4096])  # a checkpoint given where a policy goes
    assert "is not a text file" in refused(["replay", str(path)], path, capsys)


def test_a_search_space_with_a_python_tag_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text('rate: !!python/object/apply:os.system ["true"]\n')
    with pytest.raises(UserError) as caught:
        SearchSpace.load(str(path))
    message = str(caught.value)
    assert message.startswith(f"search space {path} line 1, column 7: the YAML tag ")
    assert "search spaces are plain data: remove the tag" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_the_old_file_and_no_temporary_when_the_block_raises(
    tmp_path: Path,
) -> None:
    target = tmp_path / "front.yaml"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("the writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["front.yaml"]


WRITE_SIZE = 1 << 20  # large enough that a non-atomic write would be seen half done


def _write_many(path: str, letter: str, times: int) -> None:
    for _ in range(times):
        write_text(path, letter * WRITE_SIZE)


def test_two_processes_writing_one_path_never_leave_a_half_file(tmp_path: Path) -> None:
    target = tmp_path / "policy.yaml"
    write_text(target, "a" * WRITE_SIZE)
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_write_many, args=(str(target), c, 40)) for c in "ab"]
    for writer in writers:
        writer.start()
    while any(w.is_alive() for w in writers):
        text = target.read_text()
        assert len(text) == WRITE_SIZE and text in ("a" * WRITE_SIZE, "b" * WRITE_SIZE)
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert target.read_text() in ("a" * WRITE_SIZE, "b" * WRITE_SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]  # no temporary left behind
