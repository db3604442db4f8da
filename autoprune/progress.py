"""Search progress on stderr: finished/total trials, best feasible accuracy, elapsed, ETA.

On a terminal it is a live rich bar. Anywhere else (a log file, a pipe, ``TERM=dumb``) a bar
is drawn once at the end at best, so every finished trial gets one plain line instead, with
no escape codes::

    trial 4 COMPLETE val acc 0.9712 MACs 0.498 | 3/20 complete, elapsed 41s, ETA 3m52s
    trial 5 PRUNED(screened) val acc - MACs 0.501 proxy acc 0.9012 | 3/20 complete, ...
    trial 6 FAIL val acc - MACs - | 3/20 complete, ... | ValueError: ...

``NO_COLOR`` keeps the bar, uncoloured (rich reads it); ``quiet`` shows neither.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

REASON_CHARS = 160  # a FAIL line keeps the first line of its reason, cut to this length


class Progress:
    """Counts finished trials on ``stream`` (default stderr): a live bar or one line per trial.

    Use it as a context manager around the executor; the executor calls :meth:`update` once
    per recorded trial.
    """

    def __init__(
        self,
        total: int,
        done: int,
        budget: float | dict[str, float],
        quiet: bool = False,
        stream: TextIO | None = None,
        parallel: int = 1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """
        Args:
            total: the study's COMPLETE trials when the search is done.
            done: COMPLETE trials already stored (a resumed search).
            budget: the MACs ratio's bound, or the bound per budgeted metric.
            parallel: trials that run at once: the ETA waits for one more than this to finish.
            clock: seconds (a test's fake clock).
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.total, self.start_done = total, done
        # Largest allowed ratio per budgeted metric (a number: the MACs ratio's).
        self.budgets = {"macs_ratio": budget} if isinstance(budget, (int, float)) else dict(budget)
        self.clock = clock
        self.started = clock()
        self.parallel = max(1, parallel)
        self.first: tuple[float, int] | None = None  # (time, trials done) at the first finish
        self.best: float | None = None
        self.failed = 0
        self.screened = 0  # candidates the proxy screened out (not fine-tuned)
        self.stream = stream if stream is not None else sys.stderr
        self.console = Console(file=self.stream)
        live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.quiet = quiet
        self.lines = not quiet and not live  # one plain line per trial instead of the bar
        self.bar = RichProgress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=quiet or self.lines,
            transient=False,
        )
        self.task = self.bar.add_task("search", total=total, completed=done, status="", eta="?")

    def __enter__(self) -> Progress:
        if self.lines:
            sys.stdout.flush()  # the search's log lines (stdout) come before the first trial's
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def note(self, text: str) -> None:
        """Say one line about the search (above the bar when it is live; nothing when quiet)."""
        if self.quiet:
            return
        if self.lines:
            sys.stdout.flush()
            self.stream.write(f"{text}\n")
            self.stream.flush()
        else:
            self.bar.console.print(text, markup=False, highlight=False)

    def update(
        self,
        done: int,
        result: dict[str, Any] | None,
        state: str,
        number: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Count a finished trial.

        Args:
            done: the study's COMPLETE trials now (other drivers' included).
            result: the trial's report (``val_accuracy``, ``macs_ratio``, ...), or None.
            state: COMPLETE, PRUNED (screened out by the proxy) or FAIL.
            number: the trial's number in the study (shown in plain lines).
            reason: why a FAIL failed (shown in plain lines).
        """
        if state == "FAIL":
            self.failed += 1
        elif state == "PRUNED":
            self.screened += 1
        elif result and all(
            float(result.get(metric, 2.0)) <= bound for metric, bound in self.budgets.items()
        ):
            acc = float(result["val_accuracy"])
            self.best = acc if self.best is None else max(self.best, acc)
        now = self.clock()
        new = done - self.start_done
        elapsed = now - self.started
        remaining = self.total - done
        if new > 0 and self.first is None:
            self.first = (now, new)
        eta = "0s" if remaining <= 0 else self.eta(now, new, remaining)
        if self.lines:
            line = trial_line(number, state, result, reason)
            counts = f"{done}/{self.total} complete, elapsed {duration(elapsed)}, ETA {eta}"
            sys.stdout.flush()
            self.stream.write(f"{line} | {counts}{f' | {reason_text(reason)}' if reason else ''}\n")
            self.stream.flush()
            return
        best = f"{self.best:.4f}" if self.best is not None else "-"
        status = (
            f"best feasible val acc {best}"
            + (f"  screened out {self.screened}" if self.screened else "")
            + (f"  failed {self.failed}" if self.failed else "")
        )
        self.bar.update(self.task, completed=done, status=status, eta=eta)

    def eta(self, now: float, new: int, remaining: int) -> str:
        """Time left at the pace of the trials finished since the first one: the first trial
        carries the start-up (Ray, workers, caches) and trials that ran side by side finish
        together, so none is given until ``parallel + 1`` trials have finished. Another driver's
        trials count too, so the first update may already see more than that: the pace then
        waits for one more."""
        if self.first is None or new <= self.parallel:
            return "?"
        since, counted = self.first
        if new <= counted:
            return "?"
        return duration((now - since) / (new - counted) * remaining)


def trial_line(
    number: int | None, state: str, result: dict[str, Any] | None, reason: str | None = None
) -> str:
    """``trial N STATE val acc X MACs Y`` (``-`` for what the trial did not measure)."""
    result = result or {}
    label = "PRUNED(screened)" if state == "PRUNED" else state
    parts = [f"trial {number if number is not None else '?'} {label}"]
    parts.append(f"val acc {_number(result.get('val_accuracy'), 4)}")
    parts.append(f"MACs {_number(result.get('macs_ratio'), 3)}")
    if result.get("latency_ratio") is not None:
        parts.append(f"latency {_number(result.get('latency_ratio'), 3)}")
    if state == "PRUNED":
        parts.append(f"proxy acc {_number(result.get('proxy_accuracy'), 4)}")
    return " ".join(parts)


def reason_text(reason: str) -> str:
    """A FAIL reason on one line: its first line, cut to :data:`REASON_CHARS`."""
    first = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    return first if len(first) <= REASON_CHARS else first[: REASON_CHARS - 3] + "..."


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _number(value: Any, digits: int) -> str:
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return f"{float(value):.{digits}f}"
    return "-"
