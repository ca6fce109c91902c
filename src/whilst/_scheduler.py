"""The scheduler: one asyncio coordinator that owns every run's bookkeeping.

It pulls items lazily, keeps at most ``limit`` tasks in flight, hands each
attempt to the mode, turns each end into a :class:`~whilst.Result` and passes
it on to the output. ``limit`` is structural: the scheduler runs ``limit``
*slots*, each a coroutine that takes the next item, runs it, records it and
loops — the shape of a hand-written asyncio worker pool, which is the cheapest
way to bound concurrency on one loop (no task, semaphore or future per item).
Slots are spawned as items arrive, so a run of three items starts three slots.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from typing import Any, Protocol

from ._errors import UsageTypeError, WorkerCrashed
from ._events import Event, EventKind, Sink
from ._modes import Mode, Outcomes, mode_class
from ._options import Options
from ._output import Record
from ._result import Result, Status, batch_results

#: A batching mode aims for batches that keep a worker busy this long, so the
#: round trip to it (about 0.1 ms) costs about 1% (joblib's batch_size="auto"
#: does the same with a 0.2 s target; ours is shorter to keep results flowing).
BATCH_TARGET = 0.02
#: Most items all slots of a batching mode hold at once, so a huge input of tiny
#: tasks keeps memory bounded: with 2 slots (two batches each) a batch grows to
#: 2048 items, with 32 to 128 (a round trip shared by 128 tasks costs each of
#: them about a microsecond).
BATCH_BUDGET = 8192

OK, FAILED, CANCELLED = Status.OK, Status.FAILED, Status.CANCELLED
_END = object()
QUEUED, STARTED, FINISHED = EventKind.QUEUED, EventKind.STARTED, EventKind.FINISHED


class Output(Protocol):
    bounded: bool  # may ask the scheduler to wait for room (see full and room)

    @property
    def full(self) -> bool: ...

    def recorder(self, mode: str, worker: str) -> Record: ...

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None: ...

    async def room(self) -> None: ...

    def fit_batch(self, size: int, slots: int) -> None: ...

    def finish(self) -> None: ...


def check_items(items: object) -> Iterator[Any] | AsyncIterator[Any]:
    """The iterator a run pulls from; a UsageTypeError when ``items`` is no iterable."""
    if isinstance(items, AsyncIterable):
        return aiter(items)
    try:
        return iter(items)  # type: ignore[call-overload, no-any-return]
    except TypeError:
        raise UsageTypeError(
            f"items must be an iterable (a list, a generator, a file...) or an async "
            f"iterable, got {type(items).__name__}; wrap a single item in a list: [item]"
        ) from None


class Scheduler:
    """Runs one batch of tasks. Built by the API forms; :meth:`run` is the whole run."""

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any] | AsyncIterable[Any],
        options: Options,
        output: Output,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.options = options
        self.output = output
        self.sinks = tuple(sinks)
        self.mode: Mode = mode_class(options.mode)(
            fn, limit=options.limit, is_async=options.is_async
        )
        self.interrupted = False
        self.input_error: BaseException | None = None
        self.started = 0.0
        self.ended = 0.0
        source = check_items(items)
        self._sync_source = isinstance(source, Iterator)
        self._items: Iterator[Any] = iter(())
        if isinstance(source, Iterator):
            # Batches are cut with islice, which would drop the items of a batch if
            # the input raised half way: an input that may raise is read through
            # _guarded (80 ns an item) when batching; a list, tuple or range cannot.
            safe = not self.mode.batching or type(items) in (list, tuple, range)
            self._items = source if safe else self._guarded(source)
        self._aitems = source if isinstance(source, AsyncIterator) else None
        self._lock = asyncio.Lock()  # async iterables cannot be pulled concurrently
        self._exhausted = False
        self._pulled = 0  # the index of the next item
        self._slots = 0
        self._group: asyncio.TaskGroup | None = None
        self._max_batch = max(1, BATCH_BUDGET // (2 * options.limit))  # 2 batches a slot
        if isinstance(items, Sized):
            # Four batches per slot at least, so the last ones do not leave slots idle.
            share = math.ceil(len(items) / (4 * options.limit))
            self._max_batch = max(1, min(self._max_batch, share))

    # -- the run -------------------------------------------------------------

    async def run(self) -> None:
        """Run every item to its result; returns when all results are out."""
        self.started = time.time()
        mode = self.mode
        await mode.open()
        aborted = True
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._spawn()
            aborted = False
        finally:
            self.ended = time.time()
            try:
                await mode.close(abort=aborted)
            finally:
                self.output.finish()

    def interrupt(self) -> None:
        """Ctrl-C: start nothing more (the driver cancels the running slots)."""
        self.interrupted = True
        self._stop_pulling()

    def _stop_pulling(self) -> None:
        self._exhausted = True
        self._items = iter(())

    def _spawn(self) -> None:
        if self._group is None or self._slots >= self.options.limit or self._exhausted:
            return
        slot, self._slots = self._slots, self._slots + 1
        batching = self.mode.batching
        self._group.create_task(self._batch_slot(slot) if batching else self._slot(slot))

    # -- pulling items -------------------------------------------------------

    def _guarded(self, source: Iterator[Any]) -> Iterator[Any]:
        """The input, ending quietly if it raises: the error is kept for the caller,
        after the results of every item read before it."""
        try:
            yield from source
        except Exception as exc:
            self.input_error = exc

    async def _take(self, n: int) -> tuple[int, list[Any]]:
        """Up to ``n`` items and the index of the first; no items at the input's end."""
        first = self._pulled
        if self._sync_source:
            items = list(itertools.islice(self._items, n))
        else:
            items = []
            async with self._lock:  # one batch's items are consecutive
                first = self._pulled
                while len(items) < n and not self._exhausted:
                    try:
                        items.append(await anext(self._aitems))  # type: ignore[arg-type]
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        self.input_error = exc
                        break
        self._pulled = first + len(items)
        if len(items) < n:
            self._stop_pulling()
        return first, items

    # -- slots ---------------------------------------------------------------

    async def _slot(self, slot: int) -> None:
        """One place a task runs: take an item, run it, record it, repeat.

        This is the per-task hot path: keep it free of calls it does not need.
        """
        mode = self.mode
        call, worker, name = mode.caller(slot), mode.worker(slot), mode.name
        output, limit = self.output, self.options.limit
        record = output.recorder(name, worker)
        if self.sinks:
            record = self._telling(record, name, worker)
        sync_source, take, bounded = self._sync_source, self._take, output.bounded
        now, end, sinks = time.time, _END, self.sinks
        growing = True
        while True:
            if bounded and output.full:
                await output.room()
            if sync_source:
                try:
                    item = next(self._items, end)
                except Exception as exc:  # the input itself failed: keep it for the caller
                    self.input_error, item = exc, end
                if item is end:
                    self._stop_pulling()
                    return
                index = self._pulled
                self._pulled = index + 1
            else:
                index, items = await take(1)
                if not items:
                    return
                item = items[0]
            if growing:
                self._spawn()
                growing = self._slots < limit
            start = now()
            if sinks:
                self._emit(QUEUED, index, item, start)
                self._emit(STARTED, index, item, start, worker)
            try:
                value = await call(item)
            except asyncio.CancelledError as exc:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # the run is being stopped, not just this task
                record(index, item, CANCELLED, None, exc, start, now())
            except BaseException as exc:
                if self.interrupted and isinstance(exc, KeyboardInterrupt):
                    raise
                record(index, item, FAILED, None, exc, start, now())
            else:
                record(index, item, OK, value, None, start, now())

    async def _batch_slot(self, slot: int) -> None:
        """A slot of a batching mode: tiny tasks travel to the worker in batches,
        sized from measured task time (growing from 1 while they are quick).

        While batches are tiny-task batches (more than one item), the next one is
        handed over before the current one is back, so the worker never waits for
        the round trip (``multiprocessing.Pool`` queues every chunk up front for
        the same reason). One-item batches go one at a time: a long task queued
        behind another would wait while a different worker sat idle.
        """
        mode, output = self.mode, self.output
        size, rerun = 1, asyncio.Lock()
        flying: collections.deque[tuple[int, list[Any], str, asyncio.Task[Outcomes]]] = (
            collections.deque()
        )
        try:
            while True:
                while len(flying) < (2 if size > 1 else 1) and not self._exhausted:
                    if output.full:
                        await output.room()
                    first, items = await self._take(size)
                    if not items:
                        break
                    self._spawn()
                    flying.append((first, items, *self._hand_over(slot, first, items, rerun)))
                if not flying:
                    return
                first, items, worker, task = flying.popleft()
                outcomes = await task
                self._finished_batch(first, items, outcomes, worker)
                if mode.auto_batch:
                    size = self._next_size(size, outcomes.ends[-1] - outcomes.start)
        finally:
            for *_, task in flying:
                task.cancel()

    def _hand_over(
        self, slot: int, first: int, items: list[Any], rerun: asyncio.Lock
    ) -> tuple[str, asyncio.Task[Outcomes]]:
        mode = self.mode
        worker = mode.worker(slot)
        if self.sinks:
            now = time.time()
            for kind in (QUEUED, STARTED):  # started: handed to the worker that runs it
                for k, item in enumerate(items):
                    self._emit(kind, first + k, item, now, worker)

        async def run() -> Outcomes:
            try:
                return await mode.run_batch(slot, items)
            except WorkerCrashed as exc:
                if len(items) == 1:
                    end = time.time()
                    return Outcomes(end, [end], [None], {0: exc})
            # Every task of the batch was caught in the crash, but only one caused
            # it: run them again one at a time, so only that one ends crashed (and,
            # under the lock, nothing else of this slot's is at the worker then).
            async with rerun:
                alone = [await run_alone(item) for item in items]
            errors = {k: o.errors[0] for k, o in enumerate(alone) if o.errors}
            ends = [o.ends[0] for o in alone]
            return Outcomes(alone[0].start, ends, [o.values[0] for o in alone], errors)

        async def run_alone(item: Any) -> Outcomes:
            try:
                return await mode.run_batch(slot, [item])
            except WorkerCrashed as exc:
                end = time.time()
                return Outcomes(end, [end], [None], {0: exc})

        return worker, asyncio.get_running_loop().create_task(run())

    def _finished_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, worker: str
    ) -> None:
        name = self.mode.name
        self.output.add_batch(first, items, outcomes, name, worker)
        if self.sinks:
            for r in batch_results(first, items, outcomes, name, worker):
                self._emit(FINISHED, r.index, r.item, r.end, worker, r)

    def _telling(self, record: Record, mode: str, worker: str) -> Record:
        """``record``, also telling the sinks each task's result."""

        def telling(
            index: int,
            item: Any,
            status: Status,
            value: Any,
            error: BaseException | None,
            start: float,
            end: float,
        ) -> None:
            record(index, item, status, value, error, start, end)
            result = Result(index, item, status, value, error, 1, start, end, mode, worker)
            self._emit(FINISHED, index, item, end, worker, result)

        return telling

    def _emit(
        self,
        kind: EventKind,
        index: int,
        item: Any,
        at: float,
        worker: str = "",
        result: Result | None = None,
    ) -> None:
        event = Event(kind, index, item, at, worker, result)
        for sink in self.sinks:
            sink(event)

    def _next_size(self, size: int, busy: float) -> int:
        if busy < BATCH_TARGET / 2:
            grown = size * BATCH_TARGET / max(busy, 1e-6)
            size = int(min(grown, size * 8))
        elif busy > BATCH_TARGET * 4:
            size //= 2
        size = max(1, min(size, self._max_batch))
        self.output.fit_batch(size, self.options.limit)
        return size
