"""Screening pays only where the proxy ranks: a searched bracket is screened (``--screen K``)
until the proxy's Spearman with fine-tuned val accuracy, on the study's own trials at the
budget, is measured below ``--screen-floor``; then brackets are single trials."""

from __future__ import annotations

import io

import optuna
import pytest
from helpers import FAST_SPACE, space_context

from autoprune import study as studies
from autoprune.config import SCREEN_EVIDENCE, SearchConfig
from autoprune.errors import UserError
from autoprune.executors.brackets import BracketSource
from autoprune.modelspec import ModelSpec
from autoprune.policy import Policy
from autoprune.progress import Progress
from autoprune.space import SearchSpace

POLICY = Policy(ModelSpec("resnet20", 10, (1, 28, 28)), {}).to_dict()


def _source(
    pairs: list[tuple[float, float]], config: SearchConfig, stream: io.StringIO | None = None
) -> BracketSource:
    """A bracket source over a study whose fine-tuned trials at the budget have these
    (proxy, val accuracy) pairs."""
    storage = optuna.storages.InMemoryStorage()
    study = studies.create_or_load(storage, "s", config, optuna.samplers.RandomSampler(0))
    studies.save_config(study, config)
    for proxy, accuracy in pairs:
        result = {
            "val_accuracy": accuracy, "macs_ratio": 0.499, "proxy_accuracy": proxy,
            "policy": POLICY,
        }  # fmt: skip
        studies.finish_trial(study, study.ask(), result, budget=config.budgets())
    progress = None
    if stream is not None:
        progress = Progress(config.trials, len(pairs), config.budgets(), stream=stream)
    return BracketSource(study, SearchSpace.load(FAST_SPACE), space_context(), config, progress)


def _bracket_size(source: BracketSource) -> int:
    first = source.study.ask()
    source(first)
    return 1 + len(source.extras())


RANKS = [(0.1 * i, 0.90 + 0.01 * i) for i in range(SCREEN_EVIDENCE)]  # Spearman 1
SCRAMBLED = [(0.1 * i, 0.90 + 0.01 * ((3 * i) % SCREEN_EVIDENCE)) for i in range(SCREEN_EVIDENCE)]


def test_the_proxy_that_ranks_keeps_screening() -> None:
    assert _bracket_size(_source(RANKS, SearchConfig(screen=4))) == 4


def test_a_proxy_below_the_floor_pauses_screening_and_says_so() -> None:
    assert studies.spearman(*map(list, zip(*SCRAMBLED, strict=True))) < 0.3
    stream = io.StringIO()
    source = _source(SCRAMBLED, SearchConfig(screen=4), stream)
    assert _bracket_size(source) == 1
    assert _bracket_size(source) == 1
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("screening paused: the proxy's Spearman")
    assert f"over {SCREEN_EVIDENCE} trials" in lines[0] and "--screen-floor 0.3" in lines[0]


def test_screening_stays_on_until_there_is_evidence() -> None:
    few = SCRAMBLED[: SCREEN_EVIDENCE - 1]
    assert _bracket_size(_source(few, SearchConfig(screen=4))) == 4


def test_a_floor_of_minus_one_always_screens_and_screen_one_never() -> None:
    assert _bracket_size(_source(SCRAMBLED, SearchConfig(screen=4, screen_floor=-1))) == 4
    assert _bracket_size(_source(RANKS, SearchConfig(screen=1))) == 1


def test_screening_resumes_when_the_proxy_ranks_again() -> None:
    stream = io.StringIO()
    source = _source(SCRAMBLED, SearchConfig(screen=4), stream)
    assert _bracket_size(source) == 1
    for trial in source.study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        source.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    config = SearchConfig(screen=4)
    for i in range(4 * SCREEN_EVIDENCE):  # far more trials on which the proxy ranks
        result = {
            "val_accuracy": 0.96 + 0.001 * i, "macs_ratio": 0.499, "proxy_accuracy": 1 + 0.1 * i,
            "policy": POLICY,
        }  # fmt: skip
        studies.finish_trial(source.study, source.study.ask(), result, budget=config.budgets())
    assert _bracket_size(source) == 4
    assert stream.getvalue().splitlines()[-1].startswith("screening resumed")


@pytest.mark.parametrize("floor", [-1.5, 1.2])
def test_a_floor_outside_minus_one_to_one_says_the_range(floor: float) -> None:
    with pytest.raises(UserError, match=r"--screen-floor .* must be in \[-1, 1\]"):
        SearchConfig(screen_floor=floor).validate()
