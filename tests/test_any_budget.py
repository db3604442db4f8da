"""Any ``--budget-flops`` in (0, 1] searches with the bundled spaces, with no file to edit.

The bundled spaces put their explore floor at a share of the budget (``relative_low``), and
their ``max_rate`` gives way when the budget needs deeper cuts; only a budget under what the
model reaches with every group down to one channel is refused, naming the lowest that works.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune import prepare
from autoprune.base import load_base
from autoprune.budget import base_macs_model, cap_reaching, reachable_floor
from autoprune.cli import main
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.space import SearchSpace, SpaceContext, bundled_spaces

BUDGETS = (0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.8, 1.0)


@pytest.mark.parametrize("budget", BUDGETS)
def test_default_space_reaches_every_budget(trained_base: Path, budget: float) -> None:
    base = load_base(trained_base)
    space = SearchSpace.load("default")
    said: list[str] = []
    floor = prepare.lowest_target(space, base, SearchConfig(budget_flops=budget), said.append)
    assert floor <= budget
    # The cap is lifted only where the budget needs it, and then as little as it needs.
    mm = base_macs_model(base.sha256, base.build, base.spec.example_inputs())
    if reachable_floor(mm, 0.85) < budget - 0.001:
        assert space.max_rate == 0.85 and not said
    else:
        assert space.max_rate > 0.85 and "lose up to" in said[0]
        assert reachable_floor(mm, space.max_rate - 0.01) > budget - 0.001
    # Explore targets sample in [max(0.6 x budget, floor), budget].
    ctx = SpaceContext(
        spec=base.spec,
        budget=budget,
        group_names=list(mm.group_names),
        group_stage=dict.fromkeys(mm.group_names, "a"),
        priors={p: dict.fromkeys(mm.group_names, 0.5) for p in space.priors},
        min_target=floor,
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    for _ in range(5):
        trial = study.ask()
        space.sample(trial, ctx, explore=True)
        target = space.to_policy(trial.params, ctx).target_macs_ratio
        assert target is not None
        assert max(0.6 * budget, floor) - 1e-9 <= target <= budget


def test_a_budget_under_the_models_floor_names_the_lowest_that_works(trained_base: Path) -> None:
    base = load_base(trained_base)
    with pytest.raises(UserError, match=r"out of reach .* Use a budget of at least 0\.\d+"):
        prepare.lowest_target(SearchSpace.load("default"), base, SearchConfig(budget_flops=0.001))


def test_a_users_own_max_rate_is_kept(trained_base: Path, tmp_path: Path) -> None:
    """A cap the user wrote is a decision; the error says how to change it."""
    path = tmp_path / "mine.yaml"
    path.write_text("max_rate: 0.5\ntarget_macs_ratio: {relative_low: 0.6}\n")
    space = SearchSpace.load(str(path))
    with pytest.raises(UserError, match=r"max_rate 0\.5.*Use a budget of at least"):
        prepare.lowest_target(space, load_base(trained_base), SearchConfig(budget_flops=0.1))
    assert space.max_rate == 0.5


def test_cap_reaching_is_the_smallest_cap_that_reaches(trained_base: Path) -> None:
    base = load_base(trained_base)
    mm = base_macs_model(base.sha256, base.build, base.spec.example_inputs())
    assert cap_reaching(mm, 0.5, 0.85) == 0.85
    cap = cap_reaching(mm, 0.02, 0.85, multiple=1)
    assert 0.85 < cap <= 0.99
    assert reachable_floor(mm, cap) <= 0.019 < reachable_floor(mm, cap - 0.01)


@pytest.mark.parametrize("space", bundled_spaces(), ids=lambda s: s.name)
def test_bundled_explore_floors_follow_the_budget(space: SearchSpace) -> None:
    assert space.bundled and space.relative_low is not None
    for budget in (0.05, 0.2, 0.5):
        space.check_budget(budget)  # never refused
        assert space.explore_low(budget) < budget


def test_relative_and_absolute_floor_together_are_refused() -> None:
    with pytest.raises(UserError, match="relative_low"):
        SearchSpace.from_dict(
            {"target_macs_ratio": {"low": 0.3, "relative_low": 0.6}}, source="s.yaml"
        )


@pytest.mark.slow
def test_search_at_an_aggressive_budget_with_the_default_space(
    trained_base: Path, warm_sensitivity: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's first aggressive budget: the default space, no file to edit."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "s.db"
    args = [
        "search", "--budget-flops", "0.1", "--base-checkpoint", str(trained_base),
        "--dataset", "mnist5k", "--trials", "1", "--executor", "local",
        "--storage", f"sqlite:///{db}", "--study", "t", "--quiet",
        "--policies-dir", str(tmp_path / "policies"),
    ]  # fmt: skip
    assert main(args) == 0
    trials = optuna.load_study(study_name="t", storage=f"sqlite:///{db}").get_trials()
    done = [t for t in trials if t.state is TrialState.COMPLETE]
    assert done and all(0.09 <= t.values[1] <= 0.1 for t in done)
