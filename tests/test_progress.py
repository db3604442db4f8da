"""Search progress when stderr is not a terminal: one plain line per finished trial.

A log file (CI, nohup, a cluster job) gets no live bar: rich would draw it once at the end,
so nothing per trial would show. These tests check the plain lines' fields, that they hold
no escape character, that ``--quiet`` silences them, and the whole thing end to end through
``autoprune search ... > log 2>&1``.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST_SPACE

import autoprune
from autoprune.progress import Progress

TRIAL_LINE = re.compile(r"^trial (\d+) (COMPLETE|PRUNED\(screened\)|FAIL) ")


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable that tells rich to treat a file as a terminal."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)


def _updates(stream: io.StringIO, quiet: bool = False) -> list[str]:
    with Progress(total=3, done=0, budget=0.5, quiet=quiet, stream=stream) as progress:
        progress.update(1, {"val_accuracy": 0.97125, "macs_ratio": 0.4981}, "COMPLETE", 0)
        progress.update(
            1,
            {"val_accuracy": float("nan"), "macs_ratio": 0.5012, "proxy_accuracy": 0.9},
            "PRUNED",
            1,
        )
        progress.update(
            1, None, "FAIL", 2, "RuntimeError: CUDA out of memory\nTraceback (most recent call)"
        )
        progress.update(2, {"val_accuracy": 0.95, "macs_ratio": 0.3}, "COMPLETE", 3)
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("plain_env")
def test_plain_lines_carry_each_trials_fields_and_no_escape_codes() -> None:
    stream = io.StringIO()
    lines = _updates(stream)
    assert "\x1b" not in stream.getvalue()
    assert len(lines) == 4, lines
    complete, screened, failed, last = lines
    assert complete.startswith("trial 0 COMPLETE val acc 0.9712 MACs 0.498 | 1/3 complete")
    assert "elapsed " in complete and "ETA " in complete
    assert screened.startswith("trial 1 PRUNED(screened) val acc - MACs 0.501 proxy acc 0.9000")
    # A failure says why, on its one line: the reason's first line only.
    assert failed.startswith("trial 2 FAIL val acc - MACs - | 1/3 complete")
    assert failed.endswith("| RuntimeError: CUDA out of memory")
    assert last.startswith("trial 3 COMPLETE") and "2/3 complete" in last


@pytest.mark.usefixtures("plain_env")
def test_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "dumb")
    stream = Tty()
    assert len(_updates(stream)) == 4
    assert "\x1b" not in stream.getvalue()


@pytest.mark.usefixtures("plain_env")
def test_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    assert _updates(stream, quiet=True) == []


@pytest.mark.slow
@pytest.mark.usefixtures("plain_env")
def test_search_to_a_log_file_writes_one_line_per_trial(trained_base: Path, tmp_path: Path) -> None:
    """Acceptance: ``autoprune search ... > log 2>&1`` writes one line per trial, no escapes."""
    db = tmp_path / "s.db"
    log = tmp_path / "search.log"
    # The child imports the autoprune under test, wherever the venv's install points.
    source_root = str(Path(autoprune.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]),
    }

    def run(*args: str) -> str:
        with log.open("w") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "autoprune", *args, "--storage", f"sqlite:///{db}"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
            )
        text = log.read_text()
        assert proc.returncode == 0, text[-4000:]
        return text

    text = run(
        "search", "--budget-flops", "0.5", "--base-checkpoint", str(trained_base),
        "--dataset", "mnist5k", "--space", FAST_SPACE, "--trials", "3", "--screen", "1",
        "--baselines", "none", "--executor", "local", "--study", "t", "--cpus-per-trial", "1",
    )  # fmt: skip
    assert "\x1b" not in text
    lines = text.splitlines()
    trial_lines = [line for line in lines if TRIAL_LINE.match(line)]
    assert [TRIAL_LINE.match(line).group(1, 2) for line in trial_lines] == [  # type: ignore[union-attr]
        ("0", "COMPLETE"),
        ("1", "COMPLETE"),
        ("2", "COMPLETE"),
    ], text[-4000:]
    assert trial_lines[-1].split(" | ")[1].startswith("3/3 complete")
    # The search's own log line (stdout) comes before the trials (stderr), not after them.
    started = next(i for i, line in enumerate(lines) if line.startswith("study 't'"))
    assert started < lines.index(trial_lines[0])

    # --quiet silences the lines on resume too (the Pareto table still prints).
    text = run("resume", "t", "--trials", "4", "--quiet")
    assert not [line for line in text.splitlines() if TRIAL_LINE.match(line)], text[-4000:]
    assert "\x1b" not in text


def _etas(parallel: int, finishes: list[tuple[float, int]], total: int = 20) -> list[str]:
    """The ETA each plain line gives, trials finishing at fake-clock times (started at 0)."""
    now = [0.0]
    stream = io.StringIO()
    with Progress(total, 0, 0.5, stream=stream, parallel=parallel, clock=lambda: now[0]) as p:
        for t, done in finishes:
            now[0] = t
            p.update(done, {"val_accuracy": 0.9, "macs_ratio": 0.5}, "COMPLETE", done)
    return [line.rsplit("ETA ", 1)[1] for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("plain_env")
def test_the_eta_leaves_out_the_first_trials_start_up() -> None:
    # One at a time: 100 s of start-up in the first trial, then one every 20 s. From the first
    # trial alone the ETA would be 19 x 120 s = 38 min; the rule gives none, then 18 x 20 s.
    assert _etas(1, [(120, 1), (140, 2), (160, 3)]) == ["?", "6m00s", "5m40s"]


@pytest.mark.usefixtures("plain_env")
def test_the_eta_waits_for_more_trials_than_run_side_by_side() -> None:
    # Two at a time: pairs finish together (60/62, 120/122); the pace is one per 30 s.
    etas = _etas(2, [(60, 1), (62, 2), (120, 3), (122, 4)])
    assert etas[:2] == ["?", "?"]  # 2 s between the first two says nothing of the pace
    assert etas[2:] == ["8m30s", "5m31s"]  # (120-60)/2 x 17, (122-60)/3 x 16
    assert _etas(1, [(10, 20)], total=20) == ["0s"]


@pytest.mark.usefixtures("plain_env")
def test_the_eta_waits_when_another_driver_finished_trials_first() -> None:
    # Two drivers share a study: this one's first update already counts 3 finished trials
    # (2 of them the other driver's), and a screened-out trial leaves the count where it was.
    # Neither says anything of the pace; the next finished trial does.
    assert _etas(1, [(60, 3), (70, 3), (90, 4)]) == ["?", "?", "8m00s"]  # 30 s x 16
