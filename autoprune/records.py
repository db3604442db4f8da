"""TrialRecord: the one reader and writer of what autoprune stores on an Optuna trial.

A trial's objectives are Optuna's values; everything else autoprune knows of a trial lives in
its user attributes: the applied policy, what the worker measured (ratios, latency, proxy,
timings), where it ran, why it failed, and its place in the search (a baseline's name, a retry,
a ladder rung). Their keys are spelled here and nowhere else; every module reads a trial
through :meth:`TrialRecord.from_trial` and writes one through :meth:`TrialRecord.to_attrs`
(``tests/test_records.py`` greps the package for stray keys), in the spirit of Optuna's own
``FrozenTrial``. Importing this module loads neither torch nor Optuna (a policy is plain data), so
workers and the failure module share the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from autoprune.policy import Policy


class _Trial(Protocol):
    """An Optuna trial, frozen or running: what a record is read from."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


# Where the search put a trial, under keys namespaced so they cannot meet a user's own.
BASELINE_ATTR = "autoprune.baseline"  # a baseline trial: its name, e.g. "uniform-l1"
RETRY_ATTR = "autoprune.retry_of"  # a re-enqueued trial: the number of the one it retries
EXPLORE_ATTR = "autoprune.explore"  # a retry: whether the original sampled its target
RUNG_ATTR = "autoprune.rung"  # a ladder rung (--rungs): eta**rung times the fine-tune
PARENT_ATTR = "autoprune.promoted_from"  # a ladder rung: the trial it was promoted from
DRIVER_ATTR = "autoprune.driver"  # host:pid of the driver that asked for the trial

# Field name -> user-attr key where the two differ; every other field is stored under its name.
_KEYS = {
    "baseline": BASELINE_ATTR,
    "retry_of": RETRY_ATTR,
    "explore": EXPLORE_ATTR,
    "rung": RUNG_ATTR,
    "promoted_from": PARENT_ATTR,
    "driver": DRIVER_ATTR,
}
# What a worker's report holds that a trial keeps (besides the objectives, told as values),
# under the same names in the report and in the record.
MEASURED = (
    "policy", "timings", "params_ratio", "macs", "params", "val_loss", "counters", "macs_ratio",
    "proxy_accuracy", "proxy_loss", "bracket", "wall", "overhead",
    "node_id", "node_ip",  # the Ray node the trial ran on (Ray executor only)
    # --objective latency|both: median ms of the pruned and the base model, their ratio, where
    "latency_ms", "base_latency_ms", "latency_ratio", "latency_device",
)  # fmt: skip


@dataclass(frozen=True)
class TrialRecord:
    """autoprune's attributes of one trial; None (or absent) where the trial has none."""

    # where the search put it
    baseline: str | None = None
    retry_of: int | None = None
    explore: bool | None = None
    rung: int | None = None  # set on ladder rungs only (see :attr:`level`)
    promoted_from: int | None = None
    driver: str | None = None
    # what its worker measured (:data:`MEASURED`)
    policy: dict[str, Any] | None = None  # the applied policy, as :meth:`Policy.to_dict` wrote it
    timings: dict[str, float] | None = None  # seconds per phase
    counters: dict[str, Any] | None = None
    macs_ratio: float | None = None
    params_ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    val_loss: float | None = None
    proxy_accuracy: float | None = None
    proxy_loss: float | None = None
    latency_ms: float | None = None
    base_latency_ms: float | None = None
    latency_ratio: float | None = None
    latency_device: str | None = None
    bracket: int | None = None  # number of its bracket's first trial
    wall: float | None = None  # the driver's wall seconds for the bracket (its fine-tuned trial)
    overhead: float | None = None  # of that wall, what the candidates' phases do not explain
    node_id: str | None = None
    node_ip: str | None = None
    # why it failed (:mod:`autoprune.failures`; a worker's failure report uses these keys too)
    error: str | None = None
    error_kind: str | None = None
    traceback: str | None = None

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        """The record of a trial's user attrs (keys autoprune does not know are ignored)."""
        values = {}
        for f in fields(cls):
            key = _KEYS.get(f.name, f.name)
            if key in attrs:
                values[f.name] = attrs[key]
        return cls(**values)

    @classmethod
    def from_trial(cls, trial: _Trial) -> TrialRecord:
        return cls.from_attrs(trial.user_attrs)

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> TrialRecord:
        """What a trial keeps of its worker's report (:data:`MEASURED`, the set ones)."""
        return cls(**{k: report[k] for k in MEASURED if report.get(k) is not None})

    def to_attrs(self) -> dict[str, Any]:
        """The user attrs that store this record: every field that is set, under its key."""
        return {
            _KEYS.get(f.name, f.name): value
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }

    def placement(self) -> TrialRecord:
        """Only where the search put the trial: what a re-run of its params must carry again
        (a retry stays that baseline, that ladder rung)."""
        return TrialRecord(baseline=self.baseline, rung=self.rung, promoted_from=self.promoted_from)

    def with_(self, **changes: Any) -> TrialRecord:
        return replace(self, **changes)

    @property
    def level(self) -> int:
        """The ladder rung the trial was fine-tuned at (0: the search's own length)."""
        return int(self.rung or 0)

    @property
    def is_baseline(self) -> bool:
        return bool(self.baseline)

    @property
    def is_promoted(self) -> bool:
        """A ladder rung: its parent's params with a longer fine-tune."""
        return self.promoted_from is not None or self.rung is not None

    def metric(self, name: str) -> float | None:
        """A measured ratio or latency (``macs_ratio``, ``latency_ms``, ...); None when unset."""
        value = getattr(self, name, None) if name in MEASURED else None
        return float(value) if isinstance(value, (int, float)) else None

    def applied_policy(self, number: int) -> Policy | None:
        """The applied policy trial ``number`` ran (None when it stored none)."""
        if self.policy is None:
            return None
        return Policy.from_dict(self.policy, source=f"trial {number}")
