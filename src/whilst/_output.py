"""Where finished results go: all kept for ``map``, or streamed for ``imap``."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from ._modes import Outcomes
from ._result import Result, Status, batch_results, failure_status

#: Records how one task ended: (index, item, status, value, error, start, end).
Record = Callable[[int, Any, Status, Any, "BaseException | None", float, float], None]

#: Fields a Chunk keeps per task: index, item, value, start, end, mode, worker.
ROW = 7


class Collect:
    """Keeps every result, for ``map``: memory grows with the input, by its nature.

    Results stay in the rows they were recorded in (one :class:`Chunk` all
    slots add to, or a batch as a mode returned it); a Result per task is
    built only if one is asked for (a task failed), so a ``map`` whose tasks all
    succeed pays for its values and little more (a Result kept per task would
    also be walked by the garbage collector, over and over, as a big ``map``
    grows). One chunk, not one a slot: at limit 1000, a task appending to lists
    of its slot's own touched memory no other task had warmed (100k no-op
    coroutines: 2.85x a raw worker pool's time, against 2.06x with one chunk).
    """

    bounded = full = False  # never holds the scheduler back
    on_room: Callable[[], None] | None = None

    def __init__(self, *, times: bool = False) -> None:
        self.times = times  # the run's summary is wanted (it takes durations)
        self._chunk = Chunk()
        self.rows: list[Any] | None = self._chunk.rows  # (kept: never taken)
        self._batches: list[tuple[int, list[Any], Outcomes, str, str]] = []
        self._results: list[Result] = []  # from the policy path, built already

    def recorder(self, mode: str, worker: str) -> Record:
        return self._chunk.recorder(mode, worker)

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
            bool(self._chunk.failures)
            or any(b[2].errors for b in self._batches)
            or any(not r.ok for r in self._results)
        )

    def values(self) -> list[Any]:
        """Every task's value, in input order."""
        chunk = self._chunk
        n = len(chunk) + sum(len(b[1]) for b in self._batches)
        out: list[Any] = [None] * (n + len(self._results))
        for r in self._results:
            out[r.index] = r.value
        # Slices, copies: islice reads every field on its way (340 more instructions
        # a task); they last only this loop, 16 bytes a task beside the rows' 56.
        for index, value in zip(chunk.rows[0::ROW], chunk.rows[2::ROW], strict=True):
            out[index] = value
        for first, items, outcomes, _, _ in self._batches:
            out[first : first + len(items)] = outcomes.values
        return out

    def in_order(self) -> list[Result]:
        """Every task's Result, in input order."""
        results: dict[int, Result] = {r.index: r for r in self._chunk.results()}
        for batch in self._batches:
            results.update((r.index, r) for r in batch_results(*batch))
        results.update((r.index, r) for r in self._results)
        return [results[i] for i in range(len(results))]

    async def room(self) -> None:
        pass

    def widen(self, window: int) -> None:
        pass

    def finish(self) -> None:
        pass


#: Seconds of tasks a paced stream holds before its caller sees them.
PACE = 0.001


class Pace:
    """When results held for a caller that takes turns with the tasks (sync mode)
    are due: once what is held took ``PACE`` seconds to run."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since = 0.0  # when the first result held began

    def due(self, held: int, start: float, end: float) -> bool:
        """Whether a result (``held`` now held, this one included) makes them due."""
        if held == 1:
            self.since = start
        return end - self.since >= PACE


def window_for(limit: int) -> int:
    """How many finished results an ``imap`` may hold before the scheduler waits.

    Four rounds of ``limit`` results: while the caller is away, every slot can
    finish a task or two without waiting for room (each wait costs a future),
    and memory still grows with ``limit``, never with the input.
    """
    return 4 * limit + 16


class Chunk:
    """Finished tasks, one row of ``ROW`` fields each, laid end to end in one flat
    list: every slot's for ``map``, or what a stream hands its reader at once.

    A Result object is built only when one is asked for (for ``imap``, as the
    reader takes each), so it dies young: results waiting here are no objects
    for the garbage collector (a Result kept per waiting task set off a
    collection every 700 tasks, each walking every task in flight: a fifth of an
    ``imap``'s time). One flat list, not a list per field: a task is recorded by
    one ``extend``, a field's column is a slice taken in C, and results are made
    from the columns by ``map`` (an ``imap`` of no-op coroutines: 380 fewer
    instructions a task than with a list per field, counted by cachegrind).
    """

    __slots__ = ("_left", "built", "failures", "rows")

    def __init__(self) -> None:
        self._left: list[int] = []  # what results() walks first (see drop)
        self.rows: list[Any] = []  # index, item, value, start, end, mode, worker; ...
        self.failures: dict[int, tuple[Status, BaseException | None]] = {}  # by position
        self.built: dict[int, Result] = {}  # results made already (policy path), by position

    def __len__(self) -> int:
        return len(self.rows) // ROW

    @property
    def starts(self) -> list[float]:
        """Each task's start (a copy)."""
        return self.rows[3::ROW]

    @property
    def ends(self) -> list[float]:
        """Each task's end (a copy)."""
        return self.rows[4::ROW]

    def recorder(self, mode: str, worker: str) -> Record:
        """Records the tasks one worker finished."""
        rows, failures, ok = self.rows, self.failures, Status.OK
        extend = rows.extend

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
                failures[len(rows) // ROW] = (status, error)
            extend((index, item, value, start, end, mode, worker))

        return record

    def put_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        """A batch as a mode ran it: item ``i`` from ``ends[i - 1]`` to ``ends[i]``."""
        n, at = len(items), len(self)
        if not n:
            return
        for k, error in outcomes.errors.items():
            self.failures[at + k] = (failure_status(error), error)
        ends = outcomes.ends
        starts = [outcomes.start, *ends[:-1]]
        columns = (range(first, first + n), items, outcomes.values, starts, ends, [mode] * n)
        rows = zip(*columns, outcomes.where(worker), strict=True)
        self.rows.extend(itertools.chain.from_iterable(rows))

    def put_result(self, result: Result) -> None:
        """A result made already (the policy path): kept whole; a row holds its place."""
        self.built[len(self)] = result
        self.rows.extend((result.index, None, None, 0.0, 0.0, "", ""))

    def take(self) -> Chunk:
        """What this holds, as a chunk of its own; this one is left empty (in place:
        recorders hold its list's method)."""
        chunk = Chunk()
        chunk.rows = self.rows[:]
        del self.rows[:]
        chunk.failures, chunk.built = self.failures.copy(), self.built.copy()
        self.failures.clear()
        self.built.clear()
        return chunk

    def results(self) -> Iterator[Result]:
        """A Result per row, each made as it is asked for, until :meth:`drop`."""
        rows = self.rows
        if self.failures or self.built:
            self._left = list(range(len(self)))
            return self._mixed_results(self._left)
        indexes = self._left = rows[0::ROW]  # every task ok: made by map, in C
        return map(
            Result,
            indexes,
            rows[1::ROW],
            itertools.repeat(Status.OK),
            rows[2::ROW],
            itertools.repeat(None),
            itertools.repeat(1),
            rows[3::ROW],
            rows[4::ROW],
            rows[5::ROW],
            rows[6::ROW],
        )

    def drop(self) -> None:
        """End what :meth:`results` returned: it hands out no more."""
        self._left.clear()  # the list it walks first

    def _mixed_results(self, positions: list[int]) -> Iterator[Result]:
        failures, built, ok, rows = self.failures, self.built, Status.OK, self.rows
        for k in positions:
            if k in built:
                yield built[k]
            else:
                index, item, value, start, end, mode, worker = rows[k * ROW : k * ROW + ROW]
                status, error = failures.get(k, (ok, None))
                yield Result(index, item, status, value, error, 1, start, end, mode, worker)


class Stream:
    """Hands results to a consumer in input order or as completed, holding at most
    ``window`` of them: when the consumer falls behind (or, in order, one slow task
    holds back the ones after it), the scheduler stops starting tasks until there is
    room again. That is what keeps ``imap`` memory bounded by ``limit``.

    Results wait in a :class:`Chunk` (in order, those that came before their turn
    wait aside, each as the call that will put it in the chunk).

    A ``paced`` stream (sync mode: tasks run one after another with the caller)
    is full as soon as what it holds took ``PACE`` seconds to run, and its task
    waits for the caller to ask again: results come as a plain for loop's would
    (quick tasks still in bunches, for a stop and start of the loop costs tens
    of microseconds), and a ``break`` runs no task more."""

    bounded = True
    times = True  # each Result has its times
    rows: list[Any] | None = None  # each record does more than add a row

    def __init__(self, *, ordered: bool, window: int, paced: bool = False) -> None:
        self.ordered = ordered
        self.window = window
        self.paced = paced
        self.held = 0
        self.full = False  # held >= window (or paced); read once a task by each slot
        self._pace = Pace()
        self.done = False
        self._chunk = Chunk()
        self._early: dict[int, tuple[int, Callable[..., None], tuple[Any, ...]]] = {}
        self._next = 0  # ordered: the index whose turn it is
        self._reader: asyncio.Future[None] | None = None
        self._waiting: list[asyncio.Future[None]] = []  # slots waiting for room
        self._unblocked = False  # the run is ending with an error: nothing waits for room
        self.on_room: Callable[[], None] | None = None  # told when the reader makes room

    def recorder(self, mode: str, worker: str) -> Record:
        early, ordered, chunk = self._early, self.ordered, self._chunk
        put = chunk.recorder(mode, worker)  # for a result that waits aside for its turn
        # A result in its turn goes into the chunk here, as put would: one call a
        # task instead of two (the per-task path of every imap).
        rows, failures, ok, paced = chunk.rows, chunk.failures, Status.OK, self.paced
        extend = rows.extend

        def record(
            index: int,
            item: Any,
            status: Status,
            value: Any,
            error: BaseException | None,
            start: float,
            end: float,
        ) -> None:
            held = self.held = self.held + 1
            if held >= self.window or (paced and self._pace.due(held, start, end)):
                self.full = True
            if ordered:
                if index != self._next:  # waits aside for its turn
                    early[index] = (1, put, (index, item, status, value, error, start, end))
                    return
                self._next = index + 1
            if status is not ok:
                failures[len(rows) // ROW] = (status, error)
            extend((index, item, value, start, end, mode, worker))
            if early:
                self._flush_early()
            if self._reader is not None:
                self._wake()

        return record

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        self._put(first, len(items), self._chunk.put_batch, (first, items, outcomes, mode, worker))

    def add(self, result: Result) -> None:
        self._put(result.index, 1, self._chunk.put_result, (result,))
        if self.paced and self._pace.due(self.held, result.start, result.end):
            self.full = True

    def _put(self, first: int, n: int, put: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.held += n
        self.full = self.held >= self.window
        if self.ordered:
            if first != self._next:
                self._early[first] = (n, put, args)
                return
            self._next = first + n
        put(*args)
        if self._early:
            self._flush_early()
        if self._reader is not None:
            self._wake()

    def _flush_early(self) -> None:
        early, n = self._early, self._next
        while n in early:
            size, put, args = early.pop(n)
            put(*args)
            n += size
        self._next = n

    def _wake(self) -> None:
        reader, self._reader = self._reader, None  # one wake-up per wait
        if reader is not None and not reader.done():
            reader.set_result(None)

    def widen(self, window: int) -> None:
        """Hold up to ``window`` results (if that is more): for batches of results
        arriving at once, or more slots."""
        self.window = max(self.window, window)
        self.full = self.held >= self.window

    def finish(self) -> None:
        """The scheduler is done: no more results will come."""
        self.done = True
        early = self._early  # cannot happen unless the scheduler broke; never drop results
        for first in sorted(early):
            _, put, args = early.pop(first)
            put(*args)
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

    async def take(self) -> Chunk:
        """Every result ready now (waiting for at least one); empty once all are taken.
        Paced, the tasks waiting for room go on only when the reader asks again."""
        if self.paced:
            self._make_room()
        while not self._chunk.rows:
            if self.done:
                return Chunk()
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        chunk = self._chunk.take()
        self.held -= len(chunk)
        self.full = self.held >= self.window
        if not self.paced:
            self._make_room()
        return chunk

    def _make_room(self) -> None:
        if self._waiting and not self.full:
            waiting, self._waiting = self._waiting, []
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        if self.on_room is not None:
            self.on_room()
