"""The contract every registered criterion keeps (like Optuna's shared sampler test case).

Each scoring criterion in the registry is run through the same checks: one finite score per
channel of every group, the same scores for the same seed, a dead channel (zero filter, zero
BatchNorm affine) scored lowest by every criterion that measures what a channel contributes,
and pruning by the scores through ``prune.apply`` leaves a network that still runs. The
selection rule ``auto`` is run through the parts that apply to it.

Models are randomly initialised and small inputs (16x16) keep every test fast; the large
networks (ResNet-56, VGG-16-BN, MobileNetV2) are only pruned and run forward.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import by_size

from autoprune import criteria, groups, prune
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringContext, ScoringInputs
from autoprune.data import TensorSplit
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy

SCORING = criteria.scoring_criteria()
SELECTION_RULES = sorted(set(criteria.available()) - set(SCORING))
# Criteria that rank a channel by how redundant it is among the others (or not at all), not by
# what it contributes: a dead channel need not be their lowest.
REDUNDANCY_OR_RANDOM = {"fpgm", "cos", "random"}
INPUT_SHAPE = (3, 16, 16)
NUM_CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, ModelSpec]:
    spec = ModelSpec(name, NUM_CLASSES, INPUT_SHAPE)
    torch.manual_seed(seed)
    return spec.build().eval(), spec


def calibration(images: int, seed: int = 0) -> Calibration:
    """Random images with balanced labels: enough for every criterion to run."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, *INPUT_SHAPE, generator=generator)
    y = torch.arange(images) % NUM_CLASSES
    return Calibration(TensorSplit(x, y), "random", num_images=images, batch_size=images, seed=seed)


def score_groups(
    model: torch.nn.Module, spec: ModelSpec, criterion: str, images: int = 20, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, groups.GroupView]]:
    graph = groups.build_graph(model, spec.example_inputs())
    views = {n: groups.view_of(n, g, graph) for n, g in groups.current_groups(model, graph).items()}
    policy = Policy(model=spec, groups={}, seed=seed)
    inputs = ScoringInputs(calibration=calibration(images), num_classes=NUM_CLASSES)
    ctx = ScoringContext.create(model, graph, policy, inputs)
    return ctx.scores(criterion, list(views.values())), views


def test_the_registry_holds_the_designed_criteria() -> None:
    designed = {"l1", "l2", "fpgm", "cos", "bn_scale", "lamp", "taylor", "random"}
    designed |= {"energy", "class_aware", "relevance"}
    assert designed <= set(SCORING)
    assert SELECTION_RULES == ["auto"]
    assert criteria.get("auto").is_selection_rule


@pytest.mark.parametrize("criterion", SCORING)
def test_scores_are_one_finite_value_per_channel(criterion: str) -> None:
    model, spec = build("resnet20")
    scores, views = score_groups(model, spec, criterion)
    assert set(scores) == set(views)
    for name, view in views.items():
        s = scores[name]
        assert s.shape == (view.channels,), name
        assert s.is_floating_point() and torch.isfinite(s).all(), name


@pytest.mark.parametrize("criterion", SCORING)
def test_scores_are_deterministic_for_a_seed(criterion: str) -> None:
    model, spec = build("resnet20")
    first, _ = score_groups(copy.deepcopy(model), spec, criterion)
    again, _ = score_groups(copy.deepcopy(model), spec, criterion)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    if criterion == "random":
        other, _ = score_groups(copy.deepcopy(model), spec, criterion, seed=1)
        assert any(not torch.equal(first[n], other[n]) for n in first)


def test_scores_are_the_same_in_a_fresh_process(
    run_python: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    model, spec = build("resnet20")
    here = {c: score_groups(copy.deepcopy(model), spec, c)[0] for c in SCORING}
    out = tmp_path / "scores.pt"
    run_python(
        """
        import sys, torch
        sys.path.insert(0, sys.argv[2])
        from test_criteria_contract import SCORING, build, score_groups
        torch.set_num_threads(1)
        model, spec = build("resnet20")
        torch.save({c: score_groups(model, spec, c)[0] for c in SCORING}, sys.argv[1])
        """,
        str(out),
        str(Path(__file__).parent),
    )
    there = torch.load(out, weights_only=True)
    for criterion, scores in here.items():
        for name, s in scores.items():
            assert torch.equal(s, there[criterion][name]), (criterion, name)


@pytest.mark.parametrize("criterion", sorted(set(SCORING) - REDUNDANCY_OR_RANDOM))
def test_a_dead_channel_is_scored_lowest(criterion: str) -> None:
    model, spec = build("resnet20")
    block = model.layer1[0]
    dead = block.conv1.out_channels - 1  # the last index: ties would not favour it
    with torch.no_grad():
        block.conv1.weight[dead] = 0
        block.bn1.weight[dead] = 0
        block.bn1.bias[dead] = 0
    scores, _ = score_groups(model, spec, criterion)
    s = scores["layer1.0.conv1"]
    others = torch.cat([s[:dead], s[dead + 1 :]])
    assert s[dead] < others.min(), (criterion, s)


def _policy(spec: ModelSpec, model: torch.nn.Module, criterion: str, rate: float) -> Policy:
    graph = groups.build_graph(model, spec.example_inputs())
    names = list(groups.current_groups(model, graph))
    return Policy(
        model=spec, groups={n: GroupPolicy(rate=rate, criterion=criterion) for n in names}
    )


@pytest.mark.parametrize("criterion", [*SCORING, *SELECTION_RULES])
def test_resnet20_pruned_by_the_scores_runs(criterion: str) -> None:
    model, spec = build("resnet20")
    scores = score_groups(copy.deepcopy(model), spec, criterion)[0] if criterion in SCORING else {}
    policy = _policy(spec, model, criterion, rate=0.4)
    inputs = ScoringInputs(calibration=calibration(20), num_classes=NUM_CLASSES)
    result = prune.apply(model, policy, inputs)

    out = result.model(torch.randn(3, *INPUT_SHAPE))
    assert out.shape == (3, NUM_CLASSES) and torch.isfinite(out).all()
    assert set(result.removed) == set(policy.groups)
    for name, removed in result.removed.items():
        # The channels that went are the lowest-scored ones, as many as the rate asks.
        assert len(removed) == groups.channels_to_remove(0.4, len(removed) + _kept(result, name))
        if criterion in SCORING:
            lowest = torch.argsort(scores[name], stable=True)[: len(removed)]
            assert removed == sorted(int(i) for i in lowest), name
    if criterion in SELECTION_RULES:
        pool = ["l1", "l2", "fpgm", "cos"]
        for name, group in result.policy.groups.items():
            assert group.criterion in pool and group.chosen_from == pool, name


def _kept(result: prune.PruneResult, group: str) -> int:
    """Channels the group has left after pruning (its root layer's output width)."""
    module = dict(result.model.named_modules())[group]
    return int(getattr(module, "out_channels", getattr(module, "out_features", 0)))


@pytest.mark.parametrize("model_name", by_size(["resnet56", "vgg16_bn", "mobilenetv2"]))
@pytest.mark.parametrize("criterion", [*SCORING, *SELECTION_RULES])
def test_large_networks_pruned_by_the_scores_run(criterion: str, model_name: str) -> None:
    model, spec = build(model_name)
    x = torch.randn(2, *INPUT_SHAPE)
    params_before = sum(p.numel() for p in model.parameters())
    policy = _policy(spec, model, criterion, rate=0.3)
    inputs = ScoringInputs(calibration=calibration(10), num_classes=NUM_CLASSES)
    result = prune.apply(model, policy, inputs)
    out = result.model(x)
    assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
    assert sum(p.numel() for p in result.model.parameters()) < 0.8 * params_before
