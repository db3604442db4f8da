"""A study database that outlives a server restart: storage calls retried across an outage.

A search runs for hours against one database server. PostgreSQL restarts (maintenance, a
failover) and idle connections dropped by the server or a firewall must neither lose nor
duplicate results, nor kill the search. Two layers handle it:

* the connection pool checks a connection before using it and replaces connections older
  than :data:`POOL_RECYCLE_S` (``engine_kwargs`` of :func:`engine_kwargs`), so a connection
  that died while a trial trained is replaced silently;
* :class:`ReconnectingStorage` wraps the Optuna storage the study uses: a storage call that
  fails because the server is unreachable is retried with backoff for up to
  ``$AUTOPRUNE_DB_RETRY_SECONDS`` (default 60) from the first failure, so a short restart is
  only a pause. When the server stays away, the call raises one :class:`UserError` that says
  what is stored and how to resume; every later call raises it at once, so an executor that
  swallows errors (Ray Tune's callbacks) cannot go on without the database, and
  :func:`raise_if_lost` turns whatever such an executor raised into that one error.

Retrying a write is safe because a lost reply is the only way a committed write can look
failed: ``set_trial_state_values`` (Optuna's ``tell``) that finds its trial already finished
with the state and values it was writing counts as done, so no COMPLETE trial is doubled.
Retried attribute and parameter writes overwrite with the same value. A trial created or popped
from the queue by a write whose reply was lost stays RUNNING without an owner;
:func:`autoprune.study.recover_stale_trials` fails and re-enqueues it on the next run.

Optuna's heartbeats (``heartbeat_interval``) are not used: they only run inside
``Study.optimize``, and autoprune drives trials by ask/tell and recovers stale trials itself.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError
from autoprune.files import studies_dir

RETRY_ENV = "AUTOPRUNE_DB_RETRY_SECONDS"
DEFAULT_RETRY_S = 60.0
POOL_RECYCLE_S = 600  # below the idle timeouts of servers and firewalls (often an hour or less)
CONNECT_TIMEOUT_S = 10  # one connection attempt to an unreachable host, not the OS's minutes
MAX_BACKOFF_S = 5.0

T = TypeVar("T")


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a database server (not SQLite)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": POOL_RECYCLE_S}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: say nothing of it beyond its scheme
        return url.split("://", 1)[0] + "://..."


def retry_seconds() -> float:
    """How long a storage call is retried while the server is unreachable ($AUTOPRUNE_DB_RETRY_SECONDS)."""
    raw = os.environ.get(RETRY_ENV)
    if raw is None:
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{RETRY_ENV}={raw!r} is not a number of seconds >= 0; unset it or fix it")
    return value


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the server could not be reached.

    Optuna re-raises SQLAlchemy errors of a commit as ``StorageInternalError``, so the chain is
    searched. SQLAlchemy's ``OperationalError`` covers refused connections, a server shutting
    down or starting up, and connections it closed; a driver error on a connection SQLAlchemy
    found dead is marked ``connection_invalidated``.
    """
    from sqlalchemy import exc as sa_exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.OperationalError):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


class ReconnectingStorage(BaseStorage):
    """An Optuna storage whose calls wait out a database outage (see the module doc).

    Args:
        backend: the storage to call (Optuna's cached RDB storage).
        url: the database's URL, for messages (its password is never shown).
        retry_s: how long one outage is waited out; default ``$AUTOPRUNE_DB_RETRY_SECONDS``.
        log: called with a line when an outage starts and when it ends.
    """

    def __init__(
        self,
        backend: BaseStorage,
        url: str,
        retry_s: float | None = None,
        log: Callable[[str], Any] | None = None,
    ) -> None:
        self._backend = backend
        self._url = url
        self._retry_s = retry_seconds() if retry_s is None else retry_s
        self._log = log
        self._lost: UserError | None = None  # set once an outage outlasted the retry window
        self._study_names: dict[int, str] = {}  # study id -> name, as looked up
        self._searched: str | None = None  # the study this process created trials in
        self._trial_numbers: dict[int, int] = {}  # trial id -> number, as read
        self._last_recorded: int | None = None  # the last trial this process finished

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_log"] = None  # may be a bound method of a live display
        return state

    @property
    def lost(self) -> UserError | None:
        """The error raised when the server stayed away longer than the retry window."""
        return self._lost

    def _emit(self, line: str) -> None:
        if self._log is not None:
            self._log(line)
        else:
            print(f"autoprune: {line}", file=sys.stderr, flush=True)

    def _retry(self, call: Callable[[], T]) -> T:
        if self._lost is not None:
            raise self._lost
        started: float | None = None
        delay = 0.5
        while True:
            try:
                result = call()
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    self._emit(
                        f"lost the connection to the study database {masked(self._url)} "
                        f"({_first_line(exc)}); retrying for up to {self._retry_s:g} s"
                    )
                left = started + self._retry_s - now
                if left <= 0:
                    self._lost = self._gave_up(exc)
                    raise self._lost from exc
                time.sleep(min(delay, left))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            if started is not None:
                self._emit(f"reconnected after {time.monotonic() - started:.1f} s")
            return result

    def _gave_up(self, exc: BaseException) -> UserError:
        url = masked(self._url)
        where = (
            f"the study is intact up to trial {self._last_recorded} (every trial recorded before "
            "the outage is stored; one left RUNNING is re-run on resume)"
            if self._last_recorded is not None
            else "every trial recorded before the outage is stored"
        )
        then = (
            f"run `autoprune resume {self._searched} --storage {url}` when the server is back"
            if self._searched is not None
            else "run the command again when the server is back"
        )
        return UserError(
            f"lost the connection to the study database {url} and it did not come back within "
            f"{self._retry_s:g} s ({_first_line(exc)}); {where}; {then} "
            f"(${RETRY_ENV} sets how long to wait)"
        )

    def _seen_trial(self, trial: FrozenTrial) -> FrozenTrial:
        self._trial_numbers[trial._trial_id] = trial.number
        return trial

    # ----------------------------------------------------------------------- studies

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        study_id = self._retry(lambda: self._backend.create_new_study(directions, study_name))
        if study_name is not None:
            self._study_names[study_id] = study_name
        return study_id

    def delete_study(self, study_id: int) -> None:
        self._retry(lambda: self._backend.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self._backend.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self._backend.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        study_id = self._retry(lambda: self._backend.get_study_id_from_name(study_name))
        self._study_names[study_id] = study_name
        return study_id

    def get_study_name_from_id(self, study_id: int) -> str:
        name = self._retry(lambda: self._backend.get_study_name_from_id(study_id))
        self._study_names[study_id] = name
        return name

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retry(lambda: self._backend.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: self._backend.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: self._backend.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._retry(self._backend.get_all_studies)

    # ----------------------------------------------------------------------- trials

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = self._retry(lambda: self._backend.create_new_trial(study_id, template_trial))
        self._searched = self._study_names.get(study_id, self._searched)
        return trial_id

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._retry(
            lambda: self._backend.set_trial_param(
                trial_id, param_name, param_value_internal, distribution
            )
        )

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry(
            lambda: self._backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        )

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        attempts = 0

        def write() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return self._backend.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # An earlier attempt committed and only its reply was lost: done, not doubled.
                if attempts > 1 and _stored_as(self._backend.get_trial(trial_id), state, values):
                    return True
                raise

        updated = self._retry(write)
        if updated and state.is_finished() and trial_id in self._trial_numbers:
            self._last_recorded = self._trial_numbers[trial_id]
        return updated

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._retry(
            lambda: self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
        )

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self._backend.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self._backend.set_trial_system_attr(trial_id, key, value))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._seen_trial(self._retry(lambda: self._backend.get_trial(trial_id)))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._retry(lambda: self._backend.get_all_trials(study_id, deepcopy, states))

    def remove_session(self) -> None:
        self._backend.remove_session()


def _stored_as(trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> bool:
    if trial.state != state:
        return False
    if values is None:
        return True
    stored = trial.values or []
    return len(stored) == len(values) and all(
        a == b or math.isclose(a, b, rel_tol=1e-12) for a, b in zip(stored, values, strict=True)
    )


def _first_line(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None:  # the driver's own words, not Optuna's wrapper
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextmanager
def raise_if_lost(storage: BaseStorage) -> Iterator[None]:
    """Around an executor: if ``storage`` lost its server for good, raise that one clear error.

    An executor may swallow a storage error (Ray Tune logs an exception raised in a searcher
    callback and goes on) or re-raise it wrapped; either way the search stops with the
    :class:`ReconnectingStorage`'s message. Other errors pass unchanged.
    """
    try:
        yield
    except Exception:
        if isinstance(storage, ReconnectingStorage) and storage.lost is not None:
            raise storage.lost from None
        raise
    if isinstance(storage, ReconnectingStorage) and storage.lost is not None:
        raise storage.lost


# ------------------------------------------------------------------ opening a storage


def default_storage_url() -> str:
    return f"sqlite:///{studies_dir() / 'autoprune.db'}"


def open_storage(url: str | None) -> BaseStorage:
    """An Optuna RDB storage for a SQLAlchemy URL (default: SQLite under studies/).

    A database server's storage waits out a restart (:class:`~autoprune.storage.ReconnectingStorage`).

    Raises:
        UserError: the URL is malformed, its driver is missing, or the database cannot be opened.
    """
    url = url or default_storage_url()
    if url.startswith("sqlite:///"):
        db_path = Path(url[len("sqlite:///") :])
        if url == default_storage_url():
            db_path.parent.mkdir(parents=True, exist_ok=True)
        elif str(db_path) not in ("", ":memory:") and not db_path.parent.is_dir():
            raise UserError(
                f"--storage {url}: folder {db_path.parent} does not exist; create it or fix the path"
            )
    try:
        rdb = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except ImportError as exc:
        raise UserError(
            f"--storage {url}: the database driver is not installed ({exc}); for PostgreSQL install autoprune[postgres]"
        ) from exc
    except Exception as exc:
        raise UserError(
            f"--storage {url} cannot be opened: {type(exc).__name__}: {exc}".split("\n")[0]
        ) from exc
    if url.startswith("sqlite"):
        return rdb
    # A database server may restart or drop idle connections during an hours-long search.
    return ReconnectingStorage(optuna.storages.get_storage(rdb), url)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return engine_kwargs(url)
