"""Study storage: opening URLs, recording trials, stale-trial recovery, the feasible front."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune import study as studies
from autoprune.config import SearchConfig
from autoprune.errors import UserError
from autoprune.export import export_front
from autoprune.modelspec import ModelSpec
from autoprune.policy import GroupPolicy, Policy


def _study(tmp_path: Path, name: str = "s") -> optuna.Study:
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return studies.create_or_load(storage, name, SearchConfig(), optuna.samplers.RandomSampler(0))


def _policy() -> dict:
    return Policy(
        ModelSpec("resnet20", 10, (1, 28, 28)), {"layer1.0.conv1": GroupPolicy(0.5, "l1")}
    ).to_dict()


def test_default_storage_is_created_under_studies(autoprune_home: Path) -> None:
    studies.open_storage(None)
    assert (autoprune_home / "autoprune.db").is_file()


@pytest.mark.parametrize(
    "url",
    [
        "not-a-url",
        "sqlite:////no/such/folder/x.db",
        "postgresql+psycopg://postgres@127.0.0.1:1/postgres",
    ],
)
def test_storage_that_cannot_be_opened_is_a_user_error(url: str) -> None:
    with pytest.raises(UserError, match="--storage"):
        studies.open_storage(url)


def test_directions_and_metric_names(tmp_path: Path) -> None:
    study = _study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "macs_ratio"]


def test_foreign_study_with_other_directions_is_refused(tmp_path: Path) -> None:
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    optuna.create_study(study_name="foreign", storage=storage, direction="minimize")
    with pytest.raises(UserError, match="not an autoprune study"):
        studies.create_or_load(storage, "foreign", SearchConfig(), None)


def test_resuming_with_another_budget_is_refused(tmp_path: Path) -> None:
    study = _study(tmp_path)
    studies.save_config(study, SearchConfig(budget_flops=0.5))
    with pytest.raises(UserError, match="budget_flops"):
        studies.create_or_load(study._storage, "s", SearchConfig(budget_flops=0.3), None)


@pytest.mark.parametrize(
    "result",
    [
        None,
        {},
        {"val_accuracy": math.nan, "macs_ratio": 0.4},
        {"val_accuracy": 0.9},
        {"error": "target unreachable"},
    ],
)
def test_bad_results_become_fail_never_running(tmp_path: Path, result: dict | None) -> None:
    study = _study(tmp_path)
    trial = study.ask()
    state = studies.finish_trial(study, trial, result, budget=0.5)
    frozen = study.get_trials()[0]
    assert state is TrialState.FAIL and frozen.state is TrialState.FAIL
    assert frozen.user_attrs["error"]


def test_complete_trials_carry_policy_and_constraint(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for acc, ratio in ((0.9, 0.4), (0.95, 0.6), (0.8, 0.3)):
        trial = study.ask()
        studies.finish_trial(
            study,
            trial,
            {"val_accuracy": acc, "macs_ratio": ratio, "params_ratio": ratio, "policy": _policy()},
            budget=0.5,
        )
    front = studies.pareto_front(study)
    assert [(p.val_accuracy, p.macs_ratio) for p in front] == [
        (0.8, 0.3),
        (0.9, 0.4),
    ]  # 0.6 is over budget
    assert studies.winner(front).number == 0
    assert all(t.user_attrs["policy"]["groups"] for t in study.get_trials())


def test_winner_of_an_empty_front_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no feasible"):
        studies.winner([])


def test_stale_running_trial_of_a_dead_driver_is_failed_and_requeued(tmp_path: Path) -> None:
    study = _study(tmp_path)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    trial.set_user_attr(studies.DRIVER_ATTR, f"{socket.gethostname()}:{dead.stdout.strip()}")
    assert studies.recover_stale_trials(study, log=lambda _: None) == 1
    trials = study.get_trials()
    assert trials[0].state is TrialState.FAIL
    assert trials[1].state is TrialState.WAITING
    assert trials[1].system_attrs["fixed_params"] == trials[0].params
    assert studies.recover_stale_trials(study, log=lambda _: None) == 0  # only once


def test_running_trial_of_a_live_driver_or_another_host_is_left_alone(tmp_path: Path) -> None:
    import socket

    study = _study(tmp_path)
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = study.ask()
        alive.set_user_attr(
            studies.DRIVER_ATTR, f"{socket.gethostname()}:{peer.pid}"
        )  # another live search
        other = study.ask()
        other.set_user_attr(studies.DRIVER_ATTR, "some-other-host:1234")  # cannot tell: left alone
        assert studies.recover_stale_trials(study, log=lambda _: None) == 0
        assert all(t.state is TrialState.RUNNING for t in study.get_trials())
    finally:
        peer.kill()


def test_running_trial_of_this_process_is_stale(tmp_path: Path) -> None:
    # A search is not re-entrant: a RUNNING trial marked by this very process was left behind
    # by an earlier search call that raised, so it is recovered.
    study = _study(tmp_path)
    studies.mark_driver(study.ask())
    assert studies.recover_stale_trials(study, log=lambda _: None) == 1


def test_export_writes_front_policies_summary_and_plot(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for acc, ratio in ((0.9, 0.4), (0.8, 0.3), (0.95, 0.7)):
        studies.finish_trial(
            study,
            study.ask(),
            {"val_accuracy": acc, "macs_ratio": ratio, "policy": _policy()},
            budget=0.5,
        )
    out = tmp_path / "policies"
    written = export_front(study, out)
    assert [p.name for p in written] == ["trial-0001.yaml", "trial-0000.yaml"]
    assert Policy.load(written[0]).model.name == "resnet20"
    assert (out / "front.yaml").is_file() and (out / "front.png").stat().st_size > 1000


def test_hypervolume_is_the_area_a_front_dominates_up_to_the_reference() -> None:
    ref = studies.HYPERVOLUME_REFERENCE
    assert ref == (1.0, 0.1)
    assert studies.hypervolume([]) == 0.0
    assert studies.hypervolume([(0.5, 0.9)]) == pytest.approx(0.5 * 0.8)
    two = [(0.5, 0.9), (0.2, 0.6)]  # a staircase: 0.3 x 0.5 + 0.5 x 0.8
    assert studies.hypervolume(two) == pytest.approx(0.3 * 0.5 + 0.5 * 0.8)
    assert studies.hypervolume(two[::-1]) == studies.hypervolume(two)  # order-free
    # Dominated, costlier than the base, below the reference or unmeasured: nothing added.
    extra = [(0.6, 0.85), (1.2, 0.99), (0.1, 0.05), (float("nan"), 0.99)]
    assert studies.hypervolume(two + extra) == pytest.approx(studies.hypervolume(two))
    # A better trade-off anywhere on the front raises it.
    assert studies.hypervolume([*two, (0.35, 0.8)]) > studies.hypervolume(two)
