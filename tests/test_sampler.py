"""The sampler under screening: a bracket's K candidates are asked before any is told, so TPE
must lie about the running ones (constant liar) or it draws K times from one unchanged model.
Its random start-up is spent on searched candidates, not on the baselines queued first."""

from __future__ import annotations

import optuna
import pytest

from autoprune.config import SearchConfig
from autoprune.records import TrialRecord
from autoprune.runner import _concurrent
from autoprune.sampler import make_sampler
from autoprune.tpe import searched_count

CHOICES = ["l1", "fpgm", "taylor", "energy"]  # a criterion per stage, as the default space has


def _bracket(concurrent: bool, seed: int, k: int = 4) -> list[tuple[str, ...]]:
    """Past TPE's start-up on a categorical space, ask a bracket of ``k`` without telling."""
    sampler = make_sampler("tpe", seed, trials=20, concurrent=concurrent)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def suggest(trial: optuna.Trial) -> tuple[str, ...]:
        return tuple(trial.suggest_categorical(f"criterion:{s}", CHOICES) for s in range(3))

    for _ in range(12):
        trial = study.ask()
        picked = suggest(trial)
        study.tell(trial, [sum(c == "taylor" for c in picked) / 3, 0.5])
    return [suggest(study.ask()) for _ in range(k)]


@pytest.mark.parametrize(("max_concurrent", "screen"), [(1, 4), (2, 1), (2, 4)])
def test_a_screened_bracket_or_parallel_trials_count_as_concurrent(
    max_concurrent: int, screen: int
) -> None:
    assert _concurrent(SearchConfig(max_concurrent=max_concurrent, screen=screen))


def test_one_trial_at_a_time_unscreened_is_not_concurrent() -> None:
    assert not _concurrent(SearchConfig(max_concurrent=1, screen=1))


def test_no_two_candidates_of_a_bracket_are_identical() -> None:
    concurrent = _concurrent(SearchConfig(max_concurrent=1, screen=4))
    for seed in range(8):
        bracket = _bracket(concurrent, seed)
        assert len(set(bracket)) == len(bracket), (seed, bracket)
    # Without the liar the same model is sampled K times: identical candidates come back.
    assert any(len(set(_bracket(False, seed))) < 4 for seed in range(8))


def _told(study: optuna.Study, value: float, **record: object) -> None:
    trial = study.ask()
    trial.suggest_float("x", -1.0, 1.0)
    for key, attr in TrialRecord(**record).to_attrs().items():  # type: ignore[arg-type]
        trial.set_user_attr(key, attr)
    study.tell(trial, [value, 0.5])


def test_start_up_is_counted_in_searched_candidates_not_baselines() -> None:
    """Six baselines (all at one corner, as a search's are) leave TPE's start-up untouched:
    the next searched candidates are the random sampler's own draws."""
    seed, startup = 3, 4  # make_sampler's start-up for 12 trials
    tpe = make_sampler("tpe-spread", seed, trials=12, concurrent=True)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=tpe)
    for i in range(6):
        study.enqueue_trial({"x": 0.0})
        _told(study, 0.9 + 0.01 * i, baseline=f"b{i}")
    assert searched_count(study) == 0
    random = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed)
    )
    for _ in range(startup):
        trial, reference = study.ask(), random.ask()
        assert trial.suggest_float("x", -1.0, 1.0) == reference.suggest_float("x", -1.0, 1.0)
        study.tell(trial, [0.5, 0.5])
    assert searched_count(study) == startup
    # Past start-up the model takes over: relative (multivariate) sampling gives every param.
    study.ask()
    frozen = study.get_trials(deepcopy=False)[-1]
    space = tpe.infer_relative_search_space(study, frozen)
    assert set(tpe.sample_relative(study, frozen, space)) == {"x"}


def test_retries_and_ladder_rungs_are_not_searched_candidates() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    _told(study, 0.9, retry_of=0)
    _told(study, 0.9, rung=1, promoted_from=0)
    _told(study, 0.9)
    assert searched_count(study) == 1


@pytest.mark.parametrize(("name", "joint"), [("tpe", True), ("tpe-univariate", False)])
def test_tpe_models_the_parameters_jointly_unless_univariate(name: str, joint: bool) -> None:
    sampler = make_sampler(name, 0, trials=12, concurrent=False)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(6):
        trial = study.ask()
        picked = [trial.suggest_categorical(f"criterion:{s}", CHOICES) for s in range(3)]
        study.tell(trial, [picked.count("taylor") / 3, 0.5])
    # The parameters TPE samples from one joint density: all of them, or none (one each).
    relative = sampler.infer_relative_search_space(study, study.ask())
    assert sorted(relative) == ([f"criterion:{s}" for s in range(3)] if joint else [])
