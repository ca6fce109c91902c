"""``threads``: plain functions in ``limit`` threads, one thread per slot."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import operator
import queue
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

from ._base import Mode, Outcomes
from ._worker import GIL, awaitable, run_batch


class _Completions:
    """Hands results from worker threads to the loop with one wake-up per burst.

    ``loop.call_soon_threadsafe`` writes to the loop's self-pipe: a system call
    and a wake-up. Under load many results arrive while a drain is already
    scheduled, so they ride along with it instead of paying their own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: collections.deque[tuple[asyncio.Future[Any], Any]] = collections.deque()
        self._scheduled = False
        #: Abandoned jobs' futures -> a future set when their thread is done with them.
        self.settling: dict[asyncio.Future[Any], asyncio.Future[None]] = {}

    def post(self, fut: asyncio.Future[Any], value: Any) -> None:
        """Called from a worker thread."""
        self._pending.append((fut, value))
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # a closed loop: the run was abandoned
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Clear the flag before draining: a result appended after this line
        # schedules its own drain, so none is ever left behind.
        self._scheduled = False
        pending = self._pending
        while pending:
            fut, value = pending.popleft()
            if not fut.done():
                fut.set_result(value)
                continue
            if value.unawaited:  # the job was given up on: its coroutines never will be
                close_coroutines(value.values)
            if self.settling:  # the slot gave up on it (timeout) and waits for the thread
                waiter = self.settling.pop(fut, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)


def _same(exc: BaseException) -> BaseException:
    return exc


def close_coroutines(values: list[Any]) -> None:
    """Close the coroutines among ``values`` that will not be awaited (a closed
    one says nothing, where one left to the garbage collector warns that it was
    never awaited); closing one that ended does nothing."""
    for value in values:
        if inspect.iscoroutine(value):
            value.close()


def _handing(fn: Any) -> Any:
    """``fn``, an awaitable it returns that is not a coroutine (aiohttp's
    ``session.get(url)``) made one, for auto's threads to hand back too."""
    coroutine = types.CoroutineType

    def call(item: Any) -> Any:
        value = fn(item)
        return _awaiting(value) if type(value) is not coroutine and awaitable(value) else value

    return call


async def _awaiting(value: Any) -> Any:
    return await value


class _SlotThread(threading.Thread):
    def __init__(
        self, fn: Any, done: _Completions, name: str, timed: bool, hand_back: bool
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.fn = _handing(fn) if hand_back else fn
        self.timed = timed
        self.hand_back = hand_back
        self._handed = False  # this job handed a coroutine back
        self.done = done
        self.inbox: queue.SimpleQueue[tuple[asyncio.Future[Any], Iterator[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._runner: asyncio.Runner | None = None
        self._task: asyncio.Task[Any] | None = None  # the coroutine it runs, if any
        self._running: asyncio.Future[Any] | None = None  # the job it runs
        self.job: asyncio.Future[Any] | None = None  # the last job handed over
        self.last_done: asyncio.Future[Any] | None = None  # the last job it finished

    def run(self) -> None:
        get, post, thread_time, timed = self.inbox.get, self.done.post, time.thread_time, self.timed
        await_ = self._hand_back if self.hand_back else self._await
        try:
            while (job := get()) is not None:
                fut, items = job
                self._running = fut
                cpu = thread_time()
                start, ends, values, errors = run_batch(self.fn, items, _same, await_, timed)
                cpu = thread_time() - cpu
                handed, self._handed = self._handed, False
                self.last_done = fut  # before post: see ThreadsMode.settle
                post(fut, Outcomes(start, ends, values, errors, cpu, timed=timed, unawaited=handed))
                del job, fut, items
        finally:
            if self._runner is not None:
                self._runner.close()

    def _hand_back(self, coro: Any) -> Any:
        """Auto's threads leave a coroutine the function returned for the scheduler's
        loop to await: what it uses (a session, a lock) may belong to that loop."""
        self._handed = True
        return coro

    def _await(self, coro: Any) -> Any:
        """A coroutine function in threads mode runs on this thread's own loop."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(self._cancellable(coro))

    async def _cancellable(self, coro: Any) -> Any:
        self._task = asyncio.current_task()
        try:
            # Its job cancelled before this task was there to cancel (see cancel):
            # the task is set first, so either this sees it, or cancel() sees the task.
            job = self._running
            if job is not None and job.cancelled():
                coro.close()
                raise asyncio.CancelledError
            return await coro
        finally:
            self._task = None

    def cancel(self) -> None:
        """Cancel the coroutine this thread runs, if any (called from another thread,
        once its job's future was cancelled: its attempt timed out, or the run is
        being stopped); one it starts for that job later is cancelled as it starts."""
        task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # its loop just closed: it ended
                task.get_loop().call_soon_threadsafe(task.cancel)


class ThreadsMode(Mode):
    """Each slot owns one thread. Tiny tasks travel to it in batches and results
    come back in batched wake-ups, so the loop is not woken once per task."""

    name = "threads"
    batching = True
    auto_batch = True
    abandons = True
    timeout_note = (
        "thread still running (threads cannot be killed): the attempt was abandoned, "
        "and its thread takes no other task until it returns "
        "(use mode='processes' for code that must be stopped)"
    )
    #: A coroutine a plain function returns is left among the values (``unawaited``)
    #: for the scheduler's loop to await, not awaited on the thread's own (auto).
    hand_back = False

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = _Completions(self._loop)
        self._threads: dict[int, _SlotThread] = {}
        # Batches in flight (by id of their items list): what their threads have not
        # started yet. A thread takes each item from the iterator as it starts it.
        self._rest: dict[int, Iterator[Any]] = {}
        self._never: dict[int, int] = {}  # batches cancelled: how many items never started

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        thread = self._threads.get(slot)
        if thread is None:
            thread = _SlotThread(self.fn, self._done, self.worker(slot), self.timed, self.hand_back)
            self._threads[slot] = thread
            thread.start()
        fut = thread.job = self._loop.create_future()
        rest = self._rest[id(items)] = iter(items)
        thread.inbox.put((fut, rest))
        try:
            outcomes: Outcomes = await fut  # cancelled (a timeout): the thread runs on
        except asyncio.CancelledError:
            thread.cancel()  # a coroutine it runs is cancelled on the thread's own loop
            # ...but starts none of the batch's items after it (the run is stopping):
            # drained in C, holding the GIL (see take_back).
            if never := len(list(rest)) if GIL else 0:
                self._never[id(items)] = never  # for unstarted, asked once
            raise
        finally:
            del self._rest[id(items)]
        return outcomes

    def unstarted(self, items: list[Any]) -> int:
        rest = self._rest.get(id(items))
        if rest is None:  # (back, or cancelled: its items not started never will be)
            return self._never.pop(id(items), 0)
        return 0 if not GIL else operator.length_hint(rest)

    async def take_back(self, items: list[Any]) -> list[Any]:
        # list() drains the iterator in C, holding the GIL: the thread gets every
        # item before the ones taken, or none of them. Without a GIL (a free-threaded
        # build) both could get one item: nothing is taken back there.
        rest = self._rest.get(id(items))
        taken = [] if rest is None or not GIL else list(rest)
        del items[len(items) - len(taken) :]
        return taken

    async def settle(self, slot: int) -> None:
        """A thread cannot be killed: wait until it is done with the abandoned job."""
        thread = self._threads.get(slot)
        if thread is None or thread.job is None:
            return
        job = thread.job
        waiter = self._done.settling[job] = self._loop.create_future()
        try:
            if thread.last_done is not job:  # else its result was already posted
                await waiter
        finally:
            self._done.settling.pop(job, None)

    def note_for(self, worker: str) -> str:
        # A function that stops what it runs itself says what (whilst run's jobs).
        if (note := getattr(self.fn, "stop_note", None)) is not None:
            return str(note)
        if self.is_async:
            return (
                "its coroutine was cancelled on its thread's own event loop, and its thread "
                "takes no other task until it ends"
            )
        return self.timeout_note

    def cpu_seconds(self) -> float | None:
        """CPU time its threads have spent so far, tasks still running included (from
        each thread's CPU clock, where the system has one); None elsewhere. On the
        CPU only: counting a thread's wait for a CPU too (schedstat) made threads
        that wake together from short sleeps look CPU-bound."""
        try:
            threads = [t.ident for t in self._threads.values() if t.ident]
            return sum(time.clock_gettime(time.pthread_getcpuclockid(t)) for t in threads)
        except (AttributeError, OSError):  # no per-thread CPU clocks here, or a thread ended
            return None

    def worker(self, slot: int) -> str:
        return f"thread-{slot}"

    async def close(self, *, abort: bool = False) -> None:
        for thread in self._threads.values():
            thread.inbox.put(None)
        # A thread cannot be killed: one still busy with a task ends when the task
        # does (the threads are daemons, so they never hold up interpreter exit).
        self._threads.clear()
        self._never.clear()
