"""End-to-end search through the CLI: local executor, resume, crash recovery, export, replay.

These run real (short) trials of ResNet-20 on the bundled MNIST-5k with the session's trained
base checkpoint, so they take a few seconds per trial.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune.cli import main
from autoprune.policy import Policy


def _search_args(base: Path, db: Path, trials: int, *extra: str) -> list[str]:
    return [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(base), "--dataset", "mnist5k",
        "--space", FAST_SPACE, "--trials", str(trials), "--executor", "local", "--storage", f"sqlite:///{db}",
        "--study", "t", "--quiet", "--cpus-per-trial", "1", "--screen", "1", *extra,
    ]  # fmt: skip


def _trials(db: Path, name: str = "t") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_search_resume_export_and_replay(
    trained_base: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = workdir / "s.db"
    assert main(_search_args(trained_base, db, 2)) == 0
    trials = _trials(db)
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 2
    for t in trials:  # every trial carries the applied (projected) policy
        if t.state is not TrialState.COMPLETE:
            continue  # candidates screened out by the proxy have MACs but no accuracy
        policy = Policy.from_dict(t.user_attrs["policy"])
        assert policy.measured["macs_ratio"] == pytest.approx(t.values[1], abs=1e-6)
        assert abs(t.values[1] - policy.target_macs_ratio) <= 0.01

    # The same command with a larger --trials adds exactly the missing trials.
    assert main(_search_args(trained_base, db, 3)) == 0
    assert sum(t.state is TrialState.COMPLETE for t in _trials(db)) == 3
    # `resume NAME` needs only the name (and where the DB is).
    assert main(["resume", "t", "--storage", f"sqlite:///{db}", "--trials", "4", "--quiet"]) == 0
    assert sum(t.state is TrialState.COMPLETE for t in _trials(db)) == 4

    exported = sorted((workdir / "policies" / "t").glob("trial-*.yaml"))
    assert exported, "the feasible front is exported"
    for path in exported:
        assert Policy.load(path).measured["macs_ratio"] <= 0.5
    capsys.readouterr()
    assert main(["show", "t", "--storage", f"sqlite:///{db}"]) == 0
    assert "Pareto front" in capsys.readouterr().out

    # Replaying an exported policy reproduces its MACs ratio and reports test accuracy.
    policy = Policy.load(exported[0])
    out = workdir / "pruned.pt"
    assert main(["replay", str(exported[0]), "--epochs", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed
    from autoprune.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert abs(ckpt.metrics["macs_ratio"] - policy.measured["macs_ratio"]) <= 0.005
    assert 0.0 <= ckpt.metrics["test_accuracy"] <= 1.0

    # --study replays the winner (highest val accuracy on the front).
    assert (
        main(
            [
                "replay",
                "--study",
                "t",
                "--storage",
                f"sqlite:///{db}",
                "--epochs",
                "0",
                "--out",
                str(workdir / "w.pt"),
            ]
        )
        == 0
    )


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_study_is_readable_by_the_stock_optuna_cli(trained_base: Path, workdir: Path) -> None:
    db = workdir / "s.db"
    assert main(_search_args(trained_base, db, 1)) == 0
    optuna_cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run(
        [
            str(optuna_cli),
            "trials",
            "--study-name",
            "t",
            "--storage",
            f"sqlite:///{db}",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "COMPLETE" in out and "policy" in out


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_energy_trials_compute_calibration_scores_once(trained_base: Path, workdir: Path) -> None:
    from autoprune import criteria

    if "energy" not in criteria.available():
        pytest.skip("energy criterion not registered")
    space = workdir / "energy.yaml"
    space.write_text(
        "schema: autoprune.space/1\ncriteria: [energy]\ncriterion_per: global\n"
        "retrain: {epochs: [0.02]}\niterative_steps: [1]\n"
    )
    db = workdir / "s.db"
    args = _search_args(trained_base, db, 4)
    args[args.index(FAST_SPACE)] = str(space)
    assert main(args) == 0
    trials = [t for t in _trials(db) if t.state is TrialState.COMPLETE]
    assert len(trials) == 4
    passes = [t.user_attrs.get("counters", {}).get("calibration_passes", 0) for t in trials]
    assert sum(passes) == 1, passes


def _db_snapshot(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("select trial_id, state from trials order by trial_id").fetchall()


def _evaluating(db: Path) -> bool:
    """A trial has completed and a later one is RUNNING with all its params sampled."""
    if not db.exists():
        return False
    with sqlite3.connect(db) as con:
        if not con.execute("select name from sqlite_master where name = 'trial_params'").fetchall():
            return False  # the study is still being created
        rows = con.execute(
            "select t.state, count(p.param_id) from trials t left join trial_params p"
            " on p.trial_id = t.trial_id group by t.trial_id order by t.trial_id"
        ).fetchall()
    complete = [n for state, n in rows if state == "COMPLETE"]
    return bool(complete) and any(state == "RUNNING" and n == complete[0] for state, n in rows)


@pytest.fixture(scope="module")
def one_trial_db(trained_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study of one complete trial, searched once for the module (tests copy it)."""
    folder = tmp_path_factory.mktemp("one-trial")
    db = folder / "s.db"
    args = _search_args(trained_base, db, 1, "--policies-dir", str(folder / "policies"))
    assert main(args) == 0
    return db


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--budget-flops", "1.5"], "outside (0, 1]"),
        (["--budget-flops", "0"], "outside (0, 1]"),
        (["--sampler", "annealing"], "allowed: tpe, tpe-spread, tpe-univariate, nsga2, gp, random"),
        (["--space", "BADSPACE"], "unknown field(s) granularityy"),
        (["--storage", "postgresql+psycopg://postgres@127.0.0.1:1/postgres"], "cannot be opened"),
    ],
)
@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_bad_search_input_exits_2_and_leaves_the_db_alone(
    trained_base: Path,
    one_trial_db: Path,
    workdir: Path,
    args: list[str],
    needle: str,
) -> None:
    db = workdir / "s.db"
    shutil.copyfile(one_trial_db, db)
    before = _db_snapshot(db)
    assert before, "the study holds its trial"
    bad_space = workdir / "bad.yaml"
    bad_space.write_text("granularityy: group\n")
    full = _search_args(trained_base, db, 2)
    for flag, value in zip(args[::2], args[1::2], strict=True):
        value = str(bad_space) if value == "BADSPACE" else value
        if flag in full:
            full[full.index(flag) + 1] = value
        else:
            full += [flag, value]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", *full],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert _db_snapshot(db) == before


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_finishes_cleanly(trained_base: Path, workdir: Path) -> None:
    db = workdir / "s.db"
    space = workdir / "slow.yaml"  # trials long enough to be killed mid-way
    space.write_text("schema: autoprune.space/1\ncriteria: [l1]\nretrain: {epochs: [0.3]}\n")
    # One trial per bracket and no baselines: the recovery of one killed trial is what is tested.
    args = _search_args(trained_base, db, 3, "--baselines", "none")
    args[args.index(FAST_SPACE)] = str(space)
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoprune", *args],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if _evaluating(db):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the search never reached a running trial after a complete one")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "RUNNING" in [s for _, s in _db_snapshot(db)]
    assert main(["resume", "t", "--storage", f"sqlite:///{db}", "--quiet"]) == 0
    trials = _trials(db)
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    failed = [t for t in trials if t.state is TrialState.FAIL]
    assert len(failed) == 1
    retried = [t for t in trials if t.user_attrs.get("autoprune.retry_of") == failed[0].number]
    assert retried and retried[0].params == failed[0].params


@pytest.mark.ray
@pytest.mark.slow
def test_ray_and_local_executors_give_the_same_policies(trained_base: Path, workdir: Path) -> None:
    results = {}
    for executor in ("local", "ray"):
        db = workdir / f"{executor}.db"
        # 3 trials of 2 candidates: TPE's start-up is 3 trials, so the last 3 candidates are
        # the model's draws, which must match too
        args = _search_args(
            trained_base, db, 3, "--max-concurrent", "1", "--sampler", "tpe", "--seed", "7",
            "--screen", "2",
        )  # fmt: skip
        args[args.index("local")] = executor
        assert main(args) == 0
        results[executor] = [
            (t.number, t.params, t.user_attrs["policy"]["groups"])
            for t in _trials(db)
            if t.state is TrialState.COMPLETE
        ]
    assert len(results["ray"]) == 3
    for local, ray in zip(results["local"], results["ray"], strict=True):
        assert local == ray, f"trial {local[0]} differs"


@pytest.mark.ray
def test_ray_searcher_stops_once_another_driver_finished_the_study(
    trained_base: Path, workdir: Path
) -> None:
    """With a shared study, the Ray searcher asks for no trial once the study holds --trials."""
    from ray.tune.search import Searcher

    from autoprune.base import load_base
    from autoprune.config import SearchConfig
    from autoprune.executors.ray_tune import policy_searcher
    from autoprune.space import SearchSpace, build_context

    study = optuna.create_study(
        study_name="t", storage=f"sqlite:///{workdir / 's.db'}", directions=["maximize", "minimize"]
    )
    for values in ([0.9, 0.45], [0.8, 0.3]):  # finished by "another driver"
        study.add_trial(optuna.trial.create_trial(values=values, params={}, distributions={}))
    space = SearchSpace.load(FAST_SPACE)
    ctx = build_context(load_base(trained_base), 0.5, 0)

    def searcher(trials: int) -> Any:
        config = SearchConfig(trials=trials, executor="ray", budget_flops=0.5)
        return policy_searcher(study, space, ctx, config, None)  # type: ignore[arg-type]

    assert searcher(2).suggest("a") == Searcher.FINISHED
    assert study.get_trials()[-1].state is TrialState.COMPLETE, "no trial was asked for"
    suggested = searcher(3).suggest("b")
    assert isinstance(suggested, dict)
    assert Policy.from_dict(suggested["policies"][0]).target_macs_ratio is not None


@pytest.mark.slow  # a real search, training or fresh process: make test runs it
def test_resumed_search_draws_new_parameters(trained_base: Path, workdir: Path) -> None:
    """A restarted sampler must not replay the draws the study already evaluated."""
    db = workdir / "s.db"
    plain = ("--sampler", "random", "--screen", "1", "--baselines", "none")
    assert main(_search_args(trained_base, db, 2, *plain)) == 0
    assert main(_search_args(trained_base, db, 4, *plain)) == 0
    params = [tuple(sorted(t.params.items())) for t in _trials(db)]
    assert len(params) == 4 and len(set(params)) == 4


def test_local_driver_stops_when_the_shared_study_is_already_full(
    trained_base: Path, workdir: Path
) -> None:
    from autoprune.base import load_base
    from autoprune.config import SearchConfig
    from autoprune.evaluate import ObjectiveConfig
    from autoprune.executors.local import run_local
    from autoprune.progress import Progress
    from autoprune.space import SearchSpace, build_context

    study = optuna.create_study(
        study_name="t", storage=f"sqlite:///{workdir / 's.db'}", directions=["maximize", "minimize"]
    )
    for values in ([0.9, 0.45], [0.8, 0.3]):  # finished by "another driver" meanwhile
        study.add_trial(optuna.trial.create_trial(values=values, params={}, distributions={}))
    config = SearchConfig(trials=2, executor="local", budget_flops=0.5)
    ctx = build_context(load_base(trained_base), 0.5, 0)
    objective = ObjectiveConfig(base_checkpoint=str(trained_base), dataset="mnist5k")
    with Progress(2, 2, 0.5, quiet=True) as progress:
        # This driver still thinks 3 trials are missing: it must ask for none.
        run_local(study, SearchSpace.load(FAST_SPACE), ctx, objective, config, 3, progress)
    assert len(study.get_trials()) == 2
