"""The sampler under screening: a bracket's K candidates are asked before any is told, so TPE
must lie about the running ones (constant liar) or it draws K times from one unchanged model."""

from __future__ import annotations

import optuna
import pytest

from autoprune.config import SearchConfig
from autoprune.runner import _concurrent
from autoprune.sampler import make_sampler

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
