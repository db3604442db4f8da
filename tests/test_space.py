"""Search spaces: loading, validation messages, pure sampling, params -> policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from helpers import FAST_SPACE, space_context

from autoprune.errors import UserError
from autoprune.space import SearchSpace, SpaceContext, spaces_dir


def _sample(space: SearchSpace, ctx: SpaceContext, seed: int = 0, explore: bool = True) -> dict:
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed)
    )
    trial = study.ask()
    space.sample(trial, ctx, explore=explore)
    return trial.params


@pytest.mark.parametrize("path", sorted(spaces_dir().glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_spaces_load_and_sample_valid_policies(path: Path) -> None:
    space = SearchSpace.load(str(path))
    ctx = space_context()
    params = _sample(space, ctx)
    policy = space.to_policy(params, ctx)
    assert set(policy.groups) == set(ctx.group_names)
    assert (
        policy.target_macs_ratio is not None
        and space.explore_low(0.5) <= policy.target_macs_ratio <= 0.5
    )
    policy.validate_against(ctx.spec, ctx.group_names)
    assert all(g.criterion in space.criteria for g in policy.groups.values())


def test_space_by_name_resolves_bundled_file() -> None:
    assert SearchSpace.load("default").source.endswith("autoprune/search_spaces/default.yaml")


def test_sampling_is_deterministic_for_a_seed() -> None:
    space, ctx = SearchSpace.load(FAST_SPACE), space_context()
    assert _sample(space, ctx, 3) == _sample(space, ctx, 3)
    assert _sample(space, ctx, 3) != _sample(space, ctx, 4)


def test_stage_and_global_granularity_share_rates() -> None:
    ctx = space_context()
    for granularity, units in (("stage", 2), ("global", 1)):
        space = SearchSpace.from_dict({"granularity": granularity, "criteria": ["l1"]})
        policy = space.to_policy(_sample(space, ctx), ctx)
        assert len({g.rate for g in policy.groups.values()}) == units


def test_global_criterion_is_one_choice() -> None:
    space = SearchSpace.from_dict({"criteria": ["l1", "fpgm", "taylor"], "criterion_per": "global"})
    policy = space.to_policy(_sample(space, space_context()), space_context())
    assert len({g.criterion for g in policy.groups.values()}) == 1


def test_dropped_blocks_remove_their_groups() -> None:
    ctx = space_context(ranking={"layer1": ["layer1.2", "layer1.1"]})
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
        ({"allocation": {"priors": ["uniform"], "floor": 0.9}}, "'allocation.floor'"),
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


def test_non_explore_candidates_target_the_budget() -> None:
    space, ctx = SearchSpace.load("default"), space_context(budget=0.4)
    params = _sample(space, ctx, explore=False)
    assert "target_macs_ratio" not in params
    assert space.to_policy(params, ctx).target_macs_ratio == 0.4


def test_explore_share_is_spread_evenly_over_brackets() -> None:
    space = SearchSpace.from_dict({"target_macs_ratio": {"low": 0.3, "explore": 0.25}})
    flags = [space.explores(i) for i in range(12)]
    assert sum(flags) == 3 and flags[3] and flags[7] and flags[11]
    assert not any(
        SearchSpace.from_dict({"target_macs_ratio": {"explore": 0}}).explores(i) for i in range(8)
    )


def test_prior_multipliers_scale_a_stage_of_the_prior() -> None:
    space, ctx = SearchSpace.load("default"), space_context()
    params = {
        **_sample(space, ctx, explore=False),
        "prior": "sensitivity",
        "scale:a": 1.0,
        "scale:b": -1.0,
    }
    policy = space.to_policy(params, ctx)
    assert {round(g.rate, 6) for n, g in policy.groups.items() if ctx.group_stage[n] == "a"} == {
        0.2
    }
    assert {round(g.rate, 6) for n, g in policy.groups.items() if ctx.group_stage[n] == "b"} == {
        0.3
    }


def test_a_floor_lets_a_raised_multiplier_prune_groups_the_prior_leaves_whole() -> None:
    ctx = space_context()
    ctx.priors["sensitivity"] = {
        n: (0.0 if ctx.group_stage[n] == "a" else 0.3) for n in ctx.group_names
    }
    plain = SearchSpace.load("default")
    floored = replace(plain, floor=0.1)

    def rates(space: SearchSpace, scale: float) -> dict[str, set[float]]:
        params = {**_sample(space, ctx, explore=False), "prior": "sensitivity"}
        params |= {"scale:a": scale, "scale:b": scale}
        policy = space.to_policy(params, ctx)
        out: dict[str, set[float]] = {}
        for name, group in policy.groups.items():
            out.setdefault(ctx.group_stage[name], set()).add(round(group.rate, 6))
        return out

    # without a floor a prior rate of 0 stays 0 whatever the multiplier (the issue it fixes)
    assert rates(plain, 1.0) == {"a": {0.0}, "b": {0.6}}
    # with one, a raised multiplier adds floor x (2**m - 1): 0.1 at m = 1, 0.1 x (sqrt 2 - 1) at 0.5
    assert rates(floored, 1.0) == {"a": {0.1}, "b": {0.7}}
    lift = 0.1 * (2**0.5 - 1)
    assert rates(floored, 0.5) == {"a": {round(lift, 6)}, "b": {round(0.3 * 2**0.5 + lift, 6)}}
    # at m <= 0 the rates are the prior's, so the baselines (m = 0) are unchanged
    assert rates(floored, 0.0) == rates(plain, 0.0) == {"a": {0.0}, "b": {0.3}}
    assert rates(floored, -1.0) == rates(plain, -1.0)
    assert (
        SearchSpace.from_dict(
            {"allocation": {"priors": ["sensitivity"], "floor": 0.1}}, source="s.yaml"
        ).floor
        == 0.1
    )


def test_criterion_per_stage_is_one_choice_per_stage() -> None:
    space, ctx = SearchSpace.load("default"), space_context()
    params = _sample(space, ctx)
    assert {k for k in params if k.startswith("criterion")} == {"criterion:a", "criterion:b"}
    policy = space.to_policy(params, ctx)
    for stage in ("a", "b"):
        assert {g.criterion for n, g in policy.groups.items() if ctx.group_stage[n] == stage} == {
            params[f"criterion:{stage}"]
        }


def test_default_baselines_are_points_of_the_space_at_the_budget() -> None:
    space, ctx = SearchSpace.load("default"), space_context()
    baselines = dict(space.baselines(ctx, "default"))
    assert list(baselines) == [
        "uniform-l1", "uniform-taylor", "uniform-energy", "uniform-relevance", "global-l1", "sensitivity-l1",
    ]  # fmt: skip
    study = optuna.create_study(directions=["maximize", "minimize"])
    for name, params in baselines.items():
        study.enqueue_trial(params)
        trial = study.ask()
        space.sample(trial, ctx, explore=False)
        assert trial.params == params, name  # every value lies inside the space
        policy = space.to_policy(params, ctx)
        assert policy.target_macs_ratio == ctx.budget
        assert policy.retrain.lr == space.baseline_lr()
        allocation, _, criterion = name.partition("-")
        assert {g.criterion for g in policy.groups.values()} == {criterion}
        assert {n: g.rate for n, g in policy.groups.items()} == ctx.priors[allocation]
    assert space.baselines(ctx, "none") == []
    assert len(space.baselines(ctx, "all")) == 3 * 5


def test_raw_rate_spaces_offer_uniform_baselines_only() -> None:
    space = SearchSpace.from_dict(
        {"criteria": ["l1", "fpgm", "energy"], "rate": {"low": 0.0, "high": 0.8}}
    )
    names = [n for n, _ in space.baselines(space_context(), "default")]
    assert names == ["uniform-l1", "uniform-energy"]


def test_allocation_and_rate_are_exclusive() -> None:
    with pytest.raises(UserError, match="not both"):
        SearchSpace.from_dict(
            {"rate": {"low": 0, "high": 0.5}, "allocation": {"priors": ["uniform"]}},
            source="s.yaml",
        )
    with pytest.raises(UserError, match="allowed: sensitivity, uniform, global"):
        SearchSpace.from_dict({"allocation": {"priors": ["magic"]}}, source="s.yaml")
