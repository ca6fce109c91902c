"""Drivers: how the sync API forms run the scheduler's event loop.

- :class:`InlineRunner` (the usual case): a fresh loop (uvloop when installed)
  in the caller's own thread, run only while the caller waits for results. So
  ``sync`` mode really runs in the caller's thread, and an ``imap`` the caller
  stops reading simply pauses.
- :class:`ThreadRunner`: when the caller's thread already runs an event loop
  (a notebook cell, an ``async def`` that calls ``whilst.map``), a loop cannot
  be nested in it, so the run gets a loop in a helper thread instead.

Stopping: the first Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed)
stops the run starting tasks and gives the running ones ``grace`` seconds to
finish, then cancels them (the scheduler stops its workers); a second signal
cancels at once. The caller then gets ``KeyboardInterrupt`` (SIGINT) or
``SystemExit(128 + the signal's number)`` (143, 129: the exit status of a
process ended by it), after every ``finally`` has run. Handlers are
installed only in the main thread, only over the default ones, only while the
run's loop runs.
"""

from __future__ import annotations

# signal's C half: a sync run sets and restores its handlers at every wait for
# results, and signal.signal turns each handler into an enum and back (30 µs a wait).
import _signal  # type: ignore[import-not-found]
import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from ._scheduler import Scheduler

T = TypeVar("T")

#: How long a cancelled run may take to stop its workers before the caller gets
#: control back anyway (the Ctrl-C promise is "within 2 seconds").
STOP_WAIT = 1.5

#: Signals that end the process when nothing handles them: a run stopped by one
#: ends in SystemExit(128 + its number), as the process would have. SIGHUP comes
#: when the terminal closes: left to its default, whilst would die at once and
#: the commands of ``whilst run``, each in a process group of its own, run on.
TERMINATING = frozenset(
    s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None
)
#: The handlers whilst replaces while it runs (never one a program installed).
_DEFAULT_HANDLERS = {
    signal.SIGINT: signal.default_int_handler,
    **dict.fromkeys(TERMINATING, signal.SIG_DFL),
}


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait([task], timeout=STOP_WAIT)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except (ImportError, RuntimeError):  # (RuntimeError: first imported at exit, by atexit)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def in_running_loop() -> bool:
    return asyncio.events._get_running_loop() is not None


class Runner:
    """Runs the coroutines of one run on one loop; see the module docstring."""

    loop: asyncio.AbstractEventLoop

    def __init__(self) -> None:
        self.main: asyncio.Task[Any] | None = None
        self.scheduler: Scheduler | None = None
        self.interrupted = False
        self.signum = 0  # the first signal that stopped the run
        self.caller_cancelled = False  # the caller's task was cancelled (asyncio.run's Ctrl-C)
        self._grace: asyncio.TimerHandle | threading.Timer | None = None
        self._pid = os.getpid()  # (a child forked meanwhile has a copy: see close)
        self._waiting: asyncio.Task[Any] | None = None  # what call() runs the loop for
        self.gave_up = False  # on a run that would not end (see _give_up)

    def start(self, scheduler: Scheduler) -> asyncio.Task[Any]:
        """Start the run (it progresses whenever :meth:`call` runs the loop)."""
        self.scheduler = scheduler
        self.main = self._create(scheduler.run())
        return self.main

    def _create(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        raise NotImplementedError

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        raise NotImplementedError

    def _settle(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end, even while the caller is being interrupted."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def raise_if_interrupted(self) -> None:
        """After the run: tell the caller it was stopped by a signal."""
        if self.caller_cancelled:
            raise asyncio.CancelledError
        if self.signum in TERMINATING:
            raise SystemExit(128 + self.signum)
        if self.interrupted or (self.main is not None and self.main.cancelled()):
            raise KeyboardInterrupt

    def _interrupt(self, signum: int = signal.SIGINT) -> bool:
        """A stop signal; True when running attempts must be stopped now (a second
        signal, or no grace), False while they have their grace."""
        first = not self.interrupted
        self.interrupted = True
        if first:
            self.signum = signum
            if self.scheduler is not None:
                self.scheduler.interrupt()
                grace = self.scheduler.policy.grace
                if grace > 0:
                    self.loop.call_soon_threadsafe(self._arm_grace, grace)
                    return False
        self._cancel_main()
        return True

    def _arm_grace(self, grace: float) -> None:
        if self._grace is None:
            self._grace = self.loop.call_later(grace, self._cancel_main)

    def _cancel_main(self) -> None:
        if self.main is not None and not self.main.done():
            self.main.cancel()
            with contextlib.suppress(RuntimeError):  # (a closed loop)
                self.loop.call_soon_threadsafe(self._arm_give_up)

    def _arm_give_up(self) -> None:
        self.loop.call_later(STOP_WAIT, self._give_up)

    def _give_up(self) -> None:
        """The run did not end within ``STOP_WAIT`` of its cancellation (a task
        that swallows its cancellation, and loops on): the caller stops waiting
        all the same, rather than for ever, deaf to every signal."""
        if self.main is not None and not self.main.done() and self._waiting is not None:
            self.gave_up = True
            self._waiting.cancel()

    def _stop_main(self) -> None:
        """Cancel the run and give it a moment to stop its workers."""
        main = self.main
        if main is None or self.gave_up:
            return
        with contextlib.suppress(BaseException):
            self._settle(_stop(main))
        if main.done() and not main.cancelled():
            main.exception()  # retrieved, so asyncio does not log it as lost


class InlineRunner(Runner):
    def __init__(self) -> None:
        super().__init__()
        self.loop = new_loop()
        self._armed = False  # our signal handlers are in place
        self._armed_lock = threading.Lock()
        self._away_since: float | None = None  # when call() last returned to the caller

    def _create(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.loop.create_task(coro)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._away_since is not None and self.scheduler is not None:
            self._as_running(self.scheduler.resumed, time.monotonic() - self._away_since)
        handled = self._handle_signals()
        try:
            return self._run(coro)
        except BaseException as exc:
            # The loop may still hold the run: cancel it so no worker is left behind.
            if not self.loop.is_closed() and self.main is not None and not self.main.done():
                self.interrupted = True
                self._restore(handled)
                handled = {}
                self._stop_main()
            # A sync task stopped by SIGTERM, or a wait given up on after a signal
            # (see _give_up): the caller hears of the signal, not of what it broke.
            if self.signum and (isinstance(exc, KeyboardInterrupt) or self.gave_up):
                if self.signum in TERMINATING:
                    raise SystemExit(128 + self.signum) from None
                if not isinstance(exc, KeyboardInterrupt):
                    raise KeyboardInterrupt from None
            raise
        finally:
            self._restore(handled)
            self._away_since = time.monotonic()  # the loop stands still until the next call

    def _handle_signals(self) -> dict[int, Any]:
        """Install ours over the default SIGINT, SIGTERM and SIGHUP handlers; the old ones."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        handled: dict[int, Any] = {}
        for signum, default in _DEFAULT_HANDLERS.items():
            current = _signal.getsignal(signum)
            if current is default or (type(current) is int and current == default):
                handled[signum] = current  # as _signal has it: SIG_DFL is a plain int
                _signal.signal(signum, self._on_signal)
        self._armed = bool(handled)
        return handled

    def _restore(self, handled: dict[int, Any]) -> None:
        if isinstance(self._grace, threading.Timer):
            self._grace.cancel()
        with self._armed_lock:
            self._armed = False
        for signum, old in handled.items():
            _signal.signal(signum, old)

    def _settle(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._run(coro)

    def _as_running(self, fn: Callable[[float], None], arg: float) -> None:
        """``fn(arg)`` as if from inside the loop (asyncio's timeouts ask for the
        running loop), before the loop runs again."""
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self.loop)
        try:
            fn(arg)
        finally:
            asyncio.events._set_running_loop(outer)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        # A run started outside any loop may be read (or dropped) later inside a
        # running one, which is blocked meanwhile: step aside from it while ours runs.
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            waiting: asyncio.Task[T] = self.loop.create_task(coro)
            self._waiting = waiting  # (see _give_up)
            return self.loop.run_until_complete(waiting)
        finally:
            self._waiting = None
            asyncio.events._set_running_loop(outer)

    def _on_signal(self, signum: int, frame: Any) -> None:
        scheduler = self.scheduler
        busy = scheduler is not None and scheduler.mode.busy_in_caller_thread
        now = self._interrupt(signum)
        self.loop.call_soon_threadsafe(lambda: None)  # wake the selector
        if busy and now:  # sync mode's task is running here: interrupt it
            raise KeyboardInterrupt()
        if scheduler is not None:
            scheduler.stop_waiting_for_input(frame)
        if busy and scheduler is not None and self._grace is None:
            # The loop cannot time the grace while the task holds this thread:
            # a timer thread sends the second signal when the grace is over.
            timer = self._grace = threading.Timer(
                scheduler.policy.grace, self._grace_over, (signum,)
            )
            timer.daemon = True
            timer.start()

    def _grace_over(self, signum: int) -> None:
        with self._armed_lock:  # never once our handlers are gone (see _restore)
            if self._armed:
                signal.pthread_kill(threading.main_thread().ident, signum)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the run and close the loop. From another thread while the caller
        waits for results, only ask the run to stop: the caller's wait then ends,
        and the caller closes it (see ``_Feed.take``). In a forked child, leave
        all be: the loop and the workers it drives are the parent's."""
        loop = self.loop
        if loop.is_closed() or os.getpid() != self._pid:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(self._cancel_main)
            return
        if self.gave_up:  # a task that would not stop is left to its loop, unclosed:
            _ABANDONED.append(loop)  # closed, it would say it was destroyed pending
            return
        try:
            self._stop_main()
            self._run(loop.shutdown_asyncgens())
            self._run(loop.shutdown_default_executor())
        finally:
            loop.close()


class ThreadRunner(Runner):
    def __init__(self) -> None:
        super().__init__()
        self.loop = new_loop()
        self._close_when_stopped = False
        self._thread = threading.Thread(target=self._serve, name="whilst-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.loop.run_forever()
        if self._close_when_stopped:
            self.loop.close()

    def _create(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        async def create() -> asyncio.Task[Any]:
            return asyncio.get_running_loop().create_task(coro)

        return asyncio.run_coroutine_threadsafe(create(), self.loop).result()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        # The caller's task, blocked in here. asyncio.run's Ctrl-C handler cancels
        # it rather than raising, which a blocking wait would not notice: look.
        caller = asyncio.current_task() if in_running_loop() else None
        # SIGTERM and SIGHUP would kill the process at once (asyncio.run leaves
        # them alone, and the caller's loop, blocked here, could not run a handler
        # of its own): handled here, as the first Ctrl-C is.
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in TERMINATING:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    old[signum] = signal.signal(signum, self._on_sigterm)
        try:
            while caller is not None and not fut.done():
                with contextlib.suppress(TimeoutError):
                    fut.result(timeout=0.1)
                if caller.cancelling() and not self.caller_cancelled and not fut.done():
                    # asyncio.run's first Ctrl-C: stop starting, let running tasks
                    # have their grace; the run ends by itself, or its grace does,
                    # and the caller hears of it then (raise_if_interrupted).
                    self.loop.call_soon_threadsafe(self._interrupt)
                    self.caller_cancelled = True
            return fut.result()
        except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C: stop now
            fut.cancel()
            self.loop.call_soon_threadsafe(self._interrupt)
            self._stop_main()
            raise
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.loop.call_soon_threadsafe(self._interrupt, signum)

    def _settle(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        loop = self.loop
        if loop.is_closed() or os.getpid() != self._pid:  # (see InlineRunner.close)
            return
        if threading.current_thread() is self._thread:
            # Dropped on its own loop (the garbage collector ran there): nothing
            # can be waited for here. Cancel the run; the loop stops and closes
            # once it has ended.
            self._close_when_stopped = True
            main = self.main
            if main is not None and not main.done():
                main.cancel()
                main.add_done_callback(lambda _: loop.stop())
            else:
                loop.stop()
            return
        try:
            self._stop_main()
            self._settle(loop.shutdown_asyncgens())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(STOP_WAIT)
            if not self._thread.is_alive():
                loop.close()


class LoopStop:
    """How ``amap`` and ``aimap`` stop on the caller's own loop, as the sync forms
    do: the first SIGINT or SIGTERM starts nothing new and gives running attempts
    their grace; a second one, or the grace's end, cancels the run.

    While a run waits for results in the main thread, whilst handles both
    signals there, over the default handlers and over the one ``asyncio.run``
    puts on SIGINT (which would cancel the main task at once), and puts them
    back when no run waits any more; several runs at once all hear a signal.
    Cancelling the task that awaits a run (a timeout, a TaskGroup) is no signal:
    the run is cancelled at once.
    """

    _active: ClassVar[list[LoopStop]] = []  # runs waiting now, in the main thread
    _saved: ClassVar[dict[int, Any]] = {}  # the handlers ours stand in for
    _loop: ClassVar[asyncio.AbstractEventLoop | None] = None

    def __init__(self, scheduler: Scheduler, main: asyncio.Task[Any]) -> None:
        self.scheduler, self.main = scheduler, main
        self.signum = 0  # the first signal that stopped the run
        self.now = False  # a second signal (or no grace): stop handing out results
        self._grace: asyncio.TimerHandle | None = None
        self._depth = 0

    def __enter__(self) -> LoopStop:
        self._depth += 1  # (aimap in a with block: entered for the block and each wait)
        active = LoopStop._active
        if threading.current_thread() is not threading.main_thread() or self in active:
            return self
        if not active:
            loop = LoopStop._loop = self.main.get_loop()
            for signum, default in _DEFAULT_HANDLERS.items():
                current = signal.getsignal(signum)
                if current is default or _asyncio_sigint(current):
                    try:
                        loop.add_signal_handler(signum, LoopStop._on_signal, signum)
                    except NotImplementedError:  # a loop without signal support
                        break
                    LoopStop._saved[signum] = current
        active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        active = LoopStop._active
        if self._depth or self not in active:
            return
        active.remove(self)
        if not active and LoopStop._loop is not None:
            for signum, old in LoopStop._saved.items():
                LoopStop._loop.remove_signal_handler(signum)
                signal.signal(signum, old)
            LoopStop._saved.clear()
            LoopStop._loop = None

    @staticmethod
    def _on_signal(signum: int) -> None:
        running = [stop for stop in LoopStop._active if not stop.main.done()]
        if not running:  # (inside ``async with whilst.aimap(...)``, its run over)
            LoopStop._pass_on(signum)
            return
        for stop in running:
            stop.signum = stop.signum or signum
            stop.stop()

    @staticmethod
    def _pass_on(signum: int) -> None:
        """A signal no run of whilst's is there for: as if whilst had no handler
        (it was lost: Ctrl-C did nothing once the results were all read)."""
        old = LoopStop._saved.get(signum)
        if callable(old):  # Python's (KeyboardInterrupt) or asyncio.run's (cancel main)
            old(signum, None)
        else:  # the default: end the process, as the signal would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def stop(self) -> None:
        scheduler = self.scheduler
        if scheduler.interrupted or scheduler.policy.grace <= 0:
            self.now = True  # the caller hears of it at its next read
            scheduler.interrupt()  # (with no grace: its results say the run was interrupted)
            self.main.cancel()
            return
        scheduler.interrupt()
        self._grace = self.main.get_loop().call_later(scheduler.policy.grace, self.main.cancel)

    async def until(self, step: Callable[[], Awaitable[T]]) -> T:
        """Await ``step()``; if the caller's task is cancelled meanwhile, cancel the
        run, wait for its end, and let the cancellation go on to the caller."""
        try:
            return await step()
        except asyncio.CancelledError:
            self.main.cancel()
            await asyncio.wait([self.main])
            raise

    def raise_if_stopped(self) -> None:
        """After the run: tell the caller it was stopped, as :class:`Runner` does."""
        if self._grace is not None:
            self._grace.cancel()
        if self.signum in TERMINATING:
            raise SystemExit(128 + self.signum)
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.main.cancelled():
            raise asyncio.CancelledError


#: Loops of runs given up on (see Runner._give_up), kept as they are until exit.
_ABANDONED: list[asyncio.AbstractEventLoop] = []


def _asyncio_sigint(handler: Any) -> bool:
    """Whether ``handler`` is the one ``asyncio.run`` installs on SIGINT."""
    method = getattr(handler, "func", None)  # functools.partial(runner._on_sigint, ...)
    return getattr(method, "__qualname__", "") == "Runner._on_sigint" and (
        getattr(method, "__module__", "") == "asyncio.runners"
    )


def make_runner() -> Runner:
    return ThreadRunner() if in_running_loop() else InlineRunner()
