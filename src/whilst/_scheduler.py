"""The scheduler: one asyncio coordinator that owns every run's bookkeeping.

It pulls items lazily, keeps at most ``limit`` tasks in flight, hands each
attempt to the mode, turns each end into a :class:`~whilst.Result` and passes
it on to the output. ``limit`` is structural: the scheduler runs ``limit``
*slots*, each a coroutine that takes the next item, runs it, records it and
loops — the shape of a hand-written asyncio worker pool, which is the cheapest
way to bound concurrency on one loop (no task, semaphore or future per item).
Slots are spawned as items arrive, so a run of three items starts three slots.

A run with a policy (retries, timeout, deadline, rate, key, halt) takes the
policy path instead (:meth:`Scheduler._policy_slot`): one item per attempt,
each attempt under a cancel scope, retries and items waiting for their key
held aside (a bounded number), starts spaced by the rate. A run without one
pays for none of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import io
import itertools
import math
import time
import warnings
from asyncio import FIRST_COMPLETED, Timeout
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from pathlib import Path
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import TaskCancelled, TaskTimeout, UsageTypeError, WhilstError, WorkerCrashed
from ._events import Event, EventKind, Sink
from ._modes import Call, Mode, Outcomes, mode_class
from ._modes._worker import as_raised
from ._options import Options, default_limit
from ._output import Record, window_for
from ._policy import POISON_DEATHS, KeyLimit, RateLimit
from ._progress import EVERY as PROGRESS_EVERY
from ._progress import Progress
from ._readahead import ReadAhead
from ._result import Result, Status, batch_results, failure_status
from ._summary import Stats, Summary

if TYPE_CHECKING:
    from ._journal import Journaled
    from ._timeline import Timeline

#: A batching mode aims for batches that keep a worker busy this long, so the
#: round trip to it (about 0.1 ms) costs about 1% (joblib's batch_size="auto"
#: does the same with a 0.2 s target; ours is shorter to keep results flowing).
BATCH_TARGET = 0.02
#: Most items all slots of a batching mode hold at once, so a huge input of tiny
#: tasks keeps memory bounded: with 2 slots (two batches each) a batch grows to
#: 4096 items, with 32 to 256 (a round trip shared by 256 tasks costs each of
#: them about half a microsecond). Measured, 100,000 tiny tasks in 2 processes
#: (medians of 15, alternating): 26.3 ms at 16,384, 28.6 ms at 8,192, Pool.map
#: 20.8 ms.
BATCH_BUDGET = 16384
#: An idle slot asks a busy worker process for the items of a batch it has not
#: started once the batch has been out this long: three times what a batch is
#: sized to take. A batch going as it should is never split (an ask costs the
#: process a round trip and a turn of its GIL: the tail of 100,000 tiny tasks
#: split up so took 5% longer), and one held up by a slow task gets help 60 ms
#: later. A thread's items are taken back at once: that costs nothing.
OVERDUE = 3 * BATCH_TARGET

OK, FAILED, CANCELLED = Status.OK, Status.FAILED, Status.CANCELLED
TIMED_OUT, CRASHED, POISONED = Status.TIMED_OUT, Status.CRASHED, Status.POISONED
SKIPPED = Status.SKIPPED
_END = object()
#: How the reason a halt rule stopped a run begins (``Summary.stopped``).
HALTED = "the halt rule"
QUEUED, STARTED, FINISHED = EventKind.QUEUED, EventKind.STARTED, EventKind.FINISHED
RETRYING = EventKind.RETRYING


class Output(Protocol):
    bounded: bool  # may ask the scheduler to wait for room (see full and room)
    times: bool  # its reader sees each task's start and end (not just values)
    on_room: Callable[[], None] | None  # called when the reader has made room
    # The rows (see Chunk) a slot may add a task that succeeded to itself, as
    # its record would, when recording one does nothing more (map); else None.
    rows: list[Any] | None

    @property
    def full(self) -> bool: ...

    def recorder(self, mode: str, worker: str) -> Record: ...

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None: ...

    def add(self, result: Result) -> None: ...

    async def room(self) -> None: ...

    def widen(self, window: int) -> None: ...

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


class InputInterrupted(KeyboardInterrupt):
    """Raised by a stop signal's handler into a wait for a synchronous input's next
    item (SIGTERM's too). A KeyboardInterrupt: event loops let only those (and
    SystemExit) out of a callback, where a signal's handler may run."""


@functools.cache
def _input_reads() -> dict[CodeType, set[int]]:
    """The lines on which the scheduler reads a synchronous input, by function."""
    import dis

    reads = (Scheduler._slot, Scheduler._read, Scheduler._read_items, Scheduler._drain)
    return {
        fn.__code__: {
            ins.positions.lineno  # type: ignore[misc]
            for ins in dis.get_instructions(fn)
            if ins.argval in ("next", "islice", "_reading") and ins.positions is not None
        }
        for fn in reads
    }


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
        self.limit = options.limit  # auto may raise it: see _went_async
        self.policy = options.policy
        self.fn = fn
        self._journal: Journaled | None = None  # also self.output while it is kept
        self.journal_error: WhilstError | None = None
        self.output = output
        self.timeline: Timeline | None = None
        if options.report is not None or options.trace is not None:
            from ._timeline import Timeline

            self.timeline = Timeline()
            sinks = (*sinks, self.timeline)
        self.sinks = tuple(sinks)
        # The sinks of each kind of event (a sink's ``wants``, else every kind).
        self._sinks_for = {
            kind: tuple(sink for sink in sinks if kind in getattr(sink, "wants", EventKind))
            for kind in EventKind
        }
        if options.measure:
            from ._modes._auto import AutoMode

            self.mode: Mode = AutoMode(fn, limit=options.limit, is_async=options.is_async)
            if options.grow_limit:
                self.mode.went_async = self._went_async
        elif options.mode in ("dask", "ray"):
            from ._modes._dask import DaskMode
            from ._modes._ray import RayMode

            self.mode = (DaskMode if options.mode == "dask" else RayMode)(
                fn,
                limit=options.limit,
                is_async=options.is_async,
                cluster=options.cluster,
                insecure=options.cluster_insecure,
            )
        else:
            self.mode = mode_class(options.mode)(fn, limit=options.limit, is_async=options.is_async)
        # A batch's tasks are timed one by one only if someone will see it: a plain
        # map gives values (its tasks' own times only in TasksFailed's results).
        self.mode.timed = output.times or bool(sinks) or self.policy.journal is not None
        self.mode.timeout = self.policy.timeout
        self.interrupted = False
        # Figures for progress and the summary: tasks ended (skipped included), of
        # them not ok; attempts retried; most tasks running at once (in a batching
        # mode, most workers busy), and running now on the policy path.
        self.done = self.failed = self.retried = self.peak = 0
        self._running = 0
        self._progress_timer: asyncio.TimerHandle | None = None
        self._progress_off = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.input_error: BaseException | None = None
        self.started = 0.0
        self.ended = 0.0
        source = check_items(items)
        self._sync_source = isinstance(source, Iterator)
        self._items: Iterator[Any] = iter(())
        self._instant = False
        if isinstance(source, Iterator):
            # Batches are cut with islice, which would drop the items of a batch if
            # the input raised half way: an input that may raise is read through
            # _guarded (80 ns an item) when batching or on the policy path; a list,
            # tuple or range cannot raise. So is, on the plain path, a file (sys.stdin,
            # a pipe, a socket's), whose wait is in C: see stop_waiting_for_input.
            plain = not self.mode.batching and options.policy.plain
            self._instant = type(items) in (list, tuple, range)  # each next item at once
            unwrapped = self._instant or (plain and not isinstance(items, io.IOBase))
            self._items = source if unwrapped else self._guarded(source)
        self._aitems = source if isinstance(source, AsyncIterator) else None
        if self._aitems is not None and self.mode.batching and not hasattr(source, "came"):
            self._aitems = ReadAhead(self._aitems)  # a batch must not wait to be full
        self._lock = asyncio.Lock()  # async iterables cannot be pulled concurrently
        self._exhausted = False
        self._unread: collections.deque[tuple[int, list[Any]]] = collections.deque()  # see _take
        # Batching modes: each slot's batches in flight (first index, items, worker, task,
        # when handed over), and runs of items taken back from them for idle slots.
        self._flying: dict[int, collections.deque[tuple[int, list[Any], str, Any, float]]] = {}
        self._given_back: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self._asks: set[asyncio.Future[None]] = set()  # asks of busy workers not answered yet
        self._again: asyncio.Future[None] | None = None  # done when items taken back go out
        self._source_done = False  # the last read found the input's end
        self._read_to_end = False  # a guarded input ended, or raised (see _guarded)
        self._input_ended = False  # the async input said StopAsyncIteration (or raised)
        self.left_unread: str | None = None  # why a halted run left an input of no length unread
        self._pulled = 0  # the index of the next item
        self._slots = 0
        self._group: asyncio.TaskGroup | None = None
        self._total = len(items) if isinstance(items, Sized) else None
        self._max_batch = self._aside = 1  # (what follows from the limit: see _fit_limit)
        self._fit_limit()
        # -- the policy path's state (see _policy_slot) --
        self._rest = self._items  # what a halted run drains into cancelled results
        self._retries: list[tuple[float, int, _Task]] = []  # a heap: (due, seq, task)
        self._seq = itertools.count()
        self._retry_timer: asyncio.TimerHandle | None = None  # the earliest retry's
        self._timer_due = math.inf
        self._held: collections.deque[_Task] = collections.deque()  # ready, maybe key-blocked
        self._keys = KeyLimit(self.policy.per_key) if self.policy.per_key is not None else None
        self._rate = (
            RateLimit(self.policy.rate, self.policy.burst) if self.policy.rate is not None else None
        )
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()  # napping slots
        self._sleeping: set[asyncio.Future[None]] = set()  # slots waiting out the rate
        self._deadline_at = math.inf  # loop time
        if not options.policy.plain:
            output.on_room = self._wake_all  # a slot may nap while the window is full
        self._scopes: dict[int, Timeout | None] = {}  # each slot's running attempt
        self._ran_in: dict[int, str] = {}  # a slot's attempt that ran on another worker
        # Seconds the loop stood still while a sync imap's caller was away with
        # results (see resumed): all of them, and those not yet added to timeouts.
        self._paused = self._unpaid = 0.0
        self._settling: dict[int, Timeout] = {}  # slots waiting for an abandoned attempt
        self._retry_settling: set[int] = set()  # ... before retrying it
        self._stopping: str | None = None  # why nothing new starts
        self._stop_now = False  # running attempts are being cancelled too
        self._failures = self._successes = self._finished = 0

    # -- the run -------------------------------------------------------------

    async def run(self) -> None:
        """Run every item to its result; returns when all results are out."""
        self.started = time.time()
        self._loop = asyncio.get_running_loop()
        mode = self.mode
        try:
            if self.policy.journal is not None:
                from ._journal import released

                await released(self.policy.journal)
                self._open_journal()
            await mode.open()
        except BaseException:
            if self._journal is not None:
                self._journal.writer.close()
            self.output.finish()  # an imap reader must hear the run is over
            raise
        aborted = True
        deadline = self.policy.deadline
        timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._deadline_at = loop.time() + deadline
            timer = loop.call_at(self._deadline_at, self._deadline_passed)
        if self.options.progress is not None:
            self._tell_progress()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._spawn()
            if not self.policy.plain:
                await self._drain()
            if self.journal_error is not None:
                raise self.journal_error
            aborted = False
        finally:
            for handle in (timer, self._retry_timer, self._progress_timer):
                if handle is not None:
                    handle.cancel()
            if isinstance(self._aitems, ReadAhead):
                await self._aitems.stop()
            self.ended = time.time()
            try:
                if self._journal is not None:  # commits what is pending, even after Ctrl-C
                    self._journal.close()
            finally:
                await self._close_mode(aborted)
                self._tell_progress(finished=True)
                self._write_timeline()

    def _write_timeline(self) -> None:
        """Write ``report=`` and ``trace=``, whatever way the run ended. A file that
        cannot be written now (its path was checked before the run) is a warning:
        the results matter more than their picture."""
        timeline, o = self.timeline, self.options
        if timeline is None:
            return
        timeline.stop(time.time())  # attempts the run's stop cut short, if any
        for path, write in ((o.report, self._write_report), (o.trace, self._write_trace)):
            if path is None:
                continue
            try:
                write(path, timeline)
            except OSError as exc:
                warnings.warn(f"whilst: could not write {path}: {exc}", stacklevel=1)

    def _write_report(self, path: Path, timeline: Timeline) -> None:
        from ._html import write_report

        name = getattr(self.fn, "__qualname__", None) or type(self.fn).__qualname__
        title = _told(self.fn, "report_title") or f"whilst: {name}, {self.mode.name} mode"
        write_report(path, timeline, self.summary(timeline.stats), title=title)

    def summary(self, stats: Stats) -> Summary:
        """The summary of the finished run, from the figures of its results."""
        return stats.summary(
            wall=self.ended - self.started,
            mode=self.mode.name,
            mode_reason=self.mode_reason,
            limit=self.limit,
            # (a slot waiting on a batch whose items idle slots took back counted too)
            peak=min(self.peak, self._pulled),
            retries=self.retried,
            left_unread=self.left_unread,
            stopped=self._stopping,
        )

    def _write_trace(self, path: Path, timeline: Timeline) -> None:
        from ._trace import write_trace

        write_trace(path, timeline)

    @property
    def mode_reason(self) -> str:
        """Why the run's tasks run where they do (auto decides as it goes; a
        command of the CLI says in its own words, as its task's ``mode_reason``)."""
        told = _told(self.fn, "mode_reason")
        return str(told or getattr(self.mode, "reason", self.options.mode_reason))

    def progress(self, finished: bool = False) -> Progress:
        """How far the run has come, now."""
        end = self.ended if finished else time.time()
        return Progress(
            done=self.done,
            total=self._total,
            failed=self.failed,
            retries=self.retried,
            in_flight=max(self._pulled - self.done, 0),
            elapsed=end - self.started,
            finished=finished,
        )

    def _tell_progress(self, finished: bool = False) -> None:
        """Hand a progress snapshot to ``progress=``, now and every EVERY seconds
        until the run is over. A callback that raises is switched off, with a
        warning: watching a run never changes it."""
        tell = self.options.progress
        if tell is None or self._progress_off:
            return
        try:
            tell(self.progress(finished))
        except Exception as exc:
            self._progress_off = True
            warnings.warn(f"whilst: progress= raised {exc!r}; progress is off", stacklevel=1)
            return
        if not finished:
            self._progress_timer = asyncio.get_running_loop().call_later(
                PROGRESS_EVERY, self._tell_progress
            )

    async def _close_mode(self, aborted: bool) -> None:
        try:
            await self.mode.close(abort=aborted)
        finally:
            self.output.finish()

    def _open_journal(self) -> None:
        from ._journal import COMMIT_EVERY, Journaled, JournalWriter, function_name

        policy, options = self.policy, self.options
        assert policy.journal is not None
        recorded = {
            "mode": options.mode,
            "limit": options.limit,
            **{name: getattr(policy, name) for name in ("retries", "timeout", "deadline", "rate")},
        }
        writer = JournalWriter(
            policy.journal,
            function=function_name(self.fn),
            options=recorded,
            task_id=policy.task_id,
            resume=policy.resume,
            force=policy.force,
            durable=policy.durable,
            values=getattr(self.fn, "journal_values", True),
        )

        def failed(exc: WhilstError) -> None:  # stop: no task may go on unrecorded
            self.journal_error = exc
            self._stop_pulling()
            self._halt(str(exc), now=True)

        journal = self._journal = Journaled(writer, self.output, failed)
        self.output = journal
        loop = asyncio.get_running_loop()

        def tick() -> None:  # commit now and then, whether or not many tasks end
            if not writer.closed and journal.error is None:
                journal.commit()
                loop.call_later(COMMIT_EVERY, tick)

        loop.call_later(COMMIT_EVERY, tick)

    def interrupt(self) -> None:
        """Ctrl-C: start nothing more; the driver cancels running attempts after the grace.

        Called from a signal handler, which may land anywhere in the loop's own
        code: it sets plain flags only, and leaves waking slots to the loop.
        """
        self.interrupted = True
        self._stop_pulling()
        if self._stopping is None:
            self._stopping = "the run was interrupted"
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._halt, self._stopping, False)

    def stop_waiting_for_input(self, frame: FrameType | None) -> None:
        """From a stop signal's handler, given the frame it interrupted: if the loop's
        thread waits for the next item of a synchronous input (a pipe, a generator
        that sleeps), that wait ends by an exception, and the input ends there, so
        the signal is acted on now rather than once an item comes.

        Only a wait may be broken: not the loop's own code (a task would be left
        half done), nor a scheduler frame just handed an item (on the read's line
        still, the item would be lost). So the frame interrupted must be below
        this run's read: the input's own (a generator's, or ``_guarded``'s, which
        wraps a file, whose wait is in C), or a run that is the input (another
        whilst run: it is stopped at once, its tasks without their grace).
        (Found from the frames, so that reading an item costs nothing more.)"""
        if not self._sync_source or self._instant or frame is None:
            return
        reads = _input_reads()
        if frame.f_code in reads:
            return
        while frame is not None:
            lines = reads.get(frame.f_code)
            if lines is not None:
                if frame.f_lineno in lines and frame.f_locals.get("self") is self:
                    raise InputInterrupted
                return
            frame = frame.f_back

    def _reading(self, source: Iterator[Any]) -> Iterator[Any]:
        """``source``'s items; it ends if a stop signal comes while it waits for one."""
        with contextlib.suppress(InputInterrupted):
            yield from source

    def resumed(self, paused: float) -> None:
        """The loop stood still for ``paused`` seconds (a sync ``imap`` runs it only
        while its caller waits for a result): running attempts' timeouts move on
        by as much, so time the run did not run is not held against a task (its
        result, come meanwhile, would be found after its timeout's timer)."""
        self._paused += paused
        self._unpaid += paused
        if self._unpaid < 0.001:  # not worth a timer per running attempt yet
            return
        for scope in self._scopes.values():
            if scope is not None and not scope.expired() and (when := scope.when()) is not None:
                scope.reschedule(when + self._unpaid)
        self._unpaid = 0.0

    def _stop_pulling(self) -> None:
        self._exhausted = True
        self._items = iter(())

    def _fit_limit(self) -> None:
        """What follows from the limit: the largest batch (two a slot within the
        budget; of an input of known length, four a slot at least, so the last
        ones do not leave slots idle) and the most tasks read ahead and set aside."""
        self._max_batch = max(1, BATCH_BUDGET // (2 * self.limit))
        if self._total is not None:
            share = math.ceil(self._total / (4 * self.limit))
            self._max_batch = max(1, min(self._max_batch, share))
        self._aside = window_for(self.limit)

    def _went_async(self) -> None:
        """Auto found that the function returns coroutines, and no limit was asked
        for: async's default from now on, as for an ``async def`` (the threads'
        default, CPUs + 4, held a run of network calls to 6 at once)."""
        self.limit = max(self.limit, default_limit("async"))
        self._fit_limit()
        self.output.widen(window_for(self.limit))
        self._spawn()  # (each slot spawns the next as it takes an item)

    def _spawn(self) -> None:
        if self._group is None or self._slots >= self.limit or self._exhausted:
            return
        slot, self._slots = self._slots, self._slots + 1
        policy = self.policy
        if not policy.plain:
            batches = self.mode.auto_batch and policy.batchable
            run = self._policy_batch_slot if batches else self._policy_slot
            self._group.create_task(run(slot))
        elif self.mode.batching:
            self._group.create_task(self._batch_slot(slot))
        else:
            self._group.create_task(self._slot(slot))

    # -- pulling items -------------------------------------------------------

    def _guarded(self, source: Iterator[Any]) -> Iterator[Any]:
        """The input, ending quietly if it raises: the error is kept for the caller,
        after the results of every item read before it; and ending if a stop signal
        breaks its wait for an item."""
        try:
            yield from source
        except Exception as exc:
            self.input_error = exc
        except InputInterrupted:
            return
        self._read_to_end = True

    async def _take(self, n: int) -> tuple[int, list[Any]]:
        """Up to ``n`` consecutive items to run and the index of the first; no items
        at the input's end. With a journal, items done by an earlier run are not
        among them (their stored results are handed out), so the items read may
        make several runs of consecutive items: the others wait in ``_unread``,
        and the input counts as read to its end only once they are taken."""
        journal = self._journal
        if journal is None:
            return await self._read_items(n)
        runs, output, skipped = self._unread, self.output, 0
        while not runs and not self._exhausted:
            if output.bounded and output.full:  # done items come back as results too
                await output.room()
            elif skipped >= 1024:  # a long stretch of done items: let others in
                skipped = 0
                await asyncio.sleep(0)
            first, items = await self._read_items(n, stop=False)
            skipped += len(items)
            for index, item in enumerate(items, first):
                if (done := journal.admit(index, item, started=False)) is not None:
                    self._finish(done)
                elif runs and runs[-1][0] + len(runs[-1][1]) == index:
                    runs[-1][1].append(item)
                else:
                    runs.append((index, [item]))
            if self._source_done:
                break
        if not runs:
            self._stop_pulling()
            return self._pulled, []
        first, items = runs.popleft()
        if len(items) > n:  # (a run left by a larger read: the rest waits its turn)
            runs.appendleft((first + n, items[n:]))
            items = items[:n]
        if self._source_done and not runs:
            self._stop_pulling()
        return first, items

    def _came(self, n: int) -> bool:
        """Whether the next batch can be taken without waiting for an async input
        (which then reads the next ``n`` items meanwhile)."""
        if self._aitems is None or self._unread:  # (runs a journal left read already)
            return True
        return self._aitems.came(n) > 0  # type: ignore[attr-defined,no-any-return]

    async def _read_items(self, n: int, stop: bool = True) -> tuple[int, list[Any]]:
        """Up to ``n`` items of the input and the index of the first; fewer at its
        end, and then (if ``stop``) nothing more is read. An async input with a
        ``ready(k)`` method (a stream, say) gives what has come once it gave one:
        a batch does not wait for items still to come."""
        first = self._pulled
        if self._sync_source:
            try:  # (through _guarded, which ends the input: the batch keeps what it read)
                items = list(itertools.islice(self._items, n))
            except InputInterrupted:  # (a tracer's frame interrupted, say, not the input's)
                items = []
            self._source_done = len(items) < n
        else:
            items = []
            ready = getattr(self._aitems, "ready", None)
            ahead = self._aitems if isinstance(self._aitems, ReadAhead) else None
            async with self._lock:  # one batch's items are consecutive
                first = self._pulled
                if ahead is not None:
                    ahead.want = n
                while len(items) < n and not self._exhausted:
                    try:
                        items.append(await anext(self._aitems))  # type: ignore[arg-type]
                    except StopAsyncIteration:
                        self._input_ended = True
                        break
                    except Exception as exc:
                        self.input_error = exc
                        self._input_ended = True
                        break
                    if ready is not None:
                        items.extend(ready(n - len(items)))
                        # Items that come in the turns of the loop just after (the input
                        # awaits what is done at once) join while each turn brings more.
                        while ahead is not None and len(items) < n and ahead.reading:
                            await asyncio.sleep(0)
                            if not (more := ready(n - len(items))):
                                break
                            items.extend(more)
                        break
                if ahead is not None:
                    ahead.want = 0
            self._source_done = self._input_ended or (len(items) < n and ready is None)
        self._pulled = first + len(items)
        if self._source_done and stop:
            self._stop_pulling()
        return first, items

    # -- slots ---------------------------------------------------------------

    async def _slot(self, slot: int) -> None:
        """One place a task runs: take an item, run it, record it, repeat.

        This is the per-task hot path: keep it free of calls it does not need.
        """
        mode = self.mode
        call, worker, name = mode.caller(slot), mode.worker(slot), mode.name
        output, limit = self.output, self.limit
        record, rows = output.recorder(name, worker), output.rows
        if self.sinks:
            record, rows = self._telling(record, name, worker), None
        # A task that succeeded is added to the rows here, when it can be, not by
        # a call of record (map: 11,244 instructions a no-op coroutine, 10,376 so).
        add = None if rows is None else rows.extend
        sync_source, take, bounded = self._sync_source, self._take, output.bounded
        unread = self._unread  # runs a journal's read left: taken first (see _take)
        now, last, sinks, journal = time.time, _END, self.sinks, self._journal
        growing = idle = True  # idle: this slot ran no task since it last waited
        # A slot that goes straight on from a task to the next one starts it as
        # the last one ended (the same float, kept once: a clock read and a float
        # kept a task cost 4% of a no-op coroutine's time), when nothing in
        # between takes time: the next item of a list, tuple or range, no journal.
        gapless = self._instant and journal is None
        end = 0.0  # when its last task ended
        while True:
            if bounded and output.full:
                await output.room()
                idle = True
            if sync_source and not unread:
                try:
                    item = next(self._items, last)
                except Exception as exc:  # the input itself failed: keep it for the caller
                    self.input_error, item = exc, last
                except InputInterrupted:  # a stop signal while it waited for the item
                    item = last
                if item is last:
                    self._stop_pulling()
                    return
                index = self._pulled
                self._pulled = index + 1
                if journal is not None and (done := journal.admit(index, item)) is not None:
                    self._finish(done)
                    continue
            else:
                index, items = await take(1)
                if not items:
                    return
                item = items[0]
                idle = True
                if journal is not None:
                    journal.start(index)
            if growing:
                self._spawn()
                growing = self._slots < limit
            start = end if gapless and not idle else now()
            if sinks:
                self._emit(QUEUED, index, item, start)
                self._emit(STARTED, index, item, start, worker)
            # Read and not ended = running: the item was read just now, with no
            # await since. Only a slot that was idle can make a new peak: one that
            # goes from a task to the next with no await between keeps the count.
            if idle:
                idle = False
                if (running := self._pulled - self.done) > self.peak:
                    self.peak = running
            try:
                value = await call(item)
            except asyncio.CancelledError as exc:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    # The run is being stopped, not just this task: its result says so.
                    self.failed += 1
                    self.done += 1
                    record(index, item, CANCELLED, None, self._cut(worker), start, now())
                    raise
                self.failed += 1
                record(index, item, CANCELLED, None, exc, start, end := now())
            except BaseException as exc:
                if self.interrupted and isinstance(exc, KeyboardInterrupt):
                    raise
                self.failed += 1
                error = as_raised(exc)
                record(index, item, failure_status(error), None, error, start, end := now())
            else:
                if add is None:
                    record(index, item, OK, value, None, start, end := now())
                else:
                    add((index, item, value, start, end := now(), name, worker))
            self.done += 1

    async def _batch_slot(self, slot: int) -> None:
        """A slot of a batching mode: tiny tasks travel to the worker in batches,
        sized from measured task time (growing from 1 while they are quick).

        While batches are tiny-task batches (more than one item), the next one is
        handed over before the current one is back, so the worker never waits for
        the round trip (``multiprocessing.Pool`` queues every chunk up front for
        the same reason). One-item batches go one at a time: a long task queued
        behind another would wait while a different worker sat idle.

        A slot with nothing left to read takes back what a busy worker has not
        started (where the mode can: see :meth:`_take_back`), so a slow task does
        not hold up the tiny ones batched behind it while other workers sit idle.
        """
        mode, output, given_back = self.mode, self.output, self._given_back
        size, rerun, clock = 1, asyncio.Lock(), asyncio.get_running_loop().time
        flying = self._flying[slot] = collections.deque()
        try:
            while True:
                while len(flying) < (2 if size > 1 else 1) and (
                    given_back or self._unread or not self._exhausted
                ):
                    if output.full:
                        if flying:  # the batch out may be the one the reader waits for
                            break
                        if not given_back:  # (items read already run as soon as a slot is free)
                            await self._room_or_take_back()
                    if flying and not given_back and not self._came(size):
                        break  # the batch out comes back first: the input may keep us waiting
                    again = bool(given_back)
                    first, items = self._given(size) if again else await self._take(size)
                    if not items:
                        break
                    self._spawn()
                    handed = self._hand_over(slot, first, items, rerun, again)
                    # Items taken back came from a batch held up: more slow ones may
                    # follow them, so a batch of them may be asked back at once.
                    flying.append((first, items, *handed, clock() - (OVERDUE if again else 0)))
                if not flying:
                    if self._exhausted and (  # nothing to read: others may have some to share
                        await self._take_back() or await self._answered() or given_back
                    ):
                        continue
                    return
                first, items, worker, task, _ = flying[0]  # in flight until back: _take_back
                self._busy(1)
                try:
                    outcomes = await task
                finally:
                    self._busy(-1)
                flying.popleft()
                if items:  # (fewer than handed over, or none: the rest were taken back)
                    self._finished_batch(first, items, outcomes, worker)
                    if mode.auto_batch:
                        busy = outcomes.ends[-1] - outcomes.start
                        size = self._next_size(size, busy, len(outcomes.values))
                    else:  # (no longer: auto went async)
                        size = 1
                if not (mode.batching or flying or given_back or self._unread):
                    break  # auto went async: a plain slot from now on (see below)
        except asyncio.CancelledError:  # the run is being stopped: each batch out says so
            for first, items, worker, task, since in flying:
                if not items:
                    continue
                start = time.time() - (clock() - since)
                self._finished_batch(
                    first, items, self._back_or_cut(task, items, start, worker), worker
                )
            raise
        finally:
            del self._flying[slot]
            for _, _, _, task, _ in flying:
                task.cancel()
        # Nothing of this slot's is in flight, and no item taken back from a batch
        # waits for a batching slot (a journal's runs read aside, _slot takes too).
        await self._slot(slot)

    async def _room_or_take_back(self) -> None:
        """Wait for room in the output, or take back the items a batch in flight has
        not started once it is overdue, whichever comes first. In order, a slow task
        is what holds the output full until it ends: the tiny tasks batched behind it
        must go to idle slots, not wait for it (nor may the output's being full
        before that batch is overdue keep them there)."""
        room = asyncio.ensure_future(self.output.room())
        try:
            if not await self._take_back(until=room):
                await room
        finally:
            room.cancel()

    async def _take_back(self, until: asyncio.Future[None] | None = None) -> bool:
        """Take back the items not started yet of the overdue batch in flight with
        the most of them (the next one, if it had none left after all), for idle
        slots to share, waiting for a batch out to be overdue (unless ``until`` is
        done first). False if there are none, or the run is stopping (it starts
        nothing more)."""
        clock, tried, waited = asyncio.get_running_loop().time, set[int](), False
        while self._stopping is None and not self._given_back:
            busiest, due, young = self._overdue(tried, clock())
            if busiest is None:
                if young or until is not None:
                    # Until one is overdue or one is back (then the rest may be going as
                    # they should, and this slot ends: nothing to take back from them);
                    # or, with ``until``, until items taken back go out again, in a
                    # batch overdue at once (more slow ones may be among them).
                    awaited: list[asyncio.Future[Any]] = [*young]
                    if until is not None:
                        awaited += (until, self._handed_again())
                    timeout = due - clock() if young else None
                    await asyncio.wait(awaited, timeout=timeout, return_when=FIRST_COMPLETED)
                    if until is not None and until.done():
                        return bool(self._given_back) and self._stopping is None
                    continue
                if waited or not any(not b[3].done() for f in self._flying.values() for b in f):
                    return False
                waited = True
                await asyncio.sleep(0)  # a batch handed over just now reaches its worker
                continue
            first, items = busiest
            asked = asyncio.get_running_loop().create_future()
            self._asks.add(asked)
            try:
                taken = await self.mode.take_back(items)  # (they leave items)
            finally:
                self._asks.discard(asked)
                asked.set_result(None)
            if taken and self._stopping is None:  # (stopped meanwhile: they never start)
                self._given_back.append((first + len(items), taken))
            tried.add(id(items))  # (tried: it had none after all)
        return bool(self._given_back) and self._stopping is None

    def _handed_again(self) -> asyncio.Future[None]:
        """Done when a slot next hands over items taken back from another."""
        if self._again is None or self._again.done():
            self._again = asyncio.get_running_loop().create_future()
        return self._again

    def _overdue(
        self, tried: set[int], now: float
    ) -> tuple[tuple[int, list[Any]] | None, float, list[asyncio.Task[Outcomes]]]:
        """The overdue batch in flight with the most items its worker has not
        started (of those not ``tried``, by id of their items list); when the next
        one will be overdue, and the tasks running those not overdue yet. A batch
        is overdue at once where taking items back costs nothing (threads)."""
        mode, most, busiest, due, young = self.mode, 0, None, math.inf, []
        asks = mode.take_back_asks  # (auto: as the mode it runs now)
        overdue, least = (OVERDUE, 2) if asks else (0.0, 1)  # a process: one item runs alone
        for flying in self._flying.values():
            for first, items, _, task, since in flying:
                if id(items) in tried or len(items) < least or task.done():
                    continue
                if now < since + overdue:
                    due = min(due, since + overdue)
                    young.append(task)
                elif (left := mode.unstarted(items)) > most:
                    most, busiest = left, (first, items)
        return busiest, due, young

    async def _answered(self) -> bool:
        """Whether another slot was asking a busy worker for items (a process
        answers after a round trip); once one such ask is answered. An idle slot
        waits for it, as it may bring items to share, rather than end."""
        if not self._asks:
            return False
        await asyncio.wait(self._asks, return_when=FIRST_COMPLETED)
        return True

    def _given(self, n: int) -> tuple[int, list[Any]]:
        """Up to ``n`` items taken back, and at most half of a run: idle slots share it."""
        first, items = self._given_back.popleft()
        k = min(n, max(1, len(items) // 2))
        if k < len(items):
            self._given_back.appendleft((first + k, items[k:]))
        return first, items[:k]

    def _hand_over(
        self, slot: int, first: int, items: list[Any], rerun: asyncio.Lock, again: bool = False
    ) -> tuple[str, asyncio.Task[Outcomes]]:
        """Hand a batch to ``slot``'s worker (``again``: items taken back from another)."""
        mode = self.mode
        worker = mode.worker(slot)
        if again and self._again is not None and not self._again.done():
            self._again.set_result(None)
        if self._journal is not None:
            self._journal.start(first, len(items))
        if self.sinks:
            now = time.time()
            for kind in (STARTED,) if again else (QUEUED, STARTED):  # started: handed over
                for k, item in enumerate(items):
                    self._emit(kind, first + k, item, now, worker)

        run = self._run_batch(slot, items, rerun)
        return worker, asyncio.get_running_loop().create_task(run)

    async def _run_batch(self, slot: int, items: list[Any], rerun: asyncio.Lock) -> Outcomes:
        """Run a batch; a worker crash fails only the task that caused it."""
        mode = self.mode
        try:
            return await mode.run_batch(slot, items)
        except WorkerCrashed as exc:
            end = time.time()
            if not items:  # it gave them all back before it died
                return Outcomes(end, [], [], {})
            if len(items) == 1:
                workers = [exc.worker] if exc.worker else []
                return Outcomes(end, [end], [None], {0: exc}, workers=workers)
        # Every task of the batch was caught in the crash, but only one caused it:
        # run them again one at a time, so only that one ends crashed (and, under
        # the lock, nothing else of this slot's is at the worker then).
        alone, workers = [], []
        async with rerun:
            for item in items:
                worker = mode.worker(slot)  # as at a hand-over: where it goes
                alone.append(outcomes := await self._run_batch(slot, [item], rerun))
                workers.extend(outcomes.where(worker))
        errors = {k: o.errors[0] for k, o in enumerate(alone) if o.errors}
        ends = [o.ends[0] for o in alone]
        values = [o.values[0] for o in alone]
        return Outcomes(alone[0].start, ends, values, errors, workers=workers)

    def _busy(self, n: int) -> None:
        """``n`` more (or fewer) attempts or batches running now."""
        running = self._running = self._running + n
        if running > self.peak:
            self.peak = running

    def _finished_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, worker: str
    ) -> None:
        if len(outcomes.values) != len(items):  # (the output would shift every value after)
            raise RuntimeError(
                f"whilst bug: a batch of {len(items)} tasks came back with "
                f"{len(outcomes.values)} values; please report it"
            )
        name = self.mode.ran_in(outcomes)
        self.done += len(items)
        self.failed += len(outcomes.errors)
        self.output.add_batch(first, items, outcomes, name, worker)
        if self.sinks:
            for r in batch_results(first, items, outcomes, name, worker):
                self._emit(FINISHED, r.index, r.item, r.end, r.worker, r)

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
        sinks = self._sinks_for[kind]
        if sinks:
            event = Event(kind, index, item, at, worker, result)
            for sink in sinks:
                sink(event)

    def _next_size(self, size: int, busy: float, ran: int) -> int:
        """The next batch's size: the last one ran ``ran`` items in ``busy`` seconds
        (fewer than ``size`` when items were taken back, or had not come yet)."""
        if busy < BATCH_TARGET / 2:
            grown = ran * BATCH_TARGET / max(busy, 1e-6)
            size = int(min(grown, size * 8))
        elif busy > BATCH_TARGET * 4:
            size //= 2
        size = max(1, min(size, self._max_batch))
        self.output.widen(2 * size * self.limit)  # room for two such batches a slot
        return size

    # -- the policy path -----------------------------------------------------

    async def _policy_slot(self, slot: int) -> None:
        """A slot of a run with a policy: one item per attempt, each attempt under a
        cancel scope (its timeout; a halt or deadline expires it early), failed
        attempts set aside to be retried after their backoff. The mode is told
        when an attempt it prepared for is over (or did not start)."""
        mode, policy = self.mode, self.policy
        attempt = self._attempt_caller(slot)
        timeout, scoped = policy.timeout, policy.stops_attempts
        loop = asyncio.get_running_loop()
        while (task := await self._next_task()) is not None:
            try:
                status, value = OK, None
                error: BaseException | None = None
                try:
                    try:  # the worker's start-up and function loading (and, in auto, the
                        await mode.prepare(slot)  # wait for a turn) are not the task's time
                    except WorkerCrashed as exc:
                        status, error = CRASHED, exc
                    if status is OK and policy.rate is not None:
                        at = self._rate.reserve(loop.time())  # type: ignore[union-attr]
                        while (left := at - loop.time()) > 0 and not self._stopping:
                            await self._sleep(left)
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        self._release(task)  # the run is being cancelled: it never starts
                        self._abandon(task)
                    raise
                if self._stopping:  # halted while it waited for its turn: it does not start
                    self._release(task)
                    self._abandon(task)
                    continue
                worker = ""  # (named as the attempt starts, after the wait: auto may move)
                # Attempts that run on this loop or in this thread: only they can end late.
                late_is_timed_out = not mode.stoppable or mode.name == "async"
                task.attempts += 1
                began, paused = loop.time(), self._paused
                scope = self._scopes[slot] = asyncio.timeout(None) if scoped else None
                running = False
                try:
                    if status is not OK:
                        pass  # its worker died getting ready
                    elif scope is None:
                        worker = mode.worker(slot)
                        self._started(task, worker)
                        running = True
                        value = await attempt(task.item)
                    else:
                        async with scope:
                            worker = mode.worker(slot)
                            self._started(task, worker)
                            running = True
                            began, paused = loop.time(), self._paused
                            if timeout is not None and not self._stop_now:
                                scope.reschedule(began + timeout)
                            value = await attempt(task.item)
                except TimeoutError as exc:
                    if scope is not None and scope.expired():
                        status, error = self._expired(worker)
                    else:  # the task raised it: an ordinary failure, unless a TaskTimeout
                        status, error = failure_status(exc), exc
                except asyncio.CancelledError as exc:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        if running:  # the run is being stopped, not just this task: it says so
                            self._finish(
                                self._result(
                                    task, CANCELLED, None, self._cut(worker), time.time(), worker
                                )
                            )
                        raise
                    status, error = CANCELLED, exc
                except BaseException as exc:
                    if self.interrupted and isinstance(exc, KeyboardInterrupt):
                        raise
                    error = as_raised(exc)
                    status = failure_status(error)
                finally:
                    del self._scopes[slot]
                    if running:
                        self._busy(-1)
                if status is OK and scope is not None and scope.expired():
                    # A coroutine that caught the cancellation and returned: stopped all the same.
                    value, dropped = (
                        None,
                        "caught its cancellation and returned; its value was dropped",
                    )
                    if self._stop_now:
                        status = CANCELLED
                        error = TaskCancelled(f"{self._stopping}: the task {dropped}")
                    else:
                        status = TIMED_OUT
                        error = TaskTimeout(
                            f"the attempt ran past its timeout of {timeout:g} s, {dropped}"
                        )
                worker = self._ran_in.pop(slot, worker)  # where it ran, if not the slot's worker
                if isinstance(error, WorkerCrashed) and error.worker:
                    worker = error.worker
                took = loop.time() - began - (self._paused - paused)
                if timeout is not None and took > timeout and status is OK and late_is_timed_out:
                    # It could not be stopped (a sync call, a coroutine that blocked the
                    # loop or ignored its cancellation): late is timed out all the same.
                    # (A thread's or worker's result that came as its timer was due is
                    # kept: the task ended well, and a retry would run it twice.)
                    status, value = TIMED_OUT, None
                    error = (
                        self._timed_out(worker)
                        if not mode.stoppable
                        else TaskTimeout(
                            f"the attempt ran past its timeout of {timeout:g} s ({took:.2f} s) and "
                            "could not be stopped: it ran to its end, and its value was dropped"
                        )
                    )
                end = time.time()
                if status is TIMED_OUT and mode.abandons and not self._stopping:
                    # Its thread runs on: the slot, the key and any retry wait for it.
                    retry = self._retrying(task, status, error)
                    if not retry:
                        self._ended(task, status, value, error, end, worker)
                    if retry or not self._nothing_left():  # (the run's end does not wait)
                        try:
                            await self._settle(slot, retry)
                        except asyncio.CancelledError:
                            if retry:  # the run is being cancelled: the retry never starts
                                task.errors.append(error)  # type: ignore[arg-type]
                                self._abandon(task)
                            raise
                    self._release(task)
                    if retry:
                        self._ended(task, status, value, error, end, worker)
                else:
                    self._release(task)
                    self._ended(task, status, value, error, end, worker)
            finally:
                mode.release(slot)

    async def _policy_batch_slot(self, slot: int) -> None:
        """The policy path of a batching mode when the policy is retries alone: tiny
        tasks still share round trips to the worker, sized as on the plain path.

        Fresh items travel as on the plain path (a batch of consecutive items,
        kept in columns; only a failure becomes a task of its own); retries that
        are due travel in batches of their own, each task keeping its attempts.
        """
        output = self.output
        size, rerun = 1, asyncio.Lock()
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if self._retries:
                self._promote(loop.time())
            held = self._held
            if held:
                tasks = [held.popleft() for _ in range(min(size, len(held)))]
                ran = len(tasks)
                self._busy(1)
                try:
                    busy = await self._retry_batch(slot, tasks, rerun)
                except asyncio.CancelledError:  # the run is being stopped: they say so
                    worker, end = self.mode.worker(slot), time.time()
                    error = self._cut(worker)
                    for task in tasks:
                        self._finish(self._result(task, CANCELLED, None, error, end, worker))
                    raise
                finally:
                    self._busy(-1)
            elif not self._exhausted and len(self._retries) < self._aside:
                if output.bounded and output.full:
                    # A retry may be what the reader waits for: nap, to be woken
                    # when it falls due (or when the reader makes room).
                    await (self._nap() if self._retries else output.room())
                    continue
                first, items = await self._take(size)
                if not items:
                    continue
                self._spawn()
                worker, run = self._hand_over(slot, first, items, rerun)
                ran = len(items)
                self._busy(1)
                handed = time.time()
                try:
                    outcomes = await run
                except asyncio.CancelledError:  # the run is being stopped: they say so
                    self._failed_batch(
                        first, items, self._back_or_cut(run, items, handed, worker), worker
                    )
                    raise
                finally:
                    self._busy(-1)
                busy = outcomes.ends[-1] - outcomes.start
                if outcomes.errors:
                    self._failed_batch(first, items, outcomes, worker)
                else:
                    self._finished_batch(first, items, outcomes, worker)
            elif self._retries:
                await self._nap()
                continue
            else:
                break
            if not self.mode.batching:  # auto went async: one coroutine at a time a slot
                await self._policy_slot(slot)
                return
            size = self._next_size(size, busy, ran) if self.mode.auto_batch else 1
        self._wake_all()  # nothing left to start: napping slots may end too

    def _failed_batch(self, first: int, items: list[Any], outcomes: Outcomes, worker: str) -> None:
        """A fresh batch with failures: its successes are done, each failure becomes a
        task that may be retried."""
        name = self.mode.ran_in(outcomes)
        for r in batch_results(first, items, outcomes, name, worker):
            if r.status is OK:
                self._finish(r)
            else:
                task = _Task(r.index, r.item)
                task.attempts, task.start = 1, r.start
                self._ended(task, r.status, None, r.error, r.end, r.worker)

    async def _retry_batch(self, slot: int, tasks: list[_Task], rerun: asyncio.Lock) -> float:
        """Run one attempt of each task, in one batch; the seconds the worker was busy."""
        worker, now = self.mode.worker(slot), time.time()
        for task in tasks:
            task.attempts += 1
            task.retried_at(now)
            if self.sinks:
                self._emit(STARTED, task.index, task.item, now, worker)
        outcomes = await self._run_batch(slot, [task.item for task in tasks], rerun)
        errors = outcomes.errors
        for k, (task, value, end, ran_in) in enumerate(
            zip(tasks, outcomes.values, outcomes.ends, outcomes.where(worker), strict=True)
        ):
            error = errors.get(k)
            if error is None:
                self._ended(task, OK, value, None, end, ran_in)
            else:
                status = failure_status(error)
                self._ended(task, status, None, error, end, ran_in)
        return outcomes.ends[-1] - outcomes.start

    def _started(self, task: _Task, worker: str) -> None:
        """An attempt of ``task`` starts now (it counts as running)."""
        self._busy(1)
        if self._journal is not None and task.attempts == 1:
            self._journal.start(task.index)
        if task.attempts == 1:
            task.start = start = time.time()
        else:
            start = time.time()
            task.retried_at(start)
        if self.sinks:
            self._emit(STARTED, task.index, task.item, start, worker)

    def _attempt_caller(self, slot: int) -> Call:
        """An async function running one attempt of one item in ``slot``."""
        mode = self.mode
        if not mode.batching:
            return mode.caller(slot)
        run_batch, ran_in = mode.run_batch, self._ran_in

        async def attempt(item: Any) -> Any:
            outcomes = await run_batch(slot, [item])
            if outcomes.workers:  # not the slot's worker (run alone after a crash)
                ran_in[slot] = outcomes.workers[0]
            if outcomes.errors:
                raise outcomes.errors[0]
            return outcomes.values[0]

        return attempt

    def _expired(self, worker: str) -> tuple[Status, BaseException]:
        """Why an attempt's scope expired: the run stopped it, or its timeout passed."""
        if not self._stop_now:
            return TIMED_OUT, self._timed_out(worker)
        if self.mode.abandons:  # the note says what became of it
            why = f"{self._stopping}: {self.mode.note_for(worker)}"
        else:
            why = f"{self._stopping}: the task was cancelled"
        return CANCELLED, TaskCancelled(why)

    def _why_cut(self) -> str:
        """What the run's cancellation, as it cuts a task short, was."""
        if self.interrupted:
            return "the run was interrupted"
        # (A halt that lets running tasks finish did not cut this one.)
        return (self._stop_now and self._stopping) or "the run was stopped"

    def _cut(self, worker: str) -> TaskCancelled:
        """The error of a task whose attempt the run's cancellation cut short (a
        signal after its grace, say): its result says so, for an ``imap``'s reader
        and ``--results`` to get before the run's KeyboardInterrupt. A thread runs
        on (whilst run's says what became of its command)."""
        mode = self.mode
        how = (
            mode.note_for(worker) if mode.mode_of(worker) == "threads" else "the task was cancelled"
        )
        return TaskCancelled(f"{self._why_cut()}: {how}")

    def _cut_batch(self, items: list[Any], start: float, worker: str) -> Outcomes:
        """How a batch handed over at ``start`` ended when the run's cancellation cut
        it short: its worker ran its items in turn, and those it had not started
        (as far as the mode knows) never will."""
        n, now = len(items), time.time()
        never = min(self.mode.unstarted(items), n - 1)
        cut = self._cut(worker)
        unstarted = TaskCancelled(f"{self._why_cut()}: the task never started")
        errors: dict[int, BaseException] = {
            k: cut if k < n - never else unstarted for k in range(n)
        }
        return Outcomes(start, [now] * n, [None] * n, errors)

    def _back_or_cut(
        self, task: asyncio.Future[Outcomes], items: list[Any], start: float, worker: str
    ) -> Outcomes:
        """A batch's outcomes as the run's cancellation finds it: back already (as
        the stop came), or cut short."""
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return self._cut_batch(items, start, worker)

    def _timed_out(self, worker: str) -> TaskTimeout:
        timeout, note = self.policy.timeout, self.mode.note_for(worker)
        return TaskTimeout(f"the attempt ran past its timeout of {timeout:g} s; {note}")

    async def _settle(self, slot: int, retry: bool = False) -> None:
        """After a timed-out attempt: wait until the slot's worker is free again (a
        thread cannot be killed; it keeps its slot until it returns). Unless the
        attempt is to be retried, the wait ends too when nothing is left to start."""
        scope = self._settling[slot] = asyncio.timeout(None)
        if retry:
            self._retry_settling.add(slot)
        try:
            async with scope:
                await self.mode.settle(slot)
        except TimeoutError:
            pass  # the run is stopping, or has nothing left: leave the attempt behind
        finally:
            del self._settling[slot]
            self._retry_settling.discard(slot)

    def _nothing_left(self) -> bool:
        """Whether no task is left to start: the input read to its end (known for an
        input with a length), and nothing waiting for a retry or for its key."""
        read_all = self._exhausted or (self._total is not None and self._pulled >= self._total)
        return read_all and not (self._retries or self._held or self._unread)

    def _ended(
        self,
        task: _Task,
        status: Status,
        value: Any,
        error: BaseException | None,
        end: float,
        worker: str,
    ) -> None:
        """An attempt ended: retry it (after its backoff) or finish the task."""
        if status is CRASHED:
            if getattr(error, "caught", False):  # killed for another task's timeout
                task.attempts -= 1
                task.ended = end  # (it ran until now: its rerun's wait starts here)
                self._held.append(task)
                self._wake_one()
                return
            task.deaths += 1
            if task.deaths >= POISON_DEATHS:
                status = POISONED
        try:
            retry = self._retryable(task, status, error)
        except Exception as exc:  # retry_on itself failed: that is the task's error
            exc.add_note("whilst: raised by retry_on, deciding whether to retry this task")
            exc.__context__ = error
            retry, status, error = False, FAILED, exc
        if not retry:
            self._finish(self._result(task, status, value, error, end, worker))
            return
        if not self._stopping:
            self.retried += 1
            if self.sinks:
                result = self._result(task, status, None, error, end, worker)
                self._emit(RETRYING, task.index, task.item, end, worker, result)
        task.errors.append(error)  # type: ignore[arg-type]
        task.ended = end
        if self._stopping:  # as a retry waiting when the stop came: it never starts
            self._abandon(task)
            return
        delay = self.policy.delay(task.attempts, error)  # type: ignore[arg-type]
        due = asyncio.get_running_loop().time() + delay
        heapq.heappush(self._retries, (due, next(self._seq), task))
        self._arm_retry_timer()

    def _retrying(self, task: _Task, status: Status, error: BaseException | None) -> bool:
        """Whether an attempt that ended so will be followed by another."""
        return not self._stopping and self._retryable(task, status, error)

    def _retryable(self, task: _Task, status: Status, error: BaseException | None) -> bool:
        """Whether an attempt that ended so has a retry coming, unless the run stops."""
        policy = self.policy
        return (
            (status is FAILED or status is TIMED_OUT or status is CRASHED)
            and task.attempts <= policy.retries
            and task.deaths < POISON_DEATHS
            and (status is not FAILED or policy.retryable(error))  # type: ignore[arg-type]
        )

    def _result(
        self,
        task: _Task,
        status: Status,
        value: Any,
        error: BaseException | None,
        end: float,
        worker: str,
    ) -> Result:
        earlier = tuple(task.errors)
        start = task.start or end
        mode = self.mode.mode_of(worker) if worker else self.mode.name
        return Result(
            task.index, task.item, status, value, error, task.attempts, start, end, mode, worker,
            earlier, task.waited,
        )  # fmt: skip

    def _finish(self, result: Result) -> None:
        """A task has its result: into the journal, out to the caller (once its
        journal record is committed), and it counts for the halt rule."""
        self.done += 1
        if not result.ok:
            self.failed += 1
        self.output.add(result)  # (with a journal: once its record is committed)
        if self.sinks:
            self._emit(FINISHED, result.index, result.item, result.end, result.worker, result)
        halt = self.policy.halt
        if halt is None or result.status is CANCELLED or result.status is SKIPPED:
            return
        self._finished += 1
        if result.status is OK:
            self._successes += 1
        else:
            self._failures += 1
        n = self._successes if halt.what == "success" else self._failures
        if halt.met(n, self._total, self._finished):
            self._halt(f"{HALTED} {halt!s} was met", now=halt.when == "now")

    def _abandon(self, task: _Task) -> None:
        """A task that will not run (again) because the run stopped: ``cancelled``,
        keeping the errors of the attempts it had (``Result.errors``)."""
        how = "the task never started" if task.attempts == 0 else "its retry never started"
        error = TaskCancelled(f"{self._stopping or self._why_cut()}: {how}")
        self._finish(self._result(task, CANCELLED, None, error, time.time(), ""))

    def _halt(self, reason: str, now: bool) -> None:
        """Start nothing new; with ``now``, cancel running attempts too."""
        if self._stopping is None:
            self._stopping = reason
        self._exhausted = True
        self._given_back.clear()  # taken back, not started: they never will be
        self.mode.stop_waiting()
        if now and not self._stop_now:
            self._stop_now = True
            self._stopping = reason
            for scope in self._scopes.values():
                if scope is not None and not scope.expired():
                    scope.reschedule(-math.inf)
        for scope in self._settling.values():
            if not scope.expired():
                scope.reschedule(-math.inf)
        stop_reading = getattr(self._aitems, "stop_reading", None)
        if stop_reading is not None and not self._input_ended:
            # A slot waiting for an input's next item (a stream that may be long in
            # coming, or never) stops waiting: the input ends here.
            if not self.interrupted:
                self.left_unread = self._stopping
            stop_reading()
        if self.journal_error is None:  # (which unblocks the output: see Journaled)
            # At once, not as the run ends: the reader may wait for one of them, and
            # a slot for the room it would make (the run never ended).
            self._abandon_waiting()
        self._wake_all()
        for fut in self._sleeping:
            _wake(fut)

    def _abandon_waiting(self) -> None:
        """The tasks that wait to start (retries, items whose key is full, items a
        journal's read left) never will: each gets its result now."""
        unread = (
            _Task(i, item) for first, run in self._unread for i, item in enumerate(run, first)
        )
        for task in (*self._held, *(task for _, _, task in sorted(self._retries)), *unread):
            self._abandon(task)
        self._retries.clear()
        self._held.clear()
        self._unread.clear()

    def _deadline_passed(self) -> None:
        self._halt(f"the run's deadline of {self.policy.deadline:g} s passed", now=True)

    async def _drain(self) -> None:
        """After a halted run's slots ended: every item that did not finish gets its
        result, so none is missing: retries waiting, items waiting for their key,
        and the rest of an input with a length, read to its end. An input of no
        known length (a generator, a file) is read for one item more, to see
        whether any is left, and no further: it may never end
        (``itertools.count()`` read on for its cancelled results grew without
        bound), or only slowly; an async input is not read at all."""
        output = self.output
        self._abandon_waiting()
        if self._stopping is None or self.interrupted or self.journal_error is not None:
            return  # (a run whose journal failed ends at once, with that error)
        if self._aitems is not None:
            if not self._input_ended:
                self.left_unread = self._stopping
            return
        rest = self._reading(self._rest)
        if self._total is None:
            rest = itertools.islice(rest, 1)  # (so an input at its end is known to be)
        for n, item in enumerate(rest):
            if output.bounded and output.full:
                await output.room()
            elif n % 1024 == 1023:
                await asyncio.sleep(0)  # let Ctrl-C and the caller in
            if self.interrupted:
                return
            index, self._pulled = self._pulled, self._pulled + 1
            if self.sinks:
                self._emit(QUEUED, index, item, time.time())
            done = self._journal.lookup(index, item) if self._journal is not None else None
            if done is not None:
                self._finish(done)
            else:
                self._abandon(_Task(index, item))
        if self._total is None and not self._read_to_end:
            self.left_unread = self._stopping

    async def _next_task(self) -> _Task | None:
        """The next task for a slot, admitted under its key; None when none is left.

        In turn: a task set aside that is ready (a retry that is due, an item
        whose key has room again), then a new item from the input. Items whose
        key is full are set aside so others pass (no head-of-line blocking); at
        most ``window_for(limit)`` tasks are set aside, retries included, so
        memory stays bounded whatever waits. A slot with nothing to do naps
        until something changes for one slot: a key frees, a retry falls due.
        """
        loop = asyncio.get_running_loop()
        output, retries, held = self.output, self._retries, self._held
        while not self._stopping:
            if retries or self._deadline_at < math.inf:
                now = loop.time()
                if now >= self._deadline_at:  # checked here too: sync tasks hold the loop
                    self._deadline_passed()
                    break
                if retries and retries[0][0] <= now:
                    self._promote(now)
            if held and (task := self._runnable()) is not None:
                if self._idle:  # more may be ready: pass the turn on
                    self._wake_one()
                return self._admit(task)
            aside = len(retries) + len(held)
            reading = not self._exhausted and aside < self._aside
            if reading and not (output.bounded and output.full):
                task = await self._read()
                if task is None:
                    continue
                if self._key_free(task):
                    return self._admit(task)
                held.append(task)
            elif reading and not aside:
                await output.room()  # only running tasks ahead, and they need no room
            elif aside:
                await self._nap()
            else:  # nothing left to start: napping slots may end too, and slots
                # waiting for an abandoned thread need not (unless for its retry)
                for slot, scope in self._settling.items():
                    if slot not in self._retry_settling and not scope.expired():
                        scope.reschedule(-math.inf)
                break
        self._wake_all()
        return None

    def _runnable(self) -> _Task | None:
        """The first task set aside whose key has room."""
        held = self._held
        if self.policy.per_key is None:
            return held.popleft()
        for i, task in enumerate(held):
            if self._key_free(task):
                del held[i]
                return task
        return None

    def _promote(self, now: float) -> None:
        """Retries that are due join the tasks ready to run, each waking a slot."""
        retries = self._retries
        while retries and retries[0][0] <= now:
            self._held.append(heapq.heappop(retries)[2])
            self._wake_one()

    def _arm_retry_timer(self) -> None:
        """Keep one timer, on the earliest retry (napping slots have none)."""
        if not self._retries:
            return
        due = self._retries[0][0]
        if self._retry_timer is not None:
            if self._timer_due <= due:
                return
            self._retry_timer.cancel()
        self._timer_due = due
        self._retry_timer = asyncio.get_running_loop().call_at(due, self._retries_due)

    def _retries_due(self) -> None:
        # The loop runs a timer up to its clock's resolution early: it is due.
        now = max(asyncio.get_running_loop().time(), self._timer_due)
        self._retry_timer, self._timer_due = None, math.inf
        self._promote(now)
        self._arm_retry_timer()

    async def _read(self) -> _Task | None:
        """The next item of the input as a task; None at the input's end, or when
        its key could not be computed (that task then ends failed)."""
        if self._sync_source and not self._unread:  # read through _guarded when it could raise
            try:
                item = next(self._items, _END)
            except InputInterrupted:  # a stop signal while it waited for the item
                item = _END
            if item is _END:
                self._stop_pulling()
                return None
            index = self._pulled
            self._pulled = index + 1
            journal = self._journal
            if journal is not None and (done := journal.admit(index, item, started=False)):
                self._finish(done)
                return None
        else:
            index, items = await self._take(1)  # admitted by the journal there
            if not items:
                return None
            item = items[0]
        self._spawn()
        task = _Task(index, item)
        if self.sinks:
            self._emit(QUEUED, index, task.item, time.time())
        key = self.policy.key
        if key is not None:
            try:
                task.key = key(task.item)
                hash(task.key)
            except Exception as exc:
                exc.add_note(f"whilst: raised by key= on item {index}")
                self._finish(self._result(task, FAILED, None, exc, time.time(), ""))
                return None
        return task

    def _key_free(self, task: _Task) -> bool:
        return self._keys is None or self._keys.free(task.key)

    def _admit(self, task: _Task) -> _Task:
        if self._keys is not None:
            self._keys.take(task.key)
        return task

    def _release(self, task: _Task) -> None:
        if self._keys is not None:
            self._keys.give(task.key)
            if self._held:
                self._wake_one()

    async def _nap(self) -> None:
        """Wait until :meth:`_wake_one` picks this slot (or the run halts)."""
        fut = asyncio.get_running_loop().create_future()
        self._idle.append(fut)
        try:
            await fut
        finally:
            if fut.cancelled():
                with contextlib.suppress(ValueError):
                    self._idle.remove(fut)

    def _wake_all(self) -> None:
        idle = self._idle
        while idle:  # popped, so woken slots do not pile up here
            _wake(idle.popleft())

    def _wake_one(self) -> None:
        """Something became ready for one slot: wake the longest napping one."""
        idle = self._idle
        while idle:
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if the run halts."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._sleeping.add(fut)
        handle = loop.call_later(delay, _wake, fut)
        try:
            await fut
        finally:
            self._sleeping.discard(fut)
            handle.cancel()


def _told(fn: Any, name: str) -> str | None:
    """What a command of the CLI tells of its run through its task (a report's
    title, why it runs where): a text attribute, or None (``str.title`` is none)."""
    told = getattr(fn, name, None)
    return told if isinstance(told, str) else None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Task:
    """One item on the policy path, across its attempts."""

    __slots__ = (
        "attempts", "deaths", "ended", "errors", "index", "item", "key", "start", "waited",
    )  # fmt: skip

    def __init__(self, index: int, item: Any) -> None:
        self.index = index
        self.item = item
        self.key: Any = None
        self.attempts = 0
        self.deaths = 0  # worker processes it killed
        self.errors: list[BaseException] = []  # of the attempts before the next
        self.start = 0.0
        self.ended = 0.0  # when its last failed attempt ended (its retry waits from then)
        self.waited = 0.0  # seconds between its attempts, so far

    def retried_at(self, now: float) -> None:
        """An attempt after the first starts ``now``: the wait since the last one
        ended is no task time (``ended`` is 0.0 for a task that never ran yet)."""
        if self.ended:
            self.waited += max(now - self.ended, 0.0)
