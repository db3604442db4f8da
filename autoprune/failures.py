"""Why a trial failed: a short machine-readable kind, a one-line reason, and for a bug its traceback.

A failed trial is told FAIL with user attrs ``error`` (the reason, one line a person reads),
``error_kind`` (one of :data:`KINDS`, for scripts and ``autoprune show``) and, when the cause is
a bug, ``traceback`` (its last frames). The kind is decided where the failure is caught:

* in the worker, around each candidate of a bracket (:func:`autoprune.evaluate.evaluate_bracket`
  calls :func:`classify`), so one candidate's failure costs only that candidate;
* on the driver, for what a worker cannot report: its process died (``worker_died``), the
  driver itself died (``driver_died``, found by the next run), or the report's metrics are not
  finite (``nan``).
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from typing import Any

import torch

from autoprune.errors import UserError
from autoprune.records import TrialRecord

KINDS = (
    "user",  # the user's settings make the trial impossible (e.g. an unreachable target)
    "nan",  # the fine-tune diverged (non-finite loss) or the metrics are not finite
    "oom",  # out of (GPU) memory
    "exception",  # a bug: an exception that is not a UserError
    "worker_died",  # the worker process died (killed, OOM killer, lost node)
    "driver_died",  # the search's own process died while the trial ran
)

# The most of a traceback kept on a trial: its last frames, enough to find the bug.
TRACEBACK_FRAMES = 4
TRACEBACK_CHARS = 2000

OOM_ADVICE = (
    "run fewer trials at once (--max-concurrent), give each more GPU (--gpus-per-trial) "
    "or use a smaller batch"
)


@dataclass(frozen=True)
class Failure:
    """A trial's failure as stored: kind, reason and (for a bug) the traceback's last frames."""

    kind: str  # one of KINDS
    message: str  # one line: what went wrong, and the fix when there is one
    traceback: str | None = None

    def record(self) -> TrialRecord:
        """What a FAIL trial carries of it."""
        return TrialRecord(error=self.message, error_kind=self.kind, traceback=self.traceback)

    def attrs(self) -> dict[str, str]:
        """The user attrs a FAIL trial carries (and a worker's failure report)."""
        return self.record().to_attrs()

    def report(self) -> dict[str, Any]:
        """A worker's report for the failed candidate.

        NaN metrics, not none: Ray Tune rejects a report without its searcher's metrics, and
        the driver records the trial FAIL with this reason whatever the metrics are.
        """
        return {
            **self.attrs(),
            "val_accuracy": float("nan"),
            "macs_ratio": float("nan"),
        }

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> Failure:
        """The failure a worker reported (:meth:`is_in` the report)."""
        record = TrialRecord.from_attrs(report)
        return cls(
            kind=str(record.error_kind or "exception"),
            message=str(record.error),
            traceback=record.traceback,
        )

    @staticmethod
    def is_in(report: dict[str, Any]) -> bool:
        """Whether a worker's report is a failure's."""
        return TrialRecord.from_attrs(report).error is not None


def classify(exc: BaseException, phase: str) -> Failure:
    """The failure an exception raised while a trial ran ``phase`` (``pruning``, ``fine-tune``).

    Order matters: a diverged fine-tune is a ``UserError`` (the CLI prints it in one line) and a
    ``FloatingPointError``; out of memory is a ``RuntimeError`` like most bugs.
    """
    first_line = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, FloatingPointError):
        return Failure("nan", f"{phase} diverged: {first_line}")
    if isinstance(exc, torch.OutOfMemoryError):
        # Torch's message runs on for a paragraph; its first two sentences say how much.
        detail = ". ".join(first_line.split(". ")[:2]).rstrip(".")
        return Failure("oom", f"out of memory during {phase} ({detail}): {OOM_ADVICE}")
    if isinstance(exc, UserError):
        return Failure("user", first_line)
    return Failure(
        "exception", f"{type(exc).__name__} during {phase}: {first_line}", short_traceback(exc)
    )


def short_traceback(exc: BaseException) -> str:
    """The last :data:`TRACEBACK_FRAMES` frames of ``exc``'s traceback, at most a few lines."""
    text = "".join(tb.format_exception(exc, limit=-TRACEBACK_FRAMES))
    return text if len(text) <= TRACEBACK_CHARS else "..." + text[-TRACEBACK_CHARS:]


def non_finite(metrics: dict[str, Any]) -> Failure:
    """A report whose objective values are missing or not finite."""
    return Failure(
        "nan",
        f"missing or non-finite metrics {metrics}: the fine-tune diverged or the evaluation overflowed",
    )
