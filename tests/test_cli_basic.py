"""The CLI as a user runs it: ``python -m autoprune VERB`` in a fresh interpreter.

Registries are listed, mistakes exit with status 2 and one line instead of a traceback, and
``autoprune train`` writes a base checkpoint that a fresh process can load with
``torch.load(weights_only=True)`` and that reproduces its stored validation accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoprune import data, models

RunCli = Callable[..., subprocess.CompletedProcess[str]]
RunPython = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def autoprune_cli(tmp_path: Path) -> RunCli:
    """Run ``python -m autoprune ARGS`` in ``tmp_path`` with this test's environment."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "autoprune", *args],
            cwd=tmp_path,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def test_help_lists_the_verbs(autoprune_cli: RunCli) -> None:
    proc = autoprune_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for verb in ("models", "datasets", "train", "search", "replay"):
        assert verb in proc.stdout
    no_verb = autoprune_cli()
    assert no_verb.returncode == 0 and "usage: autoprune" in no_verb.stdout


@pytest.mark.parametrize(("verb", "registry"), [("models", models), ("datasets", data)])
def test_listing_verbs_print_their_registry(
    autoprune_cli: RunCli, verb: str, registry: Any
) -> None:
    proc = autoprune_cli(verb)
    assert proc.returncode == 0, proc.stderr
    for name, description in registry.describe():
        assert name in proc.stdout
        assert description[:30] in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--dataset", "mnist6k"], "unknown dataset 'mnist6k'"),
        (["--dataset", "cifar10"], "needs --data-root"),
        (["--epochs", "0"], "--epochs 0.0 must be > 0"),
    ],
)
def test_bad_train_input_exits_2_with_one_line(
    autoprune_cli: RunCli, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "never.pt"
    proc = autoprune_cli("train", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("autoprune train: error: ")
    assert needle in proc.stderr
    assert not out.exists()


def test_diverging_training_is_a_user_error_that_names_the_learning_rate() -> None:
    """What `autoprune train --lr 1e30` hits; as a UserError the CLI prints it and exits 2."""
    import torch

    from autoprune.errors import UserError
    from autoprune.policy import Retrain
    from autoprune.train import TrainConfig, fit

    torch.manual_seed(0)
    images, labels = torch.randn(32, 1, 28, 28), torch.arange(32) % 10
    model = models.create("resnet20", num_classes=10, in_channels=1)
    config = TrainConfig(Retrain(epochs=1, lr=1e30), batch_size=8)
    with pytest.raises(UserError, match=r"loss became (nan|inf).*learning rate 1e\+30"):
        fit(model, data.TensorSplit(images, labels), config, torch.device("cpu"))


# --------------------------------------------------------------------------- train + reload

# Run in a fresh interpreter: load a checkpoint the way a user's own code would, without
# autoprune's loader, rebuild the model from the stored spec and re-measure val accuracy.
RELOAD = """
    import json, sys
    import torch
    from autoprune import data, models
    from autoprune.base import load_base, state_dict_sha256
    from autoprune.train import evaluate

    payload = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    spec = payload["model"]
    model = models.create(spec["name"], num_classes=spec["num_classes"],
                          in_channels=spec["input_shape"][0])
    model.load_state_dict(payload["state_dict"])
    splits = data.create(payload["dataset"]["name"], seed=payload["dataset"]["seed"])
    result = evaluate(model, splits.val, torch.device("cpu"))
    print(json.dumps({
        "format": payload["format"],
        "spec": spec,
        "metrics": payload["metrics"],
        "sha_ok": state_dict_sha256(payload["state_dict"]) == payload["sha256"],
        "load_base_sha": load_base(sys.argv[1]).sha256 == payload["sha256"],
        "val_accuracy": result.accuracy,
        "val_samples": result.samples,
    }))
"""


def reload_in_fresh_process(run_python: RunPython, checkpoint: Path) -> dict:
    proc = run_python(RELOAD, str(checkpoint))
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_train_writes_a_checkpoint_that_reloads_in_a_fresh_process(
    autoprune_cli: RunCli, run_python: RunPython, tmp_path: Path
) -> None:
    out = tmp_path / "ckpt" / "r20.pt"
    # 0.04 epochs of 64 images = 3 SGD steps: quick, but too few for BatchNorm statistics to
    # settle, so this model's val accuracy is near chance; trained_base below checks that a
    # model that really learned reproduces its accuracy.
    proc = autoprune_cli(
        "train", "--model", "resnet20", "--dataset", "mnist5k", "--epochs", "0.04",
        "--batch-size", "64", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert "val acc" in proc.stdout and str(out) in proc.stdout

    reloaded = reload_in_fresh_process(run_python, out)
    assert reloaded["format"] == "autoprune.base/1"
    assert reloaded["spec"] == {"name": "resnet20", "num_classes": 10, "input_shape": [1, 28, 28]}
    assert reloaded["sha_ok"] and reloaded["load_base_sha"]
    metrics = reloaded["metrics"]
    assert {"val_accuracy", "test_accuracy", "macs", "params"} <= set(metrics)
    assert metrics["macs"] > 0 and metrics["params"] > 0
    assert reloaded["val_samples"] == 500
    assert reloaded["val_accuracy"] == metrics["val_accuracy"]


@pytest.mark.slow  # the session's trained_base fixture trains for 3 epochs on first use
def test_trained_base_reproduces_its_val_accuracy_in_a_fresh_process(
    trained_base: Path, run_python: RunPython
) -> None:
    reloaded = reload_in_fresh_process(run_python, trained_base)
    stored = reloaded["metrics"]["val_accuracy"]
    assert stored > 0.9, "three epochs on mnist5k should reach over 90% val accuracy"
    assert reloaded["val_accuracy"] == stored
    assert reloaded["sha_ok"] and reloaded["load_base_sha"]
