"""Per-trial framework overhead: what trials cache per process, and what the driver reads and writes.

A trial projects its policy on the base model's MACs model, which depends only on the base and
the blocks it drops, so each worker builds it once (:func:`autoprune.budget.base_macs_model`);
a cached model must give exactly what a fresh one gives, down to the channels pruning removes.
The driver counts COMPLETE trials once per bracket and writes each trial's result in one
transaction. Speed itself is measured by ``benchmarks/overhead.py``, never asserted here.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoprune import budget, prune
from autoprune import study as studies
from autoprune.budget import base_macs_model, project_to_budget
from autoprune.depth import drop_blocks
from autoprune.macs import MacsModel, count_macs_params
from autoprune.modelspec import ModelSpec
from autoprune.policy import Depth, GroupPolicy, Policy

SPEC = ModelSpec("resnet20", 10, (3, 32, 32))


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    return SPEC.build().eval()


def _fresh(blocks: list[str]) -> MacsModel:
    """What projection built for every trial before the cache: the model less its blocks, traced."""
    model, inputs = _base(), SPEC.example_inputs()
    base_macs = float(count_macs_params(model, inputs)[0])
    if blocks:
        model = drop_blocks(copy.deepcopy(model), blocks, inputs)
    return MacsModel(model, inputs, base_macs)


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    budget._MACS_MODELS.clear()


@pytest.mark.parametrize("blocks", [[], ["layer1.1"], ["layer1.1", "layer3.2"]])
def test_cached_macs_model_counts_what_a_fresh_one_counts(blocks: list[str]) -> None:
    inputs = SPEC.example_inputs()
    base_macs = float(count_macs_params(_base(), inputs)[0])
    cached = base_macs_model("sha-a", _base, inputs, blocks, base_macs)
    fresh = _fresh(blocks)
    assert (cached.group_names, cached.channels) == (fresh.group_names, fresh.channels)
    rng = random.Random(0)
    for _ in range(20):
        removed = [rng.randrange(c) for c in fresh.channels]
        assert cached.ratio(removed) == fresh.ratio(removed)


def test_macs_model_cache_is_keyed_by_base_and_dropped_blocks() -> None:
    inputs = SPEC.example_inputs()
    builds = []

    def build() -> torch.nn.Module:
        builds.append(1)
        return _base()

    first = base_macs_model("sha-a", build, inputs, ["layer1.1"])
    assert base_macs_model("sha-a", build, inputs, ["layer1.1"]) is first
    assert len(builds) == 1  # a hit neither builds nor traces the base
    assert base_macs_model("sha-a", build, inputs, []) is not first
    assert base_macs_model("sha-b", build, inputs, ["layer1.1"]) is not first
    assert len(builds) == 3
    assert first.group_names != base_macs_model("sha-a", build, inputs, []).group_names


def test_macs_model_cache_keeps_only_the_most_recent() -> None:
    inputs = SPEC.example_inputs()
    for i in range(budget.MACS_MODEL_CACHE_SIZE + 3):
        base_macs_model(f"sha-{i}", _base, inputs)
    assert len(budget._MACS_MODELS) == budget.MACS_MODEL_CACHE_SIZE


@pytest.mark.parametrize("blocks", [[], ["layer2.1"]])
def test_policy_projected_on_a_cached_model_removes_the_same_channels(blocks: list[str]) -> None:
    """The removed-channels digest, which replay checks, is the same with or without the cache."""
    inputs = SPEC.example_inputs()
    base_macs = float(count_macs_params(_base(), inputs)[0])
    names = _fresh(blocks).group_names
    policy = Policy(
        model=SPEC,
        groups={
            name: GroupPolicy(rate=0.2 + 0.05 * (i % 7), criterion=("l1", "fpgm", "l2")[i % 3])
            for i, name in enumerate(names)
        },
        target_macs_ratio=0.5,
        depth=Depth(drop_blocks=blocks),
    )
    digests = []
    for macs_model in (None, base_macs_model("sha-a", _base, inputs, blocks, base_macs)):
        projected = project_to_budget(
            policy, _base(), inputs, base_macs=base_macs, macs_model=macs_model
        )
        digests.append((projected.groups, prune.apply(_base(), projected).removed_sha256))
    assert digests[0] == digests[1]


# --------------------------------------------------------------------------- the driver's storage


def _study(tmp_path: Path) -> optuna.Study:
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'overhead.db'}")
    return optuna.create_study(storage=storage, directions=studies.DIRECTIONS)


def _finish(study: optuna.Study, acc: float) -> optuna.Trial:
    trial = study.ask()
    result = {
        "val_accuracy": acc,
        "macs_ratio": 0.45,
        "params_ratio": 0.4,
        "macs": 1000,
        "params": 100,
        "val_loss": 0.3,
        "timings": {"load": 0.01, "finetune": 2.0},
        "counters": {"calibration_passes": 1},
        "bracket": trial.number,
    }
    studies.finish_trial(study, trial, result, budget=0.5)
    return trial


def test_counting_complete_trials_reads_no_finished_trial_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver counts COMPLETE trials once per bracket: the count must not load them all."""
    study = _study(tmp_path)
    for i in range(12):
        _finish(study, 0.5 + i / 100)
    loaded: list[int] = []
    real = optuna.storages.RDBStorage._get_trials

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        trials = real(self, *args, **kwargs)
        loaded.append(len(trials))
        return trials

    running = study.ask()  # a bracket in flight
    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", counting)
    for _ in range(5):
        assert studies.complete_count(study) == 12
    # One query per count, each reading at most the one unfinished trial: never the twelve.
    assert len(loaded) == 5 and max(loaded) <= 1
    study.tell(running, [0.9, 0.4])
    assert studies.complete_count(study) == 13


def test_a_result_is_written_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _study(tmp_path)
    calls: list[str] = []
    real = optuna.storages.RDBStorage.set_trial_user_attr

    def counting(self: Any, trial_id: int, key: str, value: Any) -> None:
        calls.append(key)
        real(self, trial_id, key, value)

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_user_attr", counting)
    trial = _finish(study, 0.9)
    assert calls == []  # no attr written on its own
    frozen = study.trials[0]
    assert frozen.state is TrialState.COMPLETE
    assert frozen.user_attrs["timings"] == {"load": 0.01, "finetune": 2.0}
    assert frozen.user_attrs["params_ratio"] == 0.4 and frozen.user_attrs["bracket"] == 0
    assert trial.user_attrs == frozen.user_attrs  # the live trial sees what was written
    assert studies.timing_summary(study) == []  # no driver wall recorded: no bracket row


def test_other_storages_get_one_call_per_attr() -> None:
    study = optuna.create_study(directions=studies.DIRECTIONS)  # in memory: no transaction
    trial = study.ask()
    studies.set_user_attrs(study, trial, {"a": 1, "b": {"c": [2]}})
    assert study.trials[0].user_attrs == {"a": 1, "b": {"c": [2]}}
    assert trial.user_attrs == {"a": 1, "b": {"c": [2]}}


def test_a_failure_is_recorded_with_its_reason(tmp_path: Path) -> None:
    study = _study(tmp_path)
    trial = study.ask()
    state = studies.finish_trial(study, trial, {"error": "boom", "error_kind": "exception"}, 0.5)
    assert state is TrialState.FAIL
    assert study.trials[0].user_attrs["error"] == trial.user_attrs["error"]


def test_ray_searcher_waiting_on_its_last_brackets_does_not_read_the_study(
    tmp_path: Path, trained_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune asks the searcher again at every step of its loop; with nothing left to plan, the
    answer ("wait") must not cost a read of the study each time."""
    from autoprune.base import load_base
    from autoprune.config import SearchConfig
    from autoprune.executors.ray_tune import policy_searcher
    from autoprune.space import SearchSpace, build_context

    study = _study(tmp_path)
    space = SearchSpace.load(str(Path(__file__).parent / "data" / "fast_space.yaml"))
    ctx = build_context(load_base(trained_base), 0.5, 0)
    config = SearchConfig(trials=2, executor="ray", budget_flops=0.5)
    searcher = policy_searcher(study, space, ctx, config, None, missing=1)
    assert isinstance(searcher.suggest("first"), dict)  # the one planned bracket, now in flight
    counts: list[int] = []
    real = studies.complete_count
    monkeypatch.setattr(studies, "complete_count", lambda s: counts.append(1) or real(s))
    for _ in range(20):
        assert searcher.suggest("next") is None  # wait: the bracket in flight may fail
    assert counts == []
