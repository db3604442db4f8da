"""A storage that waits out a database outage: retries, a tell whose reply was lost, giving up.

The outage is injected into a SQLite study (a call raises the error SQLAlchemy raises when a
server goes away); tests/test_postgres.py restarts a real PostgreSQL server under a search.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from autoprune.errors import UserError
from autoprune.storage import ReconnectingStorage, connection_lost, masked, raise_if_lost

URL = "postgresql+psycopg://search:s3cret@db.example:5432/studies"


def _server_gone() -> OperationalError:
    return OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


def _study(tmp_path: Path, retry_s: float) -> tuple[optuna.Study, ReconnectingStorage, Any]:
    backend = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    lines: list[str] = []
    storage = ReconnectingStorage(backend, URL, retry_s=retry_s, log=lines.append)
    study = optuna.create_study(
        study_name="s", storage=storage, directions=["maximize", "minimize"]
    )
    storage.lines = lines  # type: ignore[attr-defined]
    return study, storage, backend


def _fail(backend: Any, method: str, times: int, after: bool = False) -> Callable[..., Any]:
    """Make ``backend.method`` raise a lost connection ``times`` times (``after`` it ran)."""
    original = getattr(backend, method)
    left = [times]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            if after:
                original(*args, **kwargs)
            raise _server_gone()
        return original(*args, **kwargs)

    setattr(backend, method, flaky)
    return flaky


def test_a_short_outage_is_a_pause(tmp_path: Path) -> None:
    study, storage, backend = _study(tmp_path, retry_s=30)
    _fail(backend, "create_new_trial", times=2)
    trial = study.ask()
    study.tell(trial, [0.9, 0.5])
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    assert storage.lines[0].startswith(f"lost the connection to the study database {masked(URL)}")
    assert storage.lines[-1].startswith("reconnected after")


def test_a_tell_whose_reply_was_lost_is_recorded_once(tmp_path: Path) -> None:
    """The commit went through and only its reply was lost: the retry must not fail or double it."""
    study, _, backend = _study(tmp_path, retry_s=30)
    trial = study.ask()
    trial.set_user_attr("policy", {"conv1": 0.5})
    _fail(backend, "set_trial_state_values", times=1, after=True)
    study.tell(trial, [0.9, 0.5])
    trials = study.get_trials()
    assert [(t.number, t.state, t.values) for t in trials] == [(0, TrialState.COMPLETE, [0.9, 0.5])]
    assert trials[0].user_attrs == {"policy": {"conv1": 0.5}}


def test_a_tell_of_a_trial_someone_else_finished_still_fails(tmp_path: Path) -> None:
    study, storage, _ = _study(tmp_path, retry_s=30)
    trial = study.ask()
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.9, 0.5])


def test_a_long_outage_stops_with_one_clear_error_and_stays_stopped(tmp_path: Path) -> None:
    study, storage, backend = _study(tmp_path, retry_s=0.3)
    first = study.ask()
    study.tell(first, [0.9, 0.5])
    second = study.ask()
    _fail(backend, "set_trial_state_values", times=10**6)
    with pytest.raises(UserError) as raised:
        study.tell(second, [0.8, 0.4])
    message = str(raised.value)
    assert "\n" not in message and "s3cret" not in message
    assert masked(URL) in message
    assert "intact up to trial 0" in message
    assert f"autoprune resume s --storage {masked(URL)}" in message
    assert "AUTOPRUNE_DB_RETRY_SECONDS" in message
    # Every later call stops at once with the same error, even one that would succeed.
    with pytest.raises(UserError):
        study.get_trials()
    assert storage.lost is raised.value


def test_raise_if_lost_replaces_what_an_executor_made_of_the_error(tmp_path: Path) -> None:
    study, storage, backend = _study(tmp_path, retry_s=0.0)
    _fail(backend, "create_new_trial", times=1)
    with pytest.raises(UserError, match="lost the connection"), raise_if_lost(storage):
        try:
            study.ask()
        except UserError as exc:  # what Ray Tune does to an error in a searcher callback
            raise RuntimeError("TuneError: traceback ...") from exc
    with pytest.raises(RuntimeError), raise_if_lost(optuna.storages.InMemoryStorage()):
        raise RuntimeError("not a storage problem")


def test_only_connection_errors_are_retried() -> None:
    assert connection_lost(optuna.exceptions.StorageInternalError("commit")) is False
    wrapped = optuna.exceptions.StorageInternalError("commit")
    wrapped.__cause__ = _server_gone()
    assert connection_lost(wrapped)
    assert not connection_lost(ValueError("bad value"))


def test_a_bad_retry_window_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_DB_RETRY_SECONDS", "soon")
    with pytest.raises(UserError, match="AUTOPRUNE_DB_RETRY_SECONDS='soon'"):
        ReconnectingStorage(optuna.storages.InMemoryStorage(), URL)
