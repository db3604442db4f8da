"""timm models by name (``timm:NAME``): built without weights, pruned, searched and replayed like ours.

The residual model is ``timm:resnet18``; the depthwise one is ``timm:mobilenetv3_small_050``,
whose inverted residuals hold the parts torch-pruning must couple: a depthwise convolution
(its input and output channels are one) and a squeeze-and-excitation module (its gate scales
the depthwise output channel by channel). Inputs are the bundled MNIST-5k's 1 x 28 x 28 digits;
both models downsample by 32 and pool globally, so their last stages run at 1 x 1.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from autoprune import criteria, depth, groups, models, prune
from autoprune.checkpoint import load_checkpoint
from autoprune.cli import main
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringContext, ScoringInputs
from autoprune.data import TensorSplit
from autoprune.errors import UserError
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed"),
    pytest.mark.usefixtures("one_thread"),
]

RESIDUAL = "timm:resnet18"
DEPTHWISE = "timm:mobilenetv3_small_050"
MNIST_SHAPE = (1, 28, 28)


def build(name: str, seed: int = 0) -> tuple[nn.Module, ModelSpec]:
    """A randomly initialised model whose BatchNorms look trained (no zero-initialised scales).

    timm zero-initialises the last BatchNorm scale of its residual branches, which leaves a
    fresh model's data-driven scores of those branches all alike.
    """
    spec = ModelSpec(name, 10, MNIST_SHAPE)
    torch.manual_seed(seed)
    model = spec.build().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, groups.BATCH_NORMS):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model, spec


def scoring_inputs(images: int = 20) -> ScoringInputs:
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(images, *MNIST_SHAPE, generator=g), torch.arange(images) % 10)
    calibration = Calibration(split, "random", num_images=images, batch_size=images, seed=0)
    return ScoringInputs(calibration=calibration, num_classes=10)


def views_of(model: nn.Module, spec: ModelSpec) -> tuple[object, list[groups.GroupView]]:
    graph = groups.build_graph(model, spec.example_inputs())
    return graph, groups.current_views(model, graph)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
    )


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", [RESIDUAL, DEPTHWISE])
def test_timm_models_build_for_one_channel_digits(name: str) -> None:
    model = models.create(name, num_classes=10, in_channels=1).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    out = model(torch.randn(2, *MNIST_SHAPE))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_a_misspelt_timm_name_is_answered_with_close_matches() -> None:
    with pytest.raises(UserError, match="timm:mobilenetv3_small_050"):
        models.create("timm:mobilenetv3_smal_050", num_classes=10)
    with pytest.raises(UserError, match="timm:resnet18"):
        models.check_name("timm:resnet19")
    # A pretrained tag names weights autoprune never loads: the bare architecture is suggested.
    with pytest.raises(UserError, match="use 'timm:resnet18'"):
        models.check_name("timm:resnet18.a1_in1k")


def test_a_bad_timm_name_on_the_command_line_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["inspect", "--model", "timm:resnet19"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown timm model 'timm:resnet19'" in err


def test_without_timm_a_timm_name_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'autoprune\[timm\]'"):
        models.check_name("timm:resnet18")


def test_the_models_listing_mentions_timm_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "timm:NAME" in capsys.readouterr().out


def test_a_timm_model_spec_round_trips_and_rebuilds_the_same_architecture() -> None:
    spec = ModelSpec(DEPTHWISE, 10, MNIST_SHAPE)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    shapes = {k: v.shape for k, v in spec.build().state_dict().items()}
    assert {k: v.shape for k, v in again.build().state_dict().items()} == shapes


# --------------------------------------------------------------------------- groups and depth


def test_depthwise_convs_are_pruned_with_their_producer_and_se_gate() -> None:
    model, spec = build(DEPTHWISE)
    _, views = views_of(model, spec)
    names = dict(model.named_modules())
    depthwise = [n for n, m in names.items() if is_depthwise(m)]
    assert depthwise
    for dw in depthwise:
        view = next(v for v in views if dw in {m.name for m in v.out_layers()})
        outs = {m.name for m in view.out_layers()}
        # The layer that writes the depthwise conv's input loses the same channels: the
        # expansion of an inverted residual; the stem for the first (depthwise-separable) block.
        block = dw.rpartition(".")[0]
        inverted = type(names[block]).__name__ == "InvertedResidual"
        producer = f"{block}.conv_pw" if inverted else "conv_stem"
        assert producer in outs, (dw, outs)
        if f"{block}.se.conv_expand" in names:  # the SE gate multiplies the same channels
            assert f"{block}.se.conv_expand" in outs, (dw, outs)
    # Pruning every group keeps each depthwise conv's input and output widths equal.
    rate = 0.4
    policy = Policy(
        model=spec, groups={v.name: GroupPolicy(rate=rate, criterion="l1") for v in views}
    )
    result = prune.apply(model, policy)
    for dw in depthwise:
        conv = result.model.get_submodule(dw)
        assert conv.groups == conv.in_channels == conv.out_channels
    assert result.model(torch.randn(2, *MNIST_SHAPE)).shape == (2, 10)


@pytest.mark.slow  # every criterion on a timm model: make test runs it
def test_every_criterion_prunes_the_depthwise_model() -> None:
    model, spec = build(DEPTHWISE)
    graph, views = views_of(model, spec)
    inputs = scoring_inputs()
    for criterion in criteria.scoring_criteria():
        ctx = ScoringContext.create(model, graph, Policy(model=spec, groups={}), inputs)
        scores = ctx.scores(criterion, views)
        for view in views:
            s = scores[view.name]
            assert s.shape == (view.channels,) and torch.isfinite(s).all(), (criterion, view.name)
    for criterion in [*criteria.scoring_criteria(), "auto"]:
        pruned = copy.deepcopy(model)
        policy = Policy(
            model=spec, groups={v.name: GroupPolicy(rate=0.3, criterion=criterion) for v in views}
        )
        out = prune.apply(pruned, policy, inputs).model(torch.randn(2, *MNIST_SHAPE))
        assert out.shape == (2, 10) and torch.isfinite(out).all(), criterion


def test_relevance_reaches_the_linear_bottlenecks_of_timm_blocks() -> None:
    """timm's BatchNormAct2d (norm and activation in one module) must not hide channels from LRP."""
    model, spec = build(DEPTHWISE)
    graph, views = views_of(model, spec)
    ctx = ScoringContext.create(model, graph, Policy(model=spec, groups={}), scoring_inputs())
    scores = ctx.scores("relevance", views)
    bottlenecks = [v.name for v in views if v.name.endswith("conv_pwl")]
    assert bottlenecks
    silent = [name for name, s in scores.items() if not (s.abs() > 0).any()]
    assert not silent, f"groups without any relevance: {silent}"


def test_residual_blocks_of_timm_models_are_found_and_removable() -> None:
    x = torch.zeros(1, *MNIST_SHAPE)
    resnet = models.create(RESIDUAL, num_classes=10, in_channels=1).eval()
    # Blocks with a downsample branch change shape and stay.
    expected = ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert depth.removable_blocks(resnet, x) == expected
    mobilenet = models.create(DEPTHWISE, num_classes=10, in_channels=1).eval()
    removable = depth.removable_blocks(mobilenet, x)
    assert removable and all(mobilenet.get_submodule(n).has_skip for n in removable)
    for model, names in ((resnet, expected), (mobilenet, removable)):
        depth.drop_blocks(model, names, x)
        assert model(x).shape == (1, 10)


def test_a_timm_model_without_skip_connections_has_no_removable_blocks() -> None:
    model = models.create("timm:lcnet_050", num_classes=10, in_channels=1).eval()
    x = torch.randn(12, *MNIST_SHAPE)
    assert depth.residual_blocks(model) and depth.removable_blocks(model, x[:1]) == []
    rows = depth.block_scores(model, [(x, torch.arange(12) % 10)], num_classes=10)
    assert rows and not any(r.removable for r in rows)
    with pytest.raises(UserError, match="not a removable block"):
        depth.drop_blocks(model, [rows[0].name], x[:1])


# --------------------------------------------------------------------------- end to end

SPACE = """\
schema: autoprune.space/1
granularity: group
rate: {low: 0.0, high: 0.8}
max_rate: 0.85
criteria: [l1, fpgm, taylor, energy, relevance, class_aware]
criterion_per: group
target_macs_ratio: {low: 0.5}
retrain: {epochs: [0.02], lr: {low: 0.02, high: 0.1, log: true}, regularizer: [none]}
iterative_steps: [1]
class_threshold: null
depth: {max_blocks_per_stage: 1}
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", [RESIDUAL, DEPTHWISE])
def test_train_search_export_and_replay_a_timm_model(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.pt"
    train = ["train", "--model", name, "--dataset", "mnist5k", "--epochs", "0.2", "--lr", "0.05"]
    assert main([*train, "--threads", "1", "--out", str(base)]) == 0
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    search = [
        "search", "--model", name, "--dataset", "mnist5k", "--base-checkpoint", str(base),
        "--budget-flops", "0.5", "--space", str(space), "--trials", "2", "--executor", "local",
        "--screen", "1", "--baselines", "none", "--cpus-per-trial", "1",
        "--calibration-images", "32", "--storage", storage, "--study", "t", "--quiet",
    ]  # fmt: skip
    assert main(search) == 0

    trials = optuna.load_study(study_name="t", storage=storage).get_trials()
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 2
    module_names = set(dict(ModelSpec(name, 10, MNIST_SHAPE).build().named_modules()))
    for t in complete:
        assert abs(t.values[1] - 0.5) <= 0.01, t.values
        policy = Policy.from_dict(t.user_attrs["policy"])
        assert policy.model.name == name
        assert policy.groups and set(policy.groups) <= module_names
        assert set(policy.depth.drop_blocks) <= module_names

    capsys.readouterr()
    assert main(["export", "t", "--storage", storage, "--out", str(tmp_path / "front")]) == 0
    exported = sorted((tmp_path / "front").glob("trial-*.yaml"))
    assert exported and Policy.load(exported[0]).model.name == name

    out = tmp_path / "winner.pt"
    replay = ["replay", "--study", "t", "--storage", storage, "--epochs", "0", "--out", str(out)]
    assert main([*replay, "--threads", "1"]) == 0
    assert "removed exactly the trial's channels" in capsys.readouterr().out
    replayed = load_checkpoint(out)  # rebuilt from the timm name and the pruning history
    trial_policies = [Policy.from_dict(t.user_attrs["policy"]) for t in complete]
    winner = next(p for p in trial_policies if p.removed_sha256 == replayed.policy.removed_sha256)
    assert abs(replayed.metrics["macs_ratio"] - winner.measured["macs_ratio"]) <= 0.005
    logits = replayed.model(torch.randn(2, *MNIST_SHAPE))
    assert logits.shape == (2, 10)

    if name != DEPTHWISE or importlib.util.find_spec("onnxruntime") is None:
        return  # ONNX export costs ~10 s: checked on the model with SE gates and depthwise convs
    # Exit 0: ONNX Runtime agrees with PyTorch on the pruned timm model.
    onnx = ["onnx", str(out), "--batch", "2", "--repeats", "1", "--threads", "1"]
    assert main(onnx) == 0
    assert "onnxruntime ms" in capsys.readouterr().out


# A small vision transformer: timm's ``Attention`` is a module torch-pruning counts with a hook
# of its own, registered only when torch-pruning finds timm (``autoprune.tplib``).
VIT = "timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, num_classes=10)"


def test_the_package_counts_macs_without_importing_timm(
    run_python: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """The engine (driver, Ray worker, CLI) loads no timm: 2.7 s of each process's start."""
    run_python(
        """
        import sys
        import torch
        from autoprune import evaluate, macs, models
        assert "timm" not in sys.modules, "timm was imported"
        model = models.create("resnet20", num_classes=10, in_channels=1)
        assert macs.count_macs_params(model, torch.zeros(1, 1, 28, 28))[0] > 0
        assert "timm" not in sys.modules, "timm was imported by counting"
        import timm  # and timm still imports afterwards
        """
    )


def test_a_vision_transformers_macs_are_torch_prunings_whichever_is_imported_first(
    run_python: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    stock = run_python(  # torch-pruning as its users import it: timm first, hooks at import
        f"""
        import timm, torch, torch_pruning as tp
        torch.manual_seed(0)
        print(tp.utils.count_ops_and_params({VIT}, torch.zeros(1, 3, 32, 32))[0])
        """
    )
    ours = run_python(  # autoprune first (timm hidden from torch-pruning), then a timm model
        f"""
        import torch
        from autoprune import macs, tplib
        assert not tplib.tp.utils.op_counter.has_timm
        import timm
        torch.manual_seed(0)
        model, x = {VIT}, torch.zeros(1, 3, 32, 32)
        unhooked = tplib.tp.utils.count_ops_and_params(model, x)[0]
        print(macs.count_macs_params(model, x)[0], unhooked)
        """
    )
    counted, unhooked = (float(v) for v in ours.stdout.split())
    assert counted == float(stock.stdout)
    assert unhooked < counted, "the attention hook adds MACs: without it the count is short"
