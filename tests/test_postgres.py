"""A study stored in PostgreSQL (the shared-use storage): search, resume by name, show, export.

The test starts a throwaway PostgreSQL server on a loopback port with the server binaries of
the machine (Debian's ``postgresql`` package; ``initdb`` refuses root, so as root it runs as
the ``postgres`` user the package creates). Without the binaries it is skipped, saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import FAST_SPACE
from optuna.trial import TrialState

from autoprune.cli import main
from autoprune.policy import Policy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _server_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """The throwaway server: its URL, and stopping and starting it under a running search."""

    url: str
    run: Callable[..., None]  # runs a server binary (as the postgres user when root)
    bindir: Path
    data: Path
    options: str
    log: Path

    def stop(self) -> None:
        # "fast": clients are disconnected at once, as in a restart for maintenance.
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start(self) -> None:
        self.run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", self.options,
            "-l", str(self.log), "-w", "start",
        )  # fmt: skip

    def is_running(self) -> bool:
        try:
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "status")
        except RuntimeError:
            return False
        return True


@pytest.fixture(scope="module")
def postgres_url(postgres_server: Server) -> str:
    return postgres_server.url


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Server]:
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    bindir = _server_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    # Not under pytest's tmp dir: that one is private to the current user, and the server may
    # run as another.
    root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "log"
    port = _free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    server = Server(url, run, bindir, data, options, log)
    started = False
    try:
        sockets.mkdir()
        if as_user:
            root.chmod(0o777)
            shutil.chown(sockets, "postgres")
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
        server.start()
        started = True
        yield server
    finally:
        if started and server.is_running():  # a test may have left it stopped
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_search_resume_show_and_export_with_postgres(
    postgres_url: str,
    trained_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    search = [
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(trained_base),
        "--dataset", "mnist5k", "--space", FAST_SPACE, "--trials", "2", "--executor", "local",
        "--storage", postgres_url, "--study", "pg", "--quiet", "--cpus-per-trial", "1", "--screen", "1",
    ]  # fmt: skip
    assert main(search) == 0
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    complete = [t for t in study.get_trials() if t.state is TrialState.COMPLETE]
    assert len(complete) == 2
    for t in complete:  # the applied policy travels through PostgreSQL's JSON user attrs intact
        assert Policy.from_dict(t.user_attrs["policy"]).measured["macs_ratio"] == pytest.approx(
            t.values[1], abs=1e-6
        )

    # `resume NAME` needs only the name and the storage: the config is stored on the study.
    assert main(["resume", "pg", "--storage", postgres_url, "--trials", "3", "--quiet"]) == 0
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert sum(t.state is TrialState.COMPLETE for t in study.get_trials()) == 3

    capsys.readouterr()
    assert main(["studies", "--storage", postgres_url]) == 0
    assert "pg" in capsys.readouterr().out
    assert main(["show", "pg", "--storage", postgres_url]) == 0
    assert "Pareto front" in capsys.readouterr().out
    out = tmp_path / "exported"
    assert main(["export", "pg", "--storage", postgres_url, "--out", str(out)]) == 0
    exported = sorted(out.glob("trial-*.yaml"))
    assert exported
    assert all(Policy.load(p).measured["macs_ratio"] <= 0.5 for p in exported)


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/postgres"
    assert main(["studies", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "--storage" in err and "Traceback" not in err


def test_two_drivers_share_one_study_without_clobbering_each_other(
    postgres_url: str, trained_base: Path, tmp_path: Path
) -> None:
    """Two `search` processes on one PostgreSQL study: unique trials, none left RUNNING, and
    the study's total stops within one trial per extra driver of what was asked."""
    import sys

    command = [
        sys.executable, "-m", "autoprune", "search", "--budget-flops", "0.5",
        "--base-checkpoint", str(trained_base), "--dataset", "mnist5k", "--space", FAST_SPACE,
        "--trials", "4", "--executor", "local", "--storage", postgres_url, "--study", "shared",
        "--quiet", "--cpus-per-trial", "1", "--screen", "1",
    ]  # fmt: skip
    env = {**os.environ, "AUTOPRUNE_HOME": str(tmp_path / "studies")}
    procs: list[subprocess.Popen[str]] = []

    def start(name: str) -> None:
        cwd = tmp_path / name  # each driver exports its own policies/ folder
        cwd.mkdir()
        procs.append(subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True))

    try:
        start("first")
        # The second driver joins once the study exists (creating it is not meant to race).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and procs[0].poll() is None:
            try:
                optuna.load_study(study_name="shared", storage=postgres_url)
                break
            except KeyError:
                time.sleep(0.5)
        start("second")
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    trials = optuna.load_study(study_name="shared", storage=postgres_url).get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states
    # A sampled policy may fail on its own (an unreachable target); what must never happen is
    # one driver taking the other's running trial for a crashed one.
    recovered = [t.number for t in trials if "autoprune.retry_of" in t.user_attrs]
    assert not recovered, f"trials {recovered} re-run: a live driver's trial was recovered"
    assert 4 <= states.count(TrialState.COMPLETE) <= 5
    assert len({t.number for t in trials}) == len(trials)
    # The second driver's sampler does not replay the first one's draws.
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params), "two trials evaluated the same parameters"


# --------------------------------------------------------------------------- server restarts


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def _start_search(
    url: str, base: Path, cwd: Path, name: str, trials: int, retry_s: float
) -> tuple[subprocess.Popen[str], Path]:
    """A local-executor search in a child process; its stderr goes to the returned file."""
    import sys

    command = [
        sys.executable, "-m", "autoprune", "search", "--budget-flops", "0.5",
        "--base-checkpoint", str(base), "--dataset", "mnist5k", "--space", FAST_SPACE,
        "--trials", str(trials), "--screen", "1", "--baselines", "none", "--executor", "local",
        "--storage", url, "--study", name, "--quiet", "--cpus-per-trial", "1",
    ]  # fmt: skip
    env = {**os.environ, "AUTOPRUNE_DB_RETRY_SECONDS": str(retry_s)}
    err = cwd / f"{name}.stderr"
    with err.open("w") as sink:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stderr=sink, text=True)
    return proc, err


def _wait_until(
    check: Callable[[], bool], proc: subprocess.Popen[str], err: Path, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the search ended early:\n{err.read_text()}"
        assert time.monotonic() < deadline, f"timed out:\n{err.read_text()}"
        time.sleep(0.2)


def _running_after_a_complete(url: str, name: str) -> bool:
    """At least one trial is COMPLETE and the driver has asked the next one (it is RUNNING)."""
    try:
        trials = _trials(url, name)
    except KeyError:  # the study is not created yet
        return False
    states = [t.state for t in trials]
    return TrialState.COMPLETE in states and states[-1] is TrialState.RUNNING


def _complete(trials: list[optuna.trial.FrozenTrial]) -> dict[int, tuple[Any, ...]]:
    return {
        t.number: (t.values, t.params, t.user_attrs)
        for t in trials
        if t.state is TrialState.COMPLETE
    }


def _assert_intact(
    trials: list[optuna.trial.FrozenTrial], before: dict[int, tuple[Any, ...]], total: int
) -> None:
    """The study holds ``total`` COMPLETE trials, none twice, and those of ``before`` unchanged."""
    assert len({t.number for t in trials}) == len(trials), "a trial number is stored twice"
    assert TrialState.RUNNING not in [t.state for t in trials]
    after = _complete(trials)
    assert len(after) == total
    assert {n: after.get(n) for n in before} == before, "a COMPLETE trial changed or vanished"
    params = [tuple(sorted(p.items())) for _, p, _ in after.values()]
    assert len(set(params)) == len(params), "two COMPLETE trials evaluated the same parameters"
    assert all("policy" in attrs for _, _, attrs in after.values())


def test_a_server_restart_during_a_search_loses_and_doubles_nothing(
    postgres_server: Server, trained_base: Path, tmp_path: Path
) -> None:
    """The server goes away while a trial trains and comes back a few seconds later: the
    driver's next storage call waits for it, and the search ends by itself, complete."""
    url = postgres_server.url
    proc, err = _start_search(url, trained_base, tmp_path, "restart", trials=3, retry_s=120)
    try:
        _wait_until(lambda: _running_after_a_complete(url, "restart"), proc, err)
        before = _complete(_trials(url, "restart"))
        postgres_server.stop()
        try:  # down until the driver has needed it (its trial ended), then a little longer
            _wait_until(lambda: "lost the connection" in err.read_text(), proc, err)
            time.sleep(2)
        finally:
            postgres_server.start()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err.read_text()
    assert proc.returncode == 0, log
    assert "reconnected after" in log and "Traceback" not in log
    assert main(["resume", "restart", "--storage", url, "--quiet"]) == 0  # nothing left to do
    _assert_intact(_trials(url, "restart"), before, total=3)


def test_a_server_gone_for_good_stops_the_search_with_one_line_and_resume_completes_it(
    postgres_server: Server, trained_base: Path, tmp_path: Path
) -> None:
    """The server stays away past the retry window: exit 2 with one error line naming what to
    do; once it is back, `resume` re-runs the trial left RUNNING and completes the study."""
    url = postgres_server.url
    proc, err = _start_search(url, trained_base, tmp_path, "gone", trials=3, retry_s=2)
    try:
        _wait_until(lambda: _running_after_a_complete(url, "gone"), proc, err)
        postgres_server.stop()
        try:
            proc.wait(timeout=300)
        finally:
            postgres_server.start()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err.read_text()
    assert proc.returncode == 2, log
    errors = [line for line in log.splitlines() if line.startswith("autoprune search: error:")]
    assert len(errors) == 1 and "Traceback" not in log, log
    assert errors[0] == log.strip().splitlines()[-1]
    assert "error: lost the connection to the study database postgresql" in errors[0]
    assert "autoprune resume gone --storage" in errors[0]

    stopped = _trials(url, "gone")
    before = _complete(stopped)
    left_running = {t.number for t in stopped if t.state is TrialState.RUNNING}
    assert left_running, "the trial that was training when the server went away is RUNNING"
    assert main(["resume", "gone", "--storage", url, "--quiet"]) == 0
    trials = _trials(url, "gone")
    _assert_intact(trials, before, total=3)
    retried = {t.user_attrs.get("autoprune.retry_of") for t in trials} - {None}
    assert retried == left_running
    assert all(trials[n].state is TrialState.FAIL for n in left_running)
