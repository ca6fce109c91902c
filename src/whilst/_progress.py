"""Progress while a run goes: a snapshot of its counters, ten times a second.

The scheduler keeps a few counters it needs anyway; a timer on its loop reads
them and hands a :class:`Progress` to a callable: the ``rich`` bar on stderr
(``progress=True``) or the user's own. Nothing is done per task, so a run of
tiny tasks pays nothing for its progress.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Seconds between two progress snapshots.
EVERY = 0.1


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a run has come.

    Attributes:
        done: tasks ended (ok, failed, skipped...).
        total: tasks in all, when the input has a length; else None.
        failed: tasks ended without a value.
        retries: attempts that failed and were followed by another.
        in_flight: tasks read from the input and not ended: running, in a batch
            on its way to a worker, or waiting for a retry.
        elapsed: seconds since the run started.
        finished: True for the last snapshot, when the run is over.
    """

    done: int
    total: int | None
    failed: int
    retries: int
    in_flight: int
    elapsed: float
    finished: bool = False

    @property
    def rate(self) -> float:
        """Tasks ended per second, so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None when unknown."""
        if self.total is None or not self.done:
            return None
        return max(self.total - self.done, 0) / self.rate


ProgressCallback = Callable[[Progress], Any]


def progress_callback(option: object) -> ProgressCallback | None:
    """What ``progress=`` asks for: None (off), the rich bar (``True``; ``"auto"``: when
    stderr is a terminal), or the user's callable."""
    if option is None or option is False:
        return None
    if option is True:
        return Bar()
    if option == "auto":  # the command line's default: a bar only for a person watching
        return Bar() if sys.stderr.isatty() else None
    if callable(option):
        return option
    from ._errors import UsageTypeError

    raise UsageTypeError(
        f"progress must be True, False, 'auto' or a function taking a whilst.Progress, "
        f"got {option!r}"
    )


class Bar:
    """A ``rich`` progress bar on stderr: done/total, rate, ETA, in flight,
    failures and retries. On a terminal it redraws in place; elsewhere (a CI
    log) it prints only the final line."""

    def __init__(self, file: Any = None) -> None:
        self._file = file
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, p: Progress) -> None:
        if self._progress is None:
            self._start(p)
        self._progress.update(
            self._task,
            completed=p.done,
            total=p.total,
            fields=_fields(p),
        )
        if p.finished:
            self._progress.stop()

    def _start(self, p: Progress) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=self._file or sys.stderr)
        self._progress = Progress(
            TextColumn("[bold]whilst"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fields]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            refresh_per_second=10,
            transient=False,
        )
        self._task = self._progress.add_task("run", total=p.total, fields=_fields(p))
        self._progress.start()


def _fields(p: Progress) -> str:
    text = f"{p.rate:,.0f}/s, {p.in_flight} in flight"
    if p.failed:
        text += f", [red]{p.failed} not ok[/]"  # (failed, timed out, cancelled...)
    if p.retries:
        text += f", {p.retries} retries"
    return text
