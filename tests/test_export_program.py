"""The ``.pt2`` beside a replayed checkpoint: a ``torch.export`` program that stock PyTorch
loads, in a process that cannot import autoprune, and that computes what the pruned model does
at any batch size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune import groups
from autoprune.base import save_base
from autoprune.checkpoint import load_checkpoint, replay
from autoprune.errors import UserError
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy, Retrain
from autoprune.program import export_program

SPEC = ModelSpec("resnet20", 10, (1, 28, 28))

# Run with -I (no PYTHONPATH, no user site) and autoprune blocked outright: the venv's editable
# install would otherwise still be importable.
LOADER = """
import sys
sys.modules["autoprune"] = None
try:
    import autoprune
except ImportError:
    pass
else:
    raise SystemExit("autoprune was importable")
import torch
program = torch.export.load(sys.argv[1]).module()
inputs = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save([program(x) for x in inputs], sys.argv[3])
"""


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-20 pruned by half in every group and replayed (a short fine-tune)."""
    folder = tmp_path_factory.mktemp("replayed")
    torch.manual_seed(0)
    save_base(folder / "base.pt", SPEC.build(), SPEC, {"name": "mnist5k", "seed": 0}, {})
    model = SPEC.build()
    names = groups.current_groups(model, groups.build_graph(model, SPEC.example_inputs()))
    policy = Policy(
        model=SPEC, groups={n: GroupPolicy(0.5, "l1") for n in names},
        retrain=Retrain(epochs=0.02, lr=0.02),
    )  # fmt: skip
    result = replay(
        policy, base_checkpoint=str(folder / "base.pt"), epochs=0.02, out=folder / "pruned.pt",
        device="cpu", log=lambda _: None,
    )  # fmt: skip
    assert result.program == folder / "pruned.pt2"
    return folder / "pruned.pt"


@pytest.mark.slow  # fresh interpreter: make test runs it
def test_the_program_loads_without_autoprune_and_matches_the_checkpoint(
    replayed: Path, tmp_path: Path
) -> None:
    model = load_checkpoint(replayed).model.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, 1, 28, 28, generator=generator) for b in (1, 7, 32)]
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-I", "-c", LOADER, str(replayed.with_suffix(".pt2")),
         str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
        check=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    with torch.no_grad():
        for x, got in zip(inputs, outputs, strict=True):
            assert got.shape == (x.shape[0], 10)  # the batch is dynamic
            torch.testing.assert_close(got, model(x), atol=1e-5, rtol=1e-5)


class _Branchy(nn.Module):
    """Control flow on the data: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if bool(y.sum() > 0) else -y


def test_a_model_the_exporter_cannot_trace_gets_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"torch.export cannot trace this model .*autoprune onnx"):
        export_program(_Branchy(), torch.randn(1, 1, 8, 8), tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists()
