"""Search progress on the terminal: finished/total trials, best feasible accuracy, elapsed, ETA."""

from __future__ import annotations

import time
from typing import Any


class Progress:
    """A live line on stderr, updated as each trial finishes (``quiet`` hides it)."""

    def __init__(self, total: int, done: int, budget: float, quiet: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.total, self.start_done, self.budget = total, done, budget
        self.started = time.perf_counter()
        self.best: float | None = None
        self.failed = 0
        self.screened = 0  # candidates the proxy screened out (not fine-tuned)
        self.console = Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            disable=quiet,
            transient=False,
        )
        self.task = self.bar.add_task("search", total=total, completed=done, status="", eta="?")

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def update(self, done: int, result: dict[str, Any] | None, state: str) -> None:
        """Count a finished trial (COMPLETE, PRUNED by screening, or FAIL); ``done``: COMPLETE total."""
        if state == "FAIL":
            self.failed += 1
        elif state == "PRUNED":
            self.screened += 1
        elif result and result.get("macs_ratio", 2.0) <= self.budget:
            acc = float(result["val_accuracy"])
            self.best = acc if self.best is None else max(self.best, acc)
        new = done - self.start_done
        elapsed = time.perf_counter() - self.started
        remaining = self.total - done
        eta = (
            f"{elapsed / new * remaining:.0f}s"
            if new > 0 and remaining > 0
            else ("0s" if remaining <= 0 else "?")
        )
        best = f"{self.best:.4f}" if self.best is not None else "-"
        status = (
            f"best feasible val acc {best}"
            + (f"  screened out {self.screened}" if self.screened else "")
            + (f"  failed {self.failed}" if self.failed else "")
        )
        self.bar.update(self.task, completed=done, status=status, eta=eta)
