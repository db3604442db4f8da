"""ONNX deployment check: pruned checkpoints export, match PyTorch under ONNX Runtime, and fail clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune import groups, prune
from autoprune.checkpoint import save_checkpoint
from autoprune.cli import main
from autoprune.errors import UserError
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from autoprune.deploy import check_onnx, export_onnx  # noqa: E402


def _pruned(name: str, input_shape: tuple[int, int, int], drop: list[str] | None = None) -> Policy:
    """Half of every group's channels, after dropping ``drop`` blocks (whose groups go with them)."""
    from dataclasses import replace

    spec = ModelSpec(name, 10, input_shape)
    model = spec.build().eval()
    names = groups.current_groups(model, groups.build_graph(model, spec.example_inputs()))
    gone = tuple(f"{block}." for block in drop or [])
    policy = Policy(
        model=spec, groups={n: GroupPolicy(rate=0.5) for n in names if not n.startswith(gone)}
    )
    return replace(policy, depth=replace(policy.depth, drop_blocks=list(drop or [])))


def _conv_weight_shapes(path: Path) -> list[tuple[int, ...]]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    return [
        inits[node.input[1]]
        for node in graph.node
        if node.op_type == "Conv" and node.input[1] in inits
    ]


@pytest.mark.slow  # an ONNX export and an ONNX Runtime session per model: make test runs it
@pytest.mark.parametrize(
    ("name", "shape", "drop"),
    [
        ("resnet20", (1, 28, 28), ["layer2.2"]),  # channel pruning after a block removal
        ("mobilenetv2", (3, 32, 32), None),  # depthwise convolutions
    ],
)
def test_pruned_checkpoint_exports_and_matches_pytorch(
    tmp_path: Path, name: str, shape: tuple[int, int, int], drop: list[str] | None
) -> None:
    torch.manual_seed(0)
    policy = _pruned(name, shape, drop)
    model = policy.model.build().eval()
    result = prune.apply(model, policy)
    ckpt = save_checkpoint(tmp_path / "p.pt", result.model, result.history, result.policy, {}, None)

    from autoprune.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt).model
    report = check_onnx(
        loaded, policy.model.example_inputs(), tmp_path / "p.onnx", batch=5, repeats=2
    )
    assert report.matches and report.top1_agreement == 1.0
    assert report.max_abs_diff < 1e-4 and report.size_bytes > 0
    # The ONNX graph carries the pruned widths, not the base model's.
    expected = [tuple(m.weight.shape) for m in loaded.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(_conv_weight_shapes(report.path)) == sorted(expected)
    # The batch dimension is dynamic.
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *shape)
    out = session.run(["logits"], {"input": x.numpy()})[0]
    assert out.shape == (3, 10)
    assert torch.allclose(torch.from_numpy(out), loaded(x).detach(), atol=1e-4)


def test_cli_checks_a_base_checkpoint_and_reports_figures(
    trained_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "base.onnx"
    assert main(["onnx", str(trained_base), "--out", str(out), "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "ONNX check of the base model" in printed
    assert "onnxruntime ms" in printed and "31.48M" in printed  # resnet20 on 28x28: 31.48M MACs


def test_cli_refuses_to_bless_a_mismatching_export(
    trained_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import autoprune.deploy as deploy

    out = tmp_path / "m.onnx"
    out.write_bytes(b"a previously checked export")
    monkeypatch.setattr(deploy, "ABS_TOLERANCE", -1.0)  # nothing can match
    assert main(["onnx", str(trained_base), "--out", str(out), "--repeats", "1"]) == 1
    assert f"nothing written to {out}" in capsys.readouterr().err
    # The rejected export is neither shipped nor left lying around; the old file is untouched.
    assert out.read_bytes() == b"a previously checked export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.pt"], "does not exist"),
        (["--batch", "0", "x.pt"], "--batch 0 must be >= 1"),
        (["--threads", "0", "x.pt"], "--threads 0 must be >= 1"),
        (["x.pt", "--out", "x.pt"], "is the checkpoint itself"),
    ],
)
def test_cli_bad_input_exits_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["onnx", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_file_that_is_not_a_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, path)
    assert main(["onnx", str(path)]) == 2
    path.write_text("not torch")
    assert main(["onnx", str(path)]) == 2


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on values: torch.export cannot trace it
            return x.flatten(1)
        return -x.flatten(1)


def test_an_unexportable_model_is_a_user_error(tmp_path: Path) -> None:
    model = _DataDependent().train()
    with pytest.raises(UserError, match="cannot export this model"):
        export_onnx(model, torch.randn(1, 1, 2, 2), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == [], "no partial file is left behind"
    assert model.training, "the caller's model keeps its mode"


def test_a_file_rejected_by_onnx_runtime_is_a_check_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoprune.deploy import OnnxCheckError

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no provider for this graph")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with pytest.raises(OnnxCheckError, match="ONNX Runtime cannot load"):
        check_onnx(nn.Flatten(), torch.randn(1, 1, 2, 2), tmp_path / "m.onnx", repeats=1)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_extra_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'autoprune\[onnx\]'"):
        export_onnx(nn.Flatten(), torch.randn(1, 1, 2, 2), tmp_path / "m.onnx")
