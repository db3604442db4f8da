"""``autoprune dashboard``: optuna-dashboard on the study database, on loopback by default.

It serves the studies (its study-list API answers with ours), stops on Ctrl-C with status 0
and no traceback, and refuses with one line and status 2 when the extra is missing or the
port is taken.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from autoprune import study as studies
from autoprune.cli import main
from autoprune.config import SearchConfig


def _study_url(tmp_path: Path) -> str:
    """A storage holding one autoprune study named 'dash' (no trials: nothing to train)."""
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    study = studies.create_or_load(
        studies.open_storage(url), "dash", SearchConfig(), optuna.samplers.RandomSampler(0)
    )
    studies.save_config(study, SearchConfig())
    return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_dashboard_serves_the_studies_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")
    url, port = _study_url(tmp_path), _free_port()
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoprune", "dashboard", "--storage", url, "--port", str(port)],
            cwd=tmp_path,
            env=dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            listed = None
            deadline = time.monotonic() + 120
            while listed is None and time.monotonic() < deadline:
                assert proc.poll() is None, stderr.read_text()
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/api/studies", timeout=5
                    ) as r:
                        listed = json.load(r)
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.5)
            assert listed is not None, f"no answer on port {port}: {stderr.read_text()}"
            names = [s["study_name"] for s in listed["study_summaries"]]
            assert names == ["dash"]
            # A browser holds a connection open, a request half sent (the server, one thread,
            # waits on it); Ctrl-C must still stop it within 2 s.
            browser = socket.create_connection(("127.0.0.1", port))
            browser.sendall(b"GET /dashboard HTTP/1.1\r\nHost: localhost\r\n")
            time.sleep(0.5)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert proc.wait(timeout=30) == 0
            assert time.monotonic() - sent <= 2.0, "the dashboard took over 2 s to exit"
            browser.close()
        finally:
            if proc.poll() is None:
                proc.kill()
    printed = stderr.read_text()
    assert f"http://127.0.0.1:{port}/" in printed
    assert "Traceback" not in printed


def test_a_port_in_use_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")
    url = _study_url(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--storage", url, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "in use" in err and "--port" in err
    assert "Traceback" not in err


def test_without_the_extra_it_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # makes the import fail
    assert main(["dashboard", "--storage", _study_url(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'autoprune[dashboard]'" in err and len(err.strip().splitlines()) == 1
