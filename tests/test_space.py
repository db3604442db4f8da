"""Search spaces: loading, validation messages, pure sampling, params -> policy."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autoprune.errors import UserError
from autoprune.models import ModelSpec
from autoprune.space import SearchSpace, SpaceContext, spaces_dir

FAST_SPACE = Path(__file__).parent / "data" / "fast_space.yaml"


def _context(budget: float = 0.5, ranking: dict[str, list[str]] | None = None) -> SpaceContext:
    from autoprune.models import create
    from autoprune.prune import build_graph, current_groups

    spec = ModelSpec("resnet20", 10, (1, 28, 28))
    model = create("resnet20", num_classes=10, in_channels=1)
    names = list(current_groups(model, build_graph(model, spec.example_inputs())))
    stages = {n: ("a" if n.startswith(("conv1", "layer1")) else "b") for n in names}
    return SpaceContext(
        spec=spec, budget=budget, group_names=names, group_stage=stages, block_ranking=ranking or {}
    )


def _sample(space: SearchSpace, ctx: SpaceContext, seed: int = 0) -> dict:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed)
    )
    trial = study.ask()
    space.sample(trial, ctx)
    return trial.params


@pytest.mark.parametrize("path", sorted(spaces_dir().glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_spaces_load_and_sample_valid_policies(path: Path) -> None:
    space = SearchSpace.load(str(path))
    ctx = _context()
    params = _sample(space, ctx)
    policy = space.to_policy(params, ctx)
    assert set(policy.groups) == set(ctx.group_names)
    assert (
        policy.target_macs_ratio is not None and space.target_low <= policy.target_macs_ratio <= 0.5
    )
    policy.validate_against(ctx.spec, ctx.group_names)
    assert all(g.criterion in space.criteria for g in policy.groups.values())


def test_space_by_name_resolves_bundled_file() -> None:
    assert SearchSpace.load("default").source.endswith("search_spaces/default.yaml")


def test_sampling_is_deterministic_for_a_seed() -> None:
    space, ctx = SearchSpace.load(str(FAST_SPACE)), _context()
    assert _sample(space, ctx, 3) == _sample(space, ctx, 3)
    assert _sample(space, ctx, 3) != _sample(space, ctx, 4)


def test_stage_and_global_granularity_share_rates() -> None:
    ctx = _context()
    for granularity, units in (("stage", 2), ("global", 1)):
        space = SearchSpace.from_dict({"granularity": granularity, "criteria": ["l1"]})
        policy = space.to_policy(_sample(space, ctx), ctx)
        assert len({g.rate for g in policy.groups.values()}) == units


def test_global_criterion_is_one_choice() -> None:
    space = SearchSpace.from_dict({"criteria": ["l1", "fpgm", "taylor"], "criterion_per": "global"})
    policy = space.to_policy(_sample(space, _context()), _context())
    assert len({g.criterion for g in policy.groups.values()}) == 1


def test_dropped_blocks_remove_their_groups() -> None:
    ctx = _context(ranking={"layer1": ["layer1.2", "layer1.1"]})
    space = SearchSpace.from_dict({"criteria": ["l1"], "depth": {"max_blocks_per_stage": 2}})
    params = {**_sample(space, ctx), "drop:layer1": 2}
    policy = space.to_policy(params, ctx)
    assert policy.depth.drop_blocks == ["layer1.2", "layer1.1"]
    assert "layer1.2.conv1" not in policy.groups and "layer1.0.conv1" in policy.groups


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"granularity": "layer"}, "allowed: group, stage, global"),
        ({"criteria": ["l1", "magic"]}, "unknown magic"),
        ({"rate": {"low": 0.5, "high": 0.2}}, "low 0.5 > high 0.2"),
        ({"rate": {"low": 0.0, "high": 1.5}}, "'rate.high'"),
        ({"bogus": 1}, "unknown field(s) bogus"),
        ({"retrain": {"regularizer": ["l2"]}}, "allowed: none, orthogonal"),
        ({"iterative_steps": [0]}, "iterative_steps"),
        ({"depth": {"max_blocks_per_stage": -1}}, "max_blocks_per_stage"),
        ({"target_macs_ratio": {"low": 0.2, "high": 0.4}}, "--budget-flops"),
    ],
)
def test_bad_space_fields_name_the_field_and_the_fix(raw: dict, needle: str) -> None:
    with pytest.raises(UserError, match=r"my\.yaml") as info:
        SearchSpace.from_dict(raw, source="my.yaml")
    assert needle in str(info.value)


def test_bad_space_file_and_unknown_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("granularity: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        SearchSpace.load(str(bad))
    with pytest.raises(UserError, match="default"):
        SearchSpace.load("no-such-space")


def test_target_low_above_budget_is_rejected() -> None:
    space = SearchSpace.from_dict({"target_macs_ratio": {"low": 0.6}}, source="s.yaml")
    with pytest.raises(UserError, match=r"above --budget-flops 0\.5"):
        space.check_budget(0.5)
