"""Progress for long work: a rich bar on a terminal, a plain line every tenth of the work elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressReporter:
    """A rich progress bar on a terminal; elsewhere (logs, CI) a plain line every tenth of the work."""

    def __init__(self, description: str, total: int, out: Console) -> None:
        self.description, self.total, self.out = description, max(total, 1), out
        self.done, self.next_report, self.started = 0, 0.1, time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.bar: Progress | None = None
        if out.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=out,
            )
            self.job = self.bar.add_task(description, total=total, status="")

    def __enter__(self) -> ProgressReporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, n: int, status: str = "") -> None:
        """Count `n` more units done; `status` (e.g. "reward 0.41") is shown beside the bar."""
        self.done += n
        if self.bar is not None:
            self.bar.update(self.job, advance=n, status=status)
            return
        now = time.perf_counter()
        if self.first is None:  # rate from the first unit on: setup before it is not work
            self.first = (now, self.done)
        share = self.done / self.total
        if share >= self.next_report or self.done >= self.total:
            elapsed = now - self.started
            since, done_then = self.first
            rate = (now - since) / (self.done - done_then) if self.done > done_then else elapsed / self.done
            eta = rate * (self.total - self.done)
            line = f"{self.description} {self.done}/{self.total} ({share:.0%}) {elapsed:.0f}s elapsed, eta {eta:.0f}s"
            self.out.print(f"{line} {status}".rstrip(), highlight=False)
            while self.next_report <= share:
                self.next_report += 0.1
