"""The one place autoprune reaches into Optuna's private parts, each reach documented.

Optuna offers no public accessor for what these need. Should a future Optuna move them, the
writes fall back to its public calls (one transaction per attribute) and the rest fails here,
in one module, rather than across the package.
"""

from __future__ import annotations

from typing import Any

import optuna


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (Optuna's private ``Study._storage``).

    autoprune needs it to hand Ray's ``OptunaSearch`` the very storage the study lives in and
    to fail the trials of a dead driver.
    """
    return study._storage


def cached_metric_names(study: optuna.Study) -> list[str] | None:
    """The metric names memoised on this ``Study`` object (each read costs a query)."""
    names = getattr(study, "_autoprune_metric_names", None)
    return list(names) if names is not None else None


def cache_metric_names(study: optuna.Study, names: list[str]) -> None:
    study._autoprune_metric_names = list(names)  # type: ignore[attr-defined]


def set_user_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attrs of a running trial, in one database transaction where possible.

    Optuna writes every user attr in a transaction (a commit) of its own and offers no call for
    several; a trial's result is a dozen. On a study in an RDB storage (SQLite by default) they
    are written in one transaction, through the helpers Optuna's own ``set_trial_user_attr``
    uses (``_create_scoped_session``, ``_set_trial_attr_without_commit``, the trial's
    ``_trial_id`` and its ``_cached_frozen_trial``); on any other storage, or should those
    helpers change, one call per attr. A :class:`~autoprune.storage.ReconnectingStorage` keeps
    its calls one by one, so each is retried on its own across an outage.
    """
    if not attrs:
        return
    rdb = _rdb_backend(storage_of(study))
    if rdb is not None:
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(rdb.scoped_session, True) as session:
                for key, value in attrs.items():
                    rdb._set_trial_attr_without_commit(
                        session, models.TrialUserAttributeModel, trial._trial_id, key, value
                    )
            trial._cached_frozen_trial.user_attrs.update(attrs)  # what set_user_attr keeps
            return
        except (ImportError, AttributeError, TypeError):  # another Optuna: one call per attr
            pass
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def _rdb_backend(storage: Any) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's caching wrapper (None for any other storage)."""
    if type(storage).__name__ == "_CachedStorage":  # what a study opened on an RDB storage uses
        storage = getattr(storage, "_backend", None)
    return storage if isinstance(storage, optuna.storages.RDBStorage) else None
