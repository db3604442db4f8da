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
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.cli import main
from autoprune.policy import Policy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FAST_SPACE = str(Path(__file__).parent / "data" / "fast_space.yaml")


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


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
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
    started = False
    try:
        sockets.mkdir()
        if as_user:
            root.chmod(0o777)
            shutil.chown(sockets, "postgres")
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
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
        "--storage", postgres_url, "--study", "pg", "--quiet", "--cpus-per-trial", "2",
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
        "--quiet", "--cpus-per-trial", "1",
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
