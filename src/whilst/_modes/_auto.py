"""``auto`` for a plain function: measured, not guessed.

The first tasks run in threads while the threads' CPU time is measured (each
thread's CPU clock, tasks still running included; where there is none, each
finished batch's ``time.thread_time``). Threads share one interpreter lock, so
CPU-bound tasks in several threads take turns on one core: the measure is the
threads' CPU seconds against the wall time of the probe, which is near 100%
when they are CPU-bound (whatever the number of threads) and near 0% when they
wait. The probe ends after ``PROBE_TASKS`` tasks or ``PROBE_SECONDS``, whichever
comes first, finished or not. Mostly CPU, more than one CPU, and a function that
can be pickled: the rest of the run goes to processes. Otherwise it stays in
threads. The reason is kept for the summary and the report.

A plain function may return a coroutine (``lambda u: fetch(session, u)``), which
whilst learns only by calling it. Its threads hand such coroutines back to be
awaited on the scheduler's loop (the caller's, for ``amap``), where what they use
(a session, a lock) belongs, not on a thread's own; and the rest of the run is
``async``: each call and its coroutine on that loop, with no thread.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from .._options import cpu_count
from . import _worker
from ._base import Call, Mode, Outcomes
from ._threads import ThreadsMode, close_coroutines

#: Tasks measured before choosing, unless the probe has taken this long already.
PROBE_TASKS = 8
PROBE_SECONDS = 0.5
#: The share of the probe's wall time the tasks spent on the CPU that means
#: CPU-bound: waiting tasks measure a few percent, CPU-bound ones 60-100%.
CPU_BOUND = 0.5


class AutoMode(Mode):
    """Threads first; processes for the rest once the first tasks prove CPU-bound,
    the loop once the function proves to return coroutines."""

    def __init__(self, fn: Any, *, limit: int, is_async: bool) -> None:
        super().__init__(fn, limit=limit, is_async=is_async)
        self.threads = ThreadsMode(fn, limit=limit, is_async=is_async)
        self.threads.hand_back = True
        self.active: Mode = self.threads
        # Threads whose slot's latest attempt ran on the loop: the scheduler named
        # its worker as it began, maybe before the function proved to return coroutines.
        self._on_loop: set[str] = set()
        self.reason = "auto is measuring the first tasks in threads"
        self._cpu = 0.0
        self._tasks = 0
        self._began: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._choosing: asyncio.Task[None] | None = None
        self._probed: list[tuple[list[Any], list[Any]]] = []  # the probe's items and values
        #: Told when the function proved to return coroutines (the rest of the run is async).
        self.went_async: Callable[[], None] | None = None
        self._probing = True  # until auto has chosen
        # Slots whose attempt has its turn, and which (see prepare): in processes,
        # the worker it runs on.
        self._turns: dict[int, int] = {}
        self._turn_waits: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._stopped = False  # the run stops: no attempt waits for a turn

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.active.name

    @property
    def batching(self) -> bool:  # type: ignore[override]
        """Until the function proved to return coroutines: then slots run one
        coroutine at a time on the loop, as in async mode (see the scheduler's
        ``_batch_slot``, which turns into a plain slot)."""
        return self.active.batching

    def caller(self, slot: int) -> Call:
        return self.active.caller(slot)

    @property
    def stoppable(self) -> bool:  # type: ignore[override]
        return self.active.stoppable

    @property
    def abandons(self) -> bool:  # type: ignore[override]
        return True  # a thread of the probe may still run a timed-out attempt: wait for it

    @property
    def auto_batch(self) -> bool:  # type: ignore[override]
        return self.active.auto_batch

    def ran_in(self, outcomes: Outcomes) -> str:
        return "threads" if outcomes.cpu >= 0 else self.active.name  # threads measure CPU

    def mode_of(self, worker: str) -> str:
        if worker in self._on_loop:  # (an attempt stopped on the loop: see __init__)
            return "async"
        return "threads" if worker.startswith("thread-") else self.active.name

    def note_for(self, worker: str) -> str:
        return (self.threads if self.mode_of(worker) == "threads" else self.active).timeout_note

    @property
    def timeout_note(self) -> str:  # type: ignore[override]
        return self.active.timeout_note

    async def open(self) -> None:
        self.threads.timed = self.timed
        await self.threads.open()

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        if self._choosing is not None and not self._choosing.done():
            await asyncio.shield(self._choosing)  # the processes are being started
        if isinstance(self.active, OnLoop):
            self._on_loop.add(self.threads.worker(slot))
            return await self.active.run_batch(slot, items)
        if self.active is not self.threads:
            try:
                _worker.dumps(items)  # what processes mode would send
            except Exception:
                return await self.threads.run_batch(slot, items)  # these stay in threads
            return await self.active.run_batch(self._place(slot), items)
        if self._began is None:  # the probe starts: it ends in time, tasks over or not
            self._began = time.time()
            self._timer = asyncio.get_running_loop().call_later(PROBE_SECONDS, self._decide)
        self._on_loop.discard(self.threads.worker(slot))
        outcomes = await self.threads.run_batch(slot, items)
        if outcomes.unawaited:
            return await self._await_handed(slot, outcomes)
        if self._choosing is None and self.active is self.threads:
            ran = len(outcomes.values)  # fewer than items: the rest were taken back
            self._probed.append((items[:ran], outcomes.values))
            self._cpu += max(outcomes.cpu, 0.0)
            self._tasks += ran
            if self._tasks >= PROBE_TASKS:
                self._decide()
        return outcomes

    async def _await_handed(self, slot: int, outcomes: Outcomes) -> Outcomes:
        """A batch whose values include coroutines its thread handed back: each is
        awaited here, in turn, and the rest of the run is async."""
        self._on_loop.add(self.threads.worker(slot))
        if self.active is self.threads:
            self.active = OnLoop(self.fn, limit=self.limit, is_async=False)
            self.reason = "auto chose async: the function returns coroutines"
            if self._timer is not None:
                self._timer.cancel()
            if self.went_async is not None:
                self.went_async()
            self._hand_on()
        assert isinstance(self.active, OnLoop)
        worker, values = self.active.worker(slot), outcomes.values
        try:
            async with self.active.turn(slot):
                return await awaited(_same, values, worker, outcomes.errors, outcomes.start)
        finally:
            close_coroutines(values)  # those a stop left unawaited

    def _decide(self) -> None:
        if self._choosing is None:
            self._choosing = asyncio.get_running_loop().create_task(self._choose())

    async def _choose(self) -> None:
        try:
            await self._pick()
        finally:
            self._probing = False
            self._hand_on()

    async def _pick(self) -> None:
        if self.active is not self.threads:  # it went async
            return
        wall = time.time() - (self._began or time.time())
        cpu = self.threads.cpu_seconds()
        share = (self._cpu if cpu is None else cpu) / wall if wall > 0 else 0.0
        measured = (
            f"the first tasks ({self._tasks} ended in {wall:.2f} s) spent {share:.0%} of "
            "their time on the CPU"
        )
        if share < CPU_BOUND:
            self.reason = f"auto kept threads: {measured} (waiting, which threads overlap)"
            return
        if cpu_count() < 2:
            self.reason = f"auto kept threads: {measured}, but this machine has one CPU"
            return
        try:
            import cloudpickle

            cloudpickle.dumps(self.fn)
        except Exception as exc:
            self.reason = (
                f"auto kept threads: {measured}, but the function cannot be pickled for "
                f"processes ({type(exc).__name__}: {str(exc)[:200]}); define it at module "
                "level, with no reference to locks, open files or sockets, to let auto move "
                "it to processes"
            )
            return
        try:  # items and values must travel to and from processes too
            for items, values in self._probed:
                _worker.dumps((items, values))
        except Exception as exc:
            self.reason = (
                f"auto kept threads: {measured}, but its items or values cannot be pickled "
                f"for processes ({type(exc).__name__})"
            )
            return
        finally:
            self._probed.clear()
        from ._processes import ProcessesMode

        processes = ProcessesMode(self.fn, limit=cpu_count(), is_async=self.is_async)
        processes.timed = self.timed
        await processes.open()
        if self.active is not self.threads:  # it went async while the processes started
            await processes.close()
            return
        self.active = processes
        self.reason = f"auto chose processes: {measured}"

    @property
    def take_back_asks(self) -> bool:  # type: ignore[override]
        return self.active.take_back_asks

    def unstarted(self, items: list[Any]) -> int:
        return self.threads.unstarted(items) or self.active.unstarted(items)

    async def take_back(self, items: list[Any]) -> list[Any]:
        mode = self.threads if self.threads.unstarted(items) else self.active
        return await mode.take_back(items)

    def worker(self, slot: int) -> str:
        return self.active.worker(self._place(slot))

    def _room(self) -> int | None:
        """How many attempts of the policy path may run at once (None: one a slot).

        Auto's slots outnumber the CPUs, so in processes (one worker a CPU) an
        attempt would wait behind another slot's in its worker, its timeout and
        duration counting the wait: one a worker. With a timeout, the probe runs
        one at a time: CPU-bound attempts in threads take turns on the
        interpreter lock, and would run past their timeout for the probe's sake.
        Once the run stops, nothing waits: the attempts waiting find it stopping.
        """
        if self._stopped:
            return None
        if self.active is self.threads:
            return 1 if self.timeout is not None and self._probing else None
        return None if isinstance(self.active, OnLoop) else cpu_count()

    async def prepare(self, slot: int) -> None:
        """Wait for a turn, first come first served (see :meth:`_room`)."""
        if not self._take_turn(slot):
            wait = asyncio.get_running_loop().create_future()
            self._turn_waits.append((slot, wait))
            try:
                await wait  # (done once the turn is ours: see _hand_on)
            except asyncio.CancelledError:
                self.release(slot)  # (handed to it as it was cancelled)
                raise
        if not self._stopped:
            await self.active.prepare(self._place(slot))

    def _take_turn(self, slot: int) -> bool:
        """Give ``slot`` a turn if one is free and no one waits for one before it."""
        return not self._turn_waits and self._give_turn(slot)

    def _give_turn(self, slot: int) -> bool:
        """Give ``slot`` a turn if one is free (or none is needed): may it go on?"""
        if (room := self._room()) is None:
            return True
        if not (free := set(range(room)).difference(self._turns.values())):
            return False
        self._turns[slot] = min(free)
        return True

    def _hand_on(self) -> None:
        """Turns freed (or the room grew): to the attempts waiting, oldest first."""
        waits = self._turn_waits
        while waits:
            slot, wait = waits[0]
            if not wait.done():  # (else cancelled as it waited)
                if not self._give_turn(slot):
                    return
                wait.set_result(None)
            waits.popleft()

    def _place(self, slot: int) -> int:
        """The slot ``slot``'s attempt runs in: its own thread, or its turn's worker."""
        if self.active is self.threads or isinstance(self.active, OnLoop):
            return slot
        return self._turns.get(slot, slot)

    def release(self, slot: int) -> None:
        if self._turns.pop(slot, None) is not None:
            self._hand_on()

    def stop_waiting(self) -> None:
        self._stopped = True
        self._hand_on()

    async def settle(self, slot: int) -> None:
        await self.threads.settle(slot)

    async def close(self, *, abort: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._choosing is not None and not self._choosing.done():
            self._choosing.cancel()
        if self._choosing is not None or self.active is not self.threads:
            pass  # the reason is given
        elif self._tasks:  # over before the probe was
            wall = time.time() - (self._began or time.time())
            share = self._cpu / wall if wall > 0 else 0.0
            tasks = "task" if self._tasks == 1 else "tasks"
            self.reason = (
                f"auto kept threads: the run's {self._tasks} {tasks} (too few to move) spent "
                f"{share:.0%} of their time on the CPU"
            )
        else:
            self.reason = "auto ran no tasks (the input was empty, or a journal had them all)"
        try:
            await self.threads.close(abort=abort)
        finally:
            if self.active is not self.threads:
                await self.active.close(abort=abort)


def _same(value: Any) -> Any:
    return value


class OnLoop(Mode):
    """Auto's ``async``, once the function proved to return coroutines: each call,
    and what it returns awaited, on the scheduler's loop, as in ``async`` mode.
    Slots that were batching ones go on with batches of one item until they can
    turn into plain slots (nothing of theirs in flight)."""

    name = "async"

    def __init__(self, fn: Any, *, limit: int, is_async: bool) -> None:
        super().__init__(fn, limit=limit, is_async=is_async)
        # A slot may have two batches out (grown while the function returned
        # values): one at a time here, so no more than ``limit`` tasks run at once.
        self._slots: dict[int, asyncio.Lock] = {}

    def turn(self, slot: int) -> asyncio.Lock:
        """Held while one of ``slot``'s batches runs here."""
        return self._slots.setdefault(slot, asyncio.Lock())

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        async with self.turn(slot):
            return await awaited(self.fn, items, self.worker(slot))

    def caller(self, slot: int) -> Call:
        fn, awaitable = self.fn, _worker.awaitable

        async def call(item: Any) -> Any:
            value = fn(item)
            return (await value) if awaitable(value) else value

        return call

    def worker(self, slot: int) -> str:
        return f"loop-{slot}"


async def awaited(
    call: Callable[[Any], Any],
    args: list[Any],
    worker: str,
    errors: dict[int, BaseException] | None = None,
    start: float | None = None,
) -> Outcomes:
    """:func:`_worker.arun_batch` as one batch's outcomes, errors kept as raised,
    ``worker`` named: the scheduler may have handed the batch to a thread's."""
    start, ends, values, errors = await _worker.arun_batch(call, args, _same, errors, start)
    return Outcomes(start, ends, values, errors, workers=[worker] * len(values))
