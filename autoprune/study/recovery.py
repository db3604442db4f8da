"""Crash recovery: which driver owns a RUNNING trial, and re-queuing the trials of a dead one.

Each trial records the driver process that asked for it (``host:pid``). A later run fails
the RUNNING trials of a driver that is gone and enqueues their params once more; trials of a
live driver, or of one on another host, are left alone (a shared PostgreSQL study may have
several drivers at once).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.failures import Failure
from autoprune.records import TrialRecord
from autoprune.study._optuna import storage_of


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_driver(trial: optuna.Trial) -> None:
    """Record which process asked for the trial, so a later run can tell a crash from a live peer."""
    for key, value in TrialRecord(driver=driver_id()).to_attrs().items():
        trial.set_user_attr(key, value)


def _driver_alive(owner: str | None) -> bool | None:
    """True/False for a driver on this host; None when it ran elsewhere (cannot tell)."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    # This process runs one search at a time, so its own RUNNING trials are leftovers.
    return int(pid) != os.getpid()


def recover_stale_trials(study: optuna.Study, log: Any = print) -> int:
    """Mark trials left RUNNING by a dead driver as FAIL and enqueue their params once again.

    Trials whose driver is another live process on this host, or a process on another host,
    are left alone (a shared PostgreSQL study may have several drivers at once).
    """
    # A trial's owner is dead, so no Trial object of this process can finish it: its state and
    # reason are written through the storage, addressed by the public (study, number) lookup.
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = TrialRecord.from_trial(trial)
        alive = _driver_alive(record.driver)
        if alive is None:
            log(f"trial {trial.number} is RUNNING under {record.driver} (another host): left alone")
            continue
        if alive:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        died = Failure("driver_died", "driver died while the trial ran; re-enqueued")
        for key, value in died.record().to_attrs().items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if trial.params:
            # Still that baseline or that ladder rung; a retry keeps its target: explore
            # (sampled) or the budget.
            retry = record.placement().with_(
                retry_of=trial.number, explore="target_macs_ratio" in trial.params
            )
            study.enqueue_trial(trial.params, user_attrs=retry.to_attrs())
        recovered += 1
    if recovered:
        log(
            f"recovered {recovered} trial(s) left RUNNING by a crashed search: marked FAIL and re-enqueued"
        )
    return recovered
