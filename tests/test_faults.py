"""Worker faults: every failure of a trial ends FAIL with its reason, and the search goes on.

Each test runs a small real search (ResNet-20 on the bundled MNIST-5k, the session's trained
base) with one fault injected, then checks what a user sees: the failed trial is FAIL with
``error`` and ``error_kind`` (and ``traceback`` for a bug) in its user attrs, the study still
reaches its ``--trials`` COMPLETE total, and ``autoprune show`` lists the failure.

Faults are injected in the test process for the local executor (monkeypatching what the
objective calls). Ray workers are other processes: for them Ray's own
``worker_process_setup_hook`` runs :func:`worker_setup` of this module in every worker (the
tests folder is put on the workers' ``PYTHONPATH``), so no test hook lives in the package.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune import criteria
from autoprune.cli import main
from autoprune.criteria.magnitude import L1Norm

FAULT_DIR_ENV = "AUTOPRUNE_TEST_FAULT_DIR"  # read by worker_setup in Ray workers


def _search(base: Path, db: Path, trials: int, *extra: str, space: str = FAST_SPACE) -> list[str]:
    return [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--space", space, "--trials", str(trials), "--executor", "local", "--storage", f"sqlite:///{db}",
        "--study", "t", "--quiet", "--cpus-per-trial", "1", "--baselines", "none", *extra,
    ]  # fmt: skip


def _trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{db}").get_trials()


def _failed_one(db: Path, complete: int) -> optuna.trial.FrozenTrial:
    """The study's single FAIL trial, after checking it reached ``complete`` and left none RUNNING."""
    trials = _trials(db)
    assert sum(t.state is TrialState.COMPLETE for t in trials) == complete
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    failed = [t for t in trials if t.state is TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.state, t.user_attrs.get("error")) for t in trials]
    return failed[0]


def _shown(db: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["show", "t", "--storage", f"sqlite:///{db}"]) == 0
    return capsys.readouterr().out


def _assert_listed(shown: str, trial: optuna.trial.FrozenTrial) -> None:
    """``show`` has a row with the trial's number, its kind and the start of its reason."""
    reason = trial.user_attrs["error"][:40]
    rows = [line for line in shown.splitlines() if trial.user_attrs["error_kind"] in line]
    assert "failed trials (1)" in shown
    assert any(str(trial.number) in row and reason in row for row in rows), shown


class _Flaky(L1Norm):
    """L1 scores, except the first call of the process raises (a bug in a criterion)."""

    calls = 0

    def score(self, group: Any, ctx: Any) -> torch.Tensor:
        type(self).calls += 1
        if type(self).calls == 1:
            raise ZeroDivisionError("the flaky criterion divided by zero")
        return super().score(group, ctx)


def _criterion_space(workdir: Path, name: str) -> str:
    path = workdir / f"{name}.yaml"
    path.write_text(
        f"schema: autoprune.space/1\ncriteria: [{name}]\ncriterion_per: global\n"
        "retrain: {epochs: [0.1]}\niterative_steps: [1]\ndepth: {max_blocks_per_stage: 0}\n"
    )
    return str(path)


def _register(monkeypatch: pytest.MonkeyPatch, name: str, cls: type[criteria.Criterion]) -> None:
    """Register a criterion for this test only (the contract suite must never see it)."""
    criteria.available()  # the built-ins first, so the registry is complete when restored
    named = type(cls.__name__, (cls,), {"name": name, "calls": 0})
    monkeypatch.setitem(criteria._REGISTRY, name, named)


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_a_criterion_that_raises_fails_its_candidate_only(
    trained_base: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _register(monkeypatch, "flaky", _Flaky)
    db = workdir / "s.db"
    space = _criterion_space(workdir, "flaky")
    assert main(_search(trained_base, db, 2, "--screen", "2", space=space)) == 0
    failed = _failed_one(db, complete=2)
    assert failed.user_attrs["error_kind"] == "exception"
    assert failed.user_attrs["error"] == (
        "ZeroDivisionError during pruning: the flaky criterion divided by zero"
    )
    assert "in score" in failed.user_attrs["traceback"]  # where the bug is, in a few lines
    assert len(failed.user_attrs["traceback"]) <= 2100
    # Its bracket went on: the other candidate was fine-tuned and is COMPLETE.
    bracket = [t for t in _trials(db) if t.user_attrs.get("bracket") == failed.number]
    assert {t.state for t in bracket} == {TrialState.FAIL, TrialState.COMPLETE}
    _assert_listed(_shown(db, capsys), failed)


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_a_diverging_fine_tune_stops_early_and_the_next_candidate_takes_its_place(
    trained_base: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from autoprune import train

    real_fit = train.fit
    calls: list[int] = []

    def diverging_fit(model: Any, train: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the first fine-tune runs at an absurd learning rate
            config = replace(config, retrain=replace(config.retrain, lr=1e30))
        return real_fit(model, train, config, *args, **kwargs)

    monkeypatch.setattr(train, "fit", diverging_fit)
    db = workdir / "s.db"
    assert main(_search(trained_base, db, 2, "--screen", "2")) == 0
    failed = _failed_one(db, complete=2)
    assert failed.user_attrs["error_kind"] == "nan"
    reason = failed.user_attrs["error"]
    assert reason.startswith("fine-tune diverged: training loss became"), reason
    step, total = (int(w) for w in reason.split(" by step ")[1].split(" with ")[0].split(" of "))
    assert step < total, "the fine-tune stopped at the first non-finite loss"
    assert "lower the learning rate" in reason
    # The bracket's other candidate was fine-tuned instead of being screened out.
    bracket = [t for t in _trials(db) if t.user_attrs.get("bracket") == failed.number]
    assert {t.state for t in bracket} == {TrialState.FAIL, TrialState.COMPLETE}
    _assert_listed(_shown(db, capsys), failed)


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_out_of_memory_is_reported_with_what_to_change(
    trained_base: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from autoprune import train

    real_fit = train.fit
    calls: list[int] = []

    def oom_fit(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                "79.19 GiB of which 1.06 GiB is free. Including non-PyTorch memory, ..."
            )
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", oom_fit)
    db = workdir / "s.db"
    assert main(_search(trained_base, db, 2, "--screen", "2")) == 0
    failed = _failed_one(db, complete=2)
    assert failed.user_attrs["error_kind"] == "oom"
    reason = failed.user_attrs["error"]
    assert "Tried to allocate 2.00 GiB" in reason and "Including non-PyTorch" not in reason
    for advice in ("--max-concurrent", "--gpus-per-trial", "smaller batch"):
        assert advice in reason
    # The next candidate would most likely run out of memory too: it is not fine-tuned.
    bracket = [t for t in _trials(db) if t.user_attrs.get("bracket") == failed.number]
    assert {t.state for t in bracket} == {TrialState.FAIL, TrialState.PRUNED}
    _assert_listed(_shown(db, capsys), failed)


class _Broken(L1Norm):
    def score(self, group: Any, ctx: Any) -> torch.Tensor:
        raise ValueError("broken criterion")


def test_a_search_whose_trials_all_fail_stops_with_the_reason(
    trained_base: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from autoprune.executors.brackets import FailureStreak

    _register(monkeypatch, "broken", _Broken)
    db = workdir / "s.db"
    space = _criterion_space(workdir, "broken")
    capsys.readouterr()
    assert main(_search(trained_base, db, 2, "--screen", "1", space=space)) == 2
    err = capsys.readouterr().err
    assert f"{FailureStreak.LIMIT} brackets in a row ended without a complete trial" in err
    assert "ValueError during pruning: broken criterion" in err
    assert "autoprune show t" in err and "Traceback" not in err
    trials = _trials(db)
    assert len(trials) == FailureStreak.LIMIT
    assert all(t.state is TrialState.FAIL for t in trials)


# --------------------------------------------------------------------------- Ray workers


def worker_setup() -> None:
    """Ray worker setup hook: the run's first fine-tune, in any worker, hangs until killed.

    The worker that gets it writes its pid to ``held`` in the fault folder (created with
    O_EXCL, so only one fine-tune of the run, retries included, is ever held).
    """
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder:
        return
    from autoprune import train

    real_fit = train.fit

    def held_fit(*args: Any, **kwargs: Any) -> Any:
        try:
            fd = os.open(Path(folder) / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return real_fit(*args, **kwargs)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(300)  # the test SIGKILLs this process meanwhile
        return real_fit(*args, **kwargs)

    train.fit = held_fit


@pytest.fixture
def ray_with_fault_hook(tmp_path: Path) -> Iterator[Path]:
    """Ray on 2 CPUs whose workers run :func:`worker_setup`; yields the fault folder."""
    import logging

    ray = pytest.importorskip("ray")
    folder = tmp_path / "faults"
    folder.mkdir()
    path = os.pathsep.join(
        p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
    )
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={
            "env_vars": {"PYTHONPATH": path, FAULT_DIR_ENV: str(folder)},
            "worker_process_setup_hook": f"{Path(__file__).stem}.worker_setup",
        },
    )
    try:
        yield folder
    finally:
        ray.shutdown()


def _search_and_kill_the_held_worker(args: list[str], folder: Path) -> int:
    """Run ``args`` while a thread kills the worker that holds the first fine-tune."""
    import threading

    killed: list[int] = []

    def kill() -> None:
        held = folder / "held"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pid = held.read_text() if held.exists() else ""
            if pid:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
            time.sleep(0.2)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    code = main(args)
    thread.join(timeout=5)
    assert killed, "no worker reached its fine-tune"
    return code


def _ray_args(base: Path, db: Path, trials: int, *extra: str) -> list[str]:
    args = _search(base, db, trials, "--screen", "1", "--max-concurrent", "1", *extra)
    args[args.index("local")] = "ray"
    return args


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_ray_worker_fails_its_trial_and_the_search_goes_on(
    trained_base: Path, workdir: Path, ray_with_fault_hook: Path, capsys: Any
) -> None:
    db = workdir / "s.db"
    code = _search_and_kill_the_held_worker(_ray_args(trained_base, db, 1), ray_with_fault_hook)
    assert code == 0
    failed = _failed_one(db, complete=1)  # another trial took the killed one's place
    assert failed.number == 0  # the first trial's worker was killed
    assert failed.user_attrs["error_kind"] == "worker_died"
    assert failed.user_attrs["error"].startswith("worker died (")
    _assert_listed(_shown(db, capsys), failed)


@pytest.mark.ray
@pytest.mark.slow
def test_a_retried_ray_trial_is_recorded_once(
    trained_base: Path, workdir: Path, ray_with_fault_hook: Path
) -> None:
    from autoprune import study as studies

    db = workdir / "s.db"
    args = _ray_args(trained_base, db, 1, "--max-failures", "1")
    assert _search_and_kill_the_held_worker(args, ray_with_fault_hook) == 0
    trials = _trials(db)
    # Tune re-ran the killed trial's bracket; its Optuna trial was told once, COMPLETE.
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE)]
    stored = studies.load_config(studies.open_storage(f"sqlite:///{db}"), "t")
    assert stored.max_failures == 1  # `autoprune resume t` keeps it
