"""Where finished results go: all kept for ``map``, or streamed for ``imap``."""

from __future__ import annotations

import asyncio
import collections
from array import array
from collections.abc import Callable, Iterator
from typing import Any

from ._modes import Outcomes
from ._result import Result, Status, batch_results

#: Records how one task ended: (index, item, status, value, error, start, end).
Record = Callable[[int, Any, Status, Any, "BaseException | None", float, float], None]


class _Columns:
    """The tasks one slot finished, kept in columns: appending to a few lists costs
    a third of building and keeping a Result object per task (which the garbage
    collector must also walk, over and over, as a big ``map`` grows)."""

    __slots__ = ("ends", "failures", "indexes", "items", "mode", "starts", "values", "worker")

    def __init__(self, mode: str, worker: str) -> None:
        self.mode, self.worker = mode, worker
        self.indexes: list[int] = []
        self.items: list[Any] = []
        self.values: list[Any] = []
        self.starts = array("d")
        self.ends = array("d")
        self.failures: dict[int, tuple[Status, BaseException | None]] = {}  # by position

    def recorder(self) -> Record:
        indexes, items, values = self.indexes.append, self.items.append, self.values.append
        starts, ends, failures = self.starts.append, self.ends.append, self.failures
        ok = Status.OK

        def record(
            index: int,
            item: Any,
            status: Status,
            value: Any,
            error: BaseException | None,
            start: float,
            end: float,
        ) -> None:
            if status is not ok:
                failures[len(self.indexes)] = (status, error)
            indexes(index)
            items(item)
            values(value)
            starts(start)
            ends(end)

        return record

    def results(self) -> Iterator[Result]:
        failures, mode, worker = self.failures, self.mode, self.worker
        for k, (index, item, value, start, end) in enumerate(
            zip(self.indexes, self.items, self.values, self.starts, self.ends, strict=True)
        ):
            status, error = failures.get(k, (Status.OK, None))
            yield Result(index, item, status, value, error, 1, start, end, mode, worker)


class Collect:
    """Keeps every result, for ``map``: memory grows with the input, by its nature.

    Results stay in the columns they were recorded in (per slot, or per batch as
    a mode returned it); a Result per task is built only if one is asked for (a
    task failed), so a ``map`` whose tasks all succeed pays for its values and
    little more.
    """

    bounded = full = False  # never holds the scheduler back
    on_room: Callable[[], None] | None = None

    def __init__(self) -> None:
        self._columns: list[_Columns] = []
        self._batches: list[tuple[int, list[Any], Outcomes, str, str]] = []
        self._results: list[Result] = []  # from the policy path, built already

    def recorder(self, mode: str, worker: str) -> Record:
        columns = _Columns(mode, worker)
        self._columns.append(columns)
        return columns.recorder()

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        self._batches.append((first, items, outcomes, mode, worker))

    def add(self, result: Result) -> None:
        self._results.append(result)

    @property
    def failed(self) -> bool:
        """Whether any task did not succeed."""
        return (
            any(c.failures for c in self._columns)
            or any(b[2].errors for b in self._batches)
            or any(not r.ok for r in self._results)
        )

    def values(self) -> list[Any]:
        """Every task's value, in input order."""
        n = sum(len(c.indexes) for c in self._columns) + sum(len(b[1]) for b in self._batches)
        out: list[Any] = [None] * (n + len(self._results))
        for r in self._results:
            out[r.index] = r.value
        for columns in self._columns:
            for index, value in zip(columns.indexes, columns.values, strict=True):
                out[index] = value
        for first, items, outcomes, _, _ in self._batches:
            out[first : first + len(items)] = outcomes.values
        return out

    def in_order(self) -> list[Result]:
        """Every task's Result, in input order."""
        results: dict[int, Result] = {}
        for columns in self._columns:
            results.update((r.index, r) for r in columns.results())
        for batch in self._batches:
            results.update((r.index, r) for r in batch_results(*batch))
        results.update((r.index, r) for r in self._results)
        return [results[i] for i in range(len(results))]

    async def room(self) -> None:
        pass

    def fit_batch(self, size: int, slots: int) -> None:
        pass

    def finish(self) -> None:
        pass


def window_for(limit: int) -> int:
    """How many finished results an ``imap`` may hold before the scheduler waits.

    Four rounds of ``limit`` results: while the caller is away, every slot can
    finish a task or two without waiting for room (each wait costs a future),
    and memory still grows with ``limit``, never with the input.
    """
    return 4 * limit + 16


class Stream:
    """Hands results to a consumer in input order or as completed, holding at most
    ``window`` of them: when the consumer falls behind (or, in order, one slow task
    holds back the ones after it), the scheduler stops starting tasks until there is
    room again. That is what keeps ``imap`` memory bounded by ``limit``."""

    bounded = True

    def __init__(self, *, ordered: bool, window: int) -> None:
        self.ordered = ordered
        self.window = window
        self.held = 0
        self.done = False
        self._ready: collections.deque[Result] = collections.deque()
        self._early: dict[int, Result] = {}  # ordered: finished before their turn
        self._next = 0
        self._reader: asyncio.Future[None] | None = None
        self._waiting: list[asyncio.Future[None]] = []  # slots waiting for room
        self._unblocked = False  # the run is ending with an error: nothing waits for room
        self.on_room: Callable[[], None] | None = None  # told when the reader makes room

    @property
    def full(self) -> bool:
        return self.held >= self.window

    def recorder(self, mode: str, worker: str) -> Record:
        add = self.add

        def record(
            index: int,
            item: Any,
            status: Status,
            value: Any,
            error: BaseException | None,
            start: float,
            end: float,
        ) -> None:
            add(Result(index, item, status, value, error, 1, start, end, mode, worker))

        return record

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        for result in batch_results(first, items, outcomes, mode, worker):
            self.add(result)

    def add(self, result: Result) -> None:
        self.held += 1
        if self.ordered:
            if result.index != self._next:
                self._early[result.index] = result
                return
            self._next += 1
            self._ready.append(result)
            if self._early:
                self._flush_early()
        else:
            self._ready.append(result)
        if self._reader is not None:
            self._wake()

    def _flush_early(self) -> None:
        ready, early, n = self._ready, self._early, self._next
        while n in early:
            ready.append(early.pop(n))
            n += 1
        self._next = n

    def _wake(self) -> None:
        reader, self._reader = self._reader, None  # one wake-up per wait
        if reader is not None and not reader.done():
            reader.set_result(None)

    def fit_batch(self, size: int, slots: int) -> None:
        """Batches of ``size`` results arrive at once: make room for two per slot."""
        self.window = max(self.window, 2 * size * slots)

    def finish(self) -> None:
        """The scheduler is done: no more results will come."""
        self.done = True
        if self._early:  # cannot happen unless the scheduler broke; never drop results
            self._ready.extend(self._early[i] for i in sorted(self._early))
            self._early.clear()
        self._wake()

    def unblock(self) -> None:
        """Let every slot waiting for room go on, now and from now on: the run is
        ending with an error, and its reader may be waiting for a result that
        will never come (say, one whose journal record could not be written)."""
        self._unblocked = True
        waiting, self._waiting = self._waiting, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)

    async def room(self) -> None:
        """Wait until the consumer has taken results and there is room for more."""
        while self.full and not self.done and not self._unblocked:
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            await fut

    async def take(self) -> list[Result]:
        """Every result ready now (waiting for at least one); empty once all are taken."""
        while not self._ready:
            if self.done:
                return []
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        batch = list(self._ready)
        self._ready.clear()
        self.held -= len(batch)
        if self._waiting and not self.full:
            waiting, self._waiting = self._waiting, []
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        if self.on_room is not None:
            self.on_room()
        return batch
