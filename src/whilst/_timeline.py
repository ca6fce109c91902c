"""Every attempt of a run as a bar in a lane: the sink behind ``report=`` and ``trace=``.

It listens to the scheduler's events: an attempt opens when it starts and closes
when it is retried or its task finishes; each bar keeps its lane (the worker
slot that ran it: a loop slot, a thread, a process), start, end, status and
attempt number. Bars live in arrays (about 40 bytes each), item and error texts
are cut short, so a run of 100,000 tasks makes a timeline of a few megabytes.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._errors import INTERRUPTED, TaskCancelled, describe, safe_repr
from ._events import Event, EventKind
from ._result import Result, Status
from ._summary import Stats, Summary

#: Status codes of the bars, in the order pages and traces list them.
STATUSES: list[Status] = [s for s in Status if s is not Status.SKIPPED]
_CODE: dict[Status, int] = {s: i for i, s in enumerate(STATUSES)}
ITEM_TEXT = 80
ERROR_TEXT = 300


@dataclass(frozen=True, slots=True)
class Bar:
    lane: int
    start: float
    end: float
    status: Status
    index: int
    attempt: int
    item: str
    error: str | None


class Timeline:
    """The attempts of one run, in columns; call it with each event."""

    wants = frozenset({EventKind.STARTED, EventKind.RETRYING, EventKind.FINISHED})

    def __init__(self) -> None:
        self.lanes: dict[str, int] = {}
        self.lane = array("i")
        self.start = array("d")
        self.end = array("d")
        self.status = array("b")
        self.index = array("q")
        self.attempt = array("i")
        self.items: dict[int, str] = {}  # by task index
        self.errors: dict[int, str] = {}  # by bar number, for bars that did not end ok
        self.stats = Stats()  # of the final results
        self._open: dict[int, tuple[float, str, Any]] = {}  # by index: (start, worker, item)

    def __len__(self) -> int:
        return len(self.start)

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.STARTED:
            self._open[event.index] = (event.time, event.worker, event.item)
        elif kind is EventKind.RETRYING:
            assert event.result is not None
            self._close(event.result, retried=True)
        elif kind is EventKind.FINISHED:
            result = event.result
            assert result is not None
            self.stats.add_one(result)
            if result.status is not Status.SKIPPED and result.attempts:
                self._close(result, retried=False)

    def _close(self, r: Result, retried: bool) -> None:
        index = r.index
        opened = self._open.pop(index, None)
        # A batch's items all "start" when it is handed over; the result knows
        # when the worker got to this one. A retried task's result starts at its
        # first attempt; the event knows when this one began.
        start = r.start
        if opened is not None and opened[0] > start:
            start = opened[0]
        end = r.end if r.end > start else start
        text = self.items.get(index)
        if text is None:
            text = safe_repr(r.item)
            if len(text) > ITEM_TEXT:
                text = _short(text, ITEM_TEXT)
        worker = r.worker or (opened[1] if opened else "")
        self.add(worker, start, end, r.status, index, r.attempts, text, r.error)

    def stop(self, end: float) -> None:
        """The run stopped (Ctrl-C, SIGTERM, an error) while these attempts ran:
        each is drawn until ``end``, cancelled, as the journal records it."""
        stopped = TaskCancelled(INTERRUPTED)
        for index, (start, worker, item) in self._open.items():
            text = self.items.get(index) or _short(safe_repr(item), ITEM_TEXT)
            until = max(end, start)
            self.add(worker, start, until, Status.CANCELLED, index, 1, text, stopped)
            result = Result(index, item, Status.CANCELLED, None, stopped, 1, start, until)
            self.stats.add_one(result)
        self._open.clear()

    def add(
        self,
        worker: str,
        start: float,
        end: float,
        status: Status,
        index: int,
        attempt: int,
        item: str,
        error: BaseException | None,
    ) -> None:
        """One bar; ``item`` is the task's text, ``error`` is kept as short text."""
        lane = self.lanes.get(worker)
        if lane is None:
            lane = self.lanes[worker] = len(self.lanes)
        if error is not None:
            self.errors[len(self.start)] = _short(describe(error), ERROR_TEXT)
        self.lane.append(lane)
        self.start.append(start)
        self.end.append(end)
        self.status.append(_CODE[status])
        self.index.append(index)
        self.attempt.append(attempt)
        self.items[index] = item

    def bars(self) -> Iterator[Bar]:
        for k in range(len(self.start)):
            yield Bar(
                self.lane[k],
                self.start[k],
                self.end[k],
                STATUSES[self.status[k]],
                self.index[k],
                self.attempt[k],
                self.items.get(self.index[k], ""),
                self.errors.get(k),
            )

    def lane_order(self) -> tuple[list[str], list[int]]:
        """Lane names in natural order (``loop-2`` before ``loop-10``), and each
        lane's place in that order."""
        names = sorted(self.lanes, key=_natural)
        place = {name: k for k, name in enumerate(names)}
        return names, [place[name] for name in sorted(self.lanes, key=self.lanes.__getitem__)]

    def peak(self) -> int:
        """Most bars overlapping at any moment."""
        edges = sorted([(t, 1) for t in self.start] + [(t, -1) for t in self.end])
        running = peak = 0
        for _, step in edges:  # an end before a start at the same moment: -1 sorts first
            running += step
            peak = max(peak, running)
        return peak


def from_journal(path: str | os.PathLike[str]) -> tuple[Timeline, Summary]:
    """A journal's records as a timeline (one bar per task, its last attempt's
    record: a journal keeps no earlier attempts) and their summary."""
    from ._journal import Journal

    timeline = Timeline()
    results = []
    with Journal(path, values=False) as journal:
        for r in journal:
            results.append(r)
            if r.attempts:
                text = _short(str(r.item), ITEM_TEXT)  # the journal keeps the item's repr
                timeline.add(r.worker, r.start, r.end, r.status, r.index, r.attempts, text, r.error)
        runs, wall = journal._runs()  # a resume days later: not days of wall time
    timeline.stats.add(results)
    modes = sorted({r.mode for r in results if r.mode})
    written = f"{runs} runs" if runs != 1 else "one run"
    summary = timeline.stats.summary(
        wall=wall,
        mode=", ".join(modes) or "-",
        mode_reason=f"read from the journal {os.fspath(path)}, written by {written}",
        limit=len(timeline.lanes),
        peak=timeline.peak(),
        retries=sum(max(r.attempts - 1, 0) for r in results),
    )
    return timeline, summary


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
