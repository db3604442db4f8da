"""Depth pruning (PLS-VIP block scores, block removal) and the class-importance threshold."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import PLSRegression
from torch import nn

from autoprune import depth, groups, prune
from autoprune.criteria.calibration import Calibration
from autoprune.criteria.context import ScoringContext, ScoringInputs
from autoprune.errors import UserError
from autoprune.macs import count_macs_params
from autoprune.modelspec import ModelSpec
from autoprune.policy import ClassAware, Depth, GroupPolicy, Policy


@cache
def resnet56_scores() -> tuple[nn.Module, list[depth.BlockScore]]:
    torch.manual_seed(0)
    model = ModelSpec("resnet56", 10, (3, 32, 32)).build().eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(96, 3, 32, 32, generator=gen)
    labels = torch.arange(96) % 10
    return model, depth.block_scores(
        model, [(images[:48], labels[:48]), (images[48:], labels[48:])], num_classes=10
    )


def test_every_residual_block_is_scored_and_only_identity_blocks_are_removable() -> None:
    _, rows = resnet56_scores()
    assert len(rows) == 27  # 3 stages x 9 blocks
    not_removable = {r.name for r in rows if not r.removable}
    assert not_removable == {"layer2.0", "layer3.0"}  # stride 2 and width change
    assert all(np.isfinite(r.score) and r.score >= 0 for r in rows)
    # The stem and the classifier are outside the blocks; the blocks hold almost all MACs.
    assert 0.95 < sum(r.macs_share for r in rows) < 1.0


def test_dropping_the_lowest_scored_identity_blocks_saves_their_mac_share() -> None:
    model, rows = resnet56_scores()
    lowest = sorted((r for r in rows if r.removable), key=lambda r: r.score)[:4]
    inputs = torch.zeros(2, 3, 32, 32)
    base_macs = count_macs_params(model, inputs)[0]
    pruned = depth.drop_blocks(copy.deepcopy(model), [r.name for r in lowest], inputs)
    macs = count_macs_params(pruned, inputs)[0]
    assert 1 - macs / base_macs == pytest.approx(sum(r.macs_share for r in lowest), rel=1e-6)
    out = pruned(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)


@pytest.mark.parametrize("block", ["layer2.0", "layer3.0"])
def test_a_block_that_changes_shape_is_never_removed(block: str) -> None:
    model, _ = resnet56_scores()
    with pytest.raises(UserError, match="not a removable block"):
        depth.drop_blocks(copy.deepcopy(model), [block], torch.zeros(1, 3, 32, 32))


def test_an_unknown_block_name_is_a_user_error() -> None:
    model, _ = resnet56_scores()
    with pytest.raises(UserError, match="not a module"):
        depth.drop_blocks(copy.deepcopy(model), ["layer9.1"], torch.zeros(1, 3, 32, 32))


def test_vip_ranks_the_informative_feature_first() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    onehot = np.eye(3)[labels]
    x = rng.normal(size=(300, 6))
    x[:, 2] += 3.0 * labels  # only feature 2 carries the class
    vip = depth.vip_scores(PLSRegression(n_components=2).fit(x, onehot))
    assert int(np.argmax(vip)) == 2
    assert float((vip**2).mean()) == pytest.approx(1.0, rel=1e-6)  # VIP's normalisation


def test_block_scoring_needs_enough_images() -> None:
    model = ModelSpec("resnet20", 10, (3, 32, 32)).build()
    with pytest.raises(UserError, match="calibration images"):
        depth.block_scores(model, [(torch.randn(3, 3, 32, 32), torch.arange(3))], num_classes=10)


def test_a_model_without_residual_blocks_is_a_user_error() -> None:
    model = ModelSpec("vgg16_bn", 10, (3, 32, 32)).build()
    with pytest.raises(UserError, match="no residual blocks"):
        depth.block_scores(model, [(torch.randn(8, 3, 32, 32), torch.arange(8))], num_classes=10)


# --------------------------------------------------------------------------- class threshold


def class_aware_run(
    trained_base: object, mnist5k_splits: object, min_classes: float | None
) -> tuple[prune.PruneResult, dict[str, torch.Tensor]]:
    from autoprune.base import load_base

    base = load_base(trained_base)  # type: ignore[arg-type]
    model = base.build().eval()
    spec = base.spec
    names = [g.name for g in groups.discover_groups(model, spec.example_inputs())]
    policy = Policy(
        model=spec,
        groups={n: GroupPolicy(rate=0.5, criterion="class_aware") for n in names},
        class_aware=ClassAware(min_classes=min_classes, samples_per_class=5),
    )
    calibration = Calibration(mnist5k_splits.calibration, "mnist5k", num_images=64)  # type: ignore[attr-defined]
    scoring = ScoringInputs(calibration=calibration, num_classes=10)
    graph = groups.build_graph(model, spec.example_inputs())
    views = [groups.view_of(n, g, graph) for n, g in groups.current_groups(model, graph).items()]
    scores = ScoringContext.create(model, graph, policy, scoring).scores("class_aware", views)
    return prune.apply(model, policy, scoring), scores


def test_the_class_threshold_removes_only_channels_below_it_capped_by_the_rate(
    trained_base: object, mnist5k_splits: object
) -> None:
    unlimited, scores = class_aware_run(trained_base, mnist5k_splits, None)
    limited, _ = class_aware_run(trained_base, mnist5k_splits, 3.0)
    fewer = 0
    for name, s in scores.items():
        cap = groups.channels_to_remove(0.5, len(s))
        below = int((s < 3.0).sum())
        got = limited.removed.get(name, [])
        assert len(got) == min(cap, below)
        assert all(float(s[i]) < 3.0 for i in got)
        assert len(unlimited.removed[name]) == cap
        fewer += len(got) < cap
    # The threshold is not vacuous on this model: it spares channels in some group.
    assert fewer > 0
    limited.model(torch.zeros(2, 1, 28, 28))


def test_a_zero_threshold_removes_nothing(trained_base: object, mnist5k_splits: object) -> None:
    result, _ = class_aware_run(trained_base, mnist5k_splits, 0.0)
    assert result.history == [] or all(not idx for *_, idx in result.history)
    assert not any(result.removed.values())


def test_depth_section_drops_blocks_before_channel_pruning() -> None:
    spec = ModelSpec("resnet20", 10, (3, 32, 32))
    torch.manual_seed(0)
    model = spec.build()
    policy = Policy(
        model=spec,
        groups={"layer3.0.conv1": GroupPolicy(rate=0.5)},
        depth=Depth(drop_blocks=["layer1.1", "layer3.2"]),
    )
    result = prune.apply(model, policy)
    assert isinstance(result.model.get_submodule("layer1.1"), nn.Identity)
    assert result.model.get_submodule("layer3.0.conv1").out_channels == 32
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
