"""Drivers: how the sync API forms run the scheduler's event loop.

- :class:`InlineRunner` (the usual case): a fresh loop (uvloop when installed)
  in the caller's own thread, run only while the caller waits for results. So
  ``sync`` mode really runs in the caller's thread, and an ``imap`` the caller
  stops reading simply pauses.
- :class:`ThreadRunner`: when the caller's thread already runs an event loop
  (a notebook cell, an ``async def`` that calls ``whilst.map``), a loop cannot
  be nested in it, so the run gets a loop in a helper thread instead.

Both catch Ctrl-C the way :class:`asyncio.Runner` does: the first SIGINT
cancels the run (the scheduler then stops its workers) and the caller gets
``KeyboardInterrupt``; a second one interrupts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._scheduler import Scheduler

T = TypeVar("T")

#: How long a cancelled run may take to stop its workers before the caller gets
#: control back anyway (the Ctrl-C promise is "within 2 seconds").
STOP_WAIT = 1.5


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait([task], timeout=STOP_WAIT)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def in_running_loop() -> bool:
    return asyncio.events._get_running_loop() is not None


class Runner:
    """Runs the coroutines of one run on one loop; see the module docstring."""

    def __init__(self) -> None:
        self.main: asyncio.Task[Any] | None = None
        self.scheduler: Scheduler | None = None
        self.interrupted = False

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

    def _interrupt(self) -> None:
        self.interrupted = True
        if self.scheduler is not None:
            self.scheduler.interrupt()
        if self.main is not None and not self.main.done():
            self.main.cancel()

    def _stop_main(self) -> None:
        """Cancel the run and give it a moment to stop its workers."""
        main = self.main
        if main is None:
            return
        with contextlib.suppress(BaseException):
            self._settle(_stop(main))
        if main.done() and not main.cancelled():
            main.exception()  # retrieved, so asyncio does not log it as lost


class InlineRunner(Runner):
    def __init__(self) -> None:
        super().__init__()
        self.loop = new_loop()
        self._sigint = 0

    def _create(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.loop.create_task(coro)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        handle = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if handle:
            signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return self._run(coro)
        except BaseException:
            # The loop may still hold the run: cancel it so no worker is left behind.
            if not self.loop.is_closed() and self.main is not None and not self.main.done():
                self.interrupted = True
                if handle:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    handle = False
                self._stop_main()
            raise
        finally:
            if handle:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    def _settle(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._run(coro)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        # A run started outside any loop may be read (or dropped) later inside a
        # running one, which is blocked meanwhile: step aside from it while ours runs.
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            return self.loop.run_until_complete(coro)
        finally:
            asyncio.events._set_running_loop(outer)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._sigint += 1
        if self._sigint == 1:
            self._interrupt()
            self.loop.call_soon_threadsafe(lambda: None)  # wake the selector
            scheduler = self.scheduler
            if scheduler is None or not scheduler.mode.busy_in_caller_thread:
                return  # else sync mode's task is running here: interrupt it
        raise KeyboardInterrupt()

    def close(self) -> None:
        loop = self.loop
        if loop.is_closed():
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
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="whilst-loop", daemon=True
        )
        self._thread.start()

    def _create(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        async def create() -> asyncio.Task[Any]:
            return asyncio.get_running_loop().create_task(coro)

        return asyncio.run_coroutine_threadsafe(create(), self.loop).result()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        # The caller's task, blocked in here. asyncio.run's Ctrl-C handler cancels
        # it rather than raising, which a blocking wait would not notice: look.
        caller = asyncio.current_task() if in_running_loop() else None
        try:
            while caller is not None and not fut.done():
                with contextlib.suppress(TimeoutError):
                    fut.result(timeout=0.1)
                if caller.cancelling() and not fut.done():
                    raise asyncio.CancelledError
            return fut.result()
        except (KeyboardInterrupt, asyncio.CancelledError):
            fut.cancel()
            self.loop.call_soon_threadsafe(self._interrupt)
            self._stop_main()
            raise

    def _settle(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        loop = self.loop
        if loop.is_closed():
            return
        try:
            self._stop_main()
            self._settle(loop.shutdown_asyncgens())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(STOP_WAIT)
            if not self._thread.is_alive():
                loop.close()


def make_runner() -> Runner:
    return ThreadRunner() if in_running_loop() else InlineRunner()
