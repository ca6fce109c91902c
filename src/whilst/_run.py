"""What ``imap`` and ``aimap`` return: a lazy iterator of results, and its summary."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator, Iterator
from types import TracebackType
from typing import Any, NoReturn

from ._options import Options
from ._output import Chunk, Stream, window_for
from ._result import Result
from ._runner import LoopStop, Runner, make_runner
from ._scheduler import Scheduler
from ._summary import Stats, Summary


def streaming(fn: Any, items: Any, options: Options) -> tuple[Scheduler, Stream]:
    """A scheduler whose results stream out, at most ``window_for(limit)`` held at
    once; paced in sync mode, whose tasks take turns with the caller."""
    paced = options.mode == "sync"
    stream = Stream(ordered=options.ordered, window=window_for(options.limit), paced=paced)
    return Scheduler(fn, items, options, stream), stream


def raise_run_error(scheduler: Scheduler, error: BaseException | None) -> None:
    """After a run: surface what went wrong with the run itself (never a task's error)."""
    if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]  # the TaskGroup's wrapping of an internal error
    if error is not None:
        raise error
    if scheduler.input_error is not None:
        exc = scheduler.input_error
        exc.add_note("whilst: the input raised this while being read; the items before it ran")
        raise exc


class Run(Iterator[Result]):
    """Results of an :func:`~whilst.imap` call, one at a time, as they are ready.

    Tasks start on the first ``next()``; only ``limit`` (plus a small buffer) are
    ever held, so it is safe over endless or huge inputs. Stop early with
    :meth:`close` or a ``with`` block (or by leaving ``for r in whilst.imap(...)``,
    or dropping the Run): running tasks are cancelled and workers stopped. Once
    exhausted, :attr:`summary` tells how the run went.
    """

    def __init__(self, scheduler: Scheduler, stream: Stream) -> None:
        self._feed = _Feed(scheduler, stream)
        # A generator: it holds the feed, never this Run, so nothing forms a
        # cycle: a Run dropped, or a for loop over ``whilst.imap(...)`` left
        # early, frees it at once, and its end stops the run (a cycle would wait
        # for the garbage collector). It also ends the run on an exception
        # thrown into it (a Ctrl-C as a result is made), and refuses a second
        # thread reading at once ("generator already executing"), which a
        # chain of iterators in C, 1% quicker, did not do (measured).
        self._results = _results(self._feed)

    @property
    def summary(self) -> Summary | None:
        """How the run went, once its results are all out or it was closed (None
        until then)."""
        return self._feed.summary

    def __iter__(self) -> Iterator[Result]:
        return self._results

    def __next__(self) -> Result:
        return next(self._results)

    def close(self) -> None:
        """Stop the run: cancel running tasks, stop workers; nothing more is handed
        out. Safe to call twice, and from another thread."""
        with contextlib.suppress(ValueError):  # "generator already executing": it ends anyway
            self._results.close()
        self._feed.shutdown()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _results(feed: _Feed) -> Generator[Result, None, None]:
    try:
        while (results := feed.results()) is not None:
            yield from results  # each Result made as it is handed out
    finally:
        feed.shutdown()  # left early or dropped: stop the run (done already if it ended)


class _Feed:
    """A Run's source of results: the scheduler, its stream and the runner whose
    loop runs it, started by the first take."""

    def __init__(self, scheduler: Scheduler, stream: Stream) -> None:
        self.scheduler = scheduler
        self.stream = stream
        self.runner: Runner | None = None
        self.stats = Stats()
        self.chunk: Chunk | None = None  # whose results are being handed out
        self.closed = False
        self.summary: Summary | None = None

    def results(self) -> Iterator[Result] | None:
        """The next chunk's results, each made as it is handed out; None at the end."""
        chunk = self.take()
        if chunk is None:
            return None
        self.stats.add_chunk(chunk)
        results, self.chunk = chunk.results(), chunk
        if self.closed:  # by close() from another thread meanwhile (see shutdown)
            chunk.drop()
        return results

    def take(self) -> Chunk | None:
        if self.closed:
            return None
        runner = self.runner
        if runner is None:
            runner = self.runner = make_runner()
            runner.start(self.scheduler)
        try:
            chunk = runner.call(self.stream.take())
        except BaseException:
            self.shutdown()
            raise
        if self.closed:  # by close() from another thread, while this one waited
            runner.close()
            self._summarize()
            return None
        if chunk:
            return chunk
        main = runner.main
        assert main is not None
        error = None if main.cancelled() else main.exception()
        self.shutdown()
        self.summary = self.scheduler.summary(self.stats)
        runner.raise_if_interrupted()
        raise_run_error(self.scheduler, error)
        return None

    def shutdown(self) -> None:
        # Closed first, then the chunk dropped: a reader thread taking a chunk
        # meanwhile either sees closed or has its chunk here to drop.
        was_closed, self.closed = self.closed, True
        if self.chunk is not None:  # hand out no more of it
            self.chunk.drop()
        if was_closed:
            return
        if self.runner is not None:
            self.runner.close()
            self._summarize()

    def _summarize(self) -> None:
        """Left early: the summary of what it took, once the run has ended (closed from
        another thread, it ends when the reading thread closes it)."""
        if self.summary is None and self.scheduler.ended:
            self.summary = self.scheduler.summary(self.stats)


class AsyncRun(AsyncIterator[Result]):
    """Results of an :func:`~whilst.aimap` call, on the caller's event loop."""

    def __init__(self, scheduler: Scheduler, stream: Stream) -> None:
        self._scheduler = scheduler
        self._stream = stream
        self._stop: LoopStop | None = None
        self._filling = False  # a task waits for results
        self._ready: Iterator[Result] = iter(())  # of the chunk taken last
        # Taken after a second signal: the tasks it cut short, handed out before it
        # is raised (as imap does), not dropped as results the caller was too slow for.
        self._cut = False
        self._stats = Stats()
        self._closed = False
        self.summary: Summary | None = None

    def __aiter__(self) -> AsyncRun:
        return self

    def __iter__(self) -> NoReturn:  # (a plain for loop: say which form it wants)
        raise TypeError(
            "whilst.aimap(...) hands out results to `async for` inside a coroutine; in "
            "plain code, use whilst.imap(...) with a plain for loop"
        )

    async def __anext__(self) -> Result:
        if self._stop is not None and self._stop.now and not self._closed and not self._cut:
            await self.aclose()  # a second signal while the caller's code ran
            self._stop.raise_if_stopped()
        while (result := next(self._ready, None)) is None:
            if self._closed:
                raise StopAsyncIteration
            if self._filling:  # (its wait would overwrite the other's: one waited for ever)
                raise RuntimeError(
                    "this whilst.aimap(...) is being read already, by another task: read a "
                    "run from one task (as an async generator must be)"
                )
            self._filling = True
            try:
                await self._fill()
            finally:
                self._filling = False
        return result

    def _start(self) -> LoopStop:
        if self._stop is None:
            main = asyncio.get_running_loop().create_task(self._scheduler.run())
            self._stop = LoopStop(self._scheduler, main)
        return self._stop

    async def _fill(self) -> None:
        stop = self._start()
        try:
            with stop:  # whilst's signal handlers: while it waits (or all through a with block)
                chunk = await stop.until(self._stream.take)
        except BaseException:
            await self.aclose()
            raise
        if self._closed:  # by aclose() from another task, while this one waited: no more
            raise StopAsyncIteration
        self._cut = stop.now
        if chunk:
            self._stats.add_chunk(chunk)
            self._ready = chunk.results()
            return
        await asyncio.wait([stop.main])
        if self._closed:  # (as above)
            raise StopAsyncIteration
        self._closed = True  # the end: an error below is raised once, as imap's
        self.summary = self._scheduler.summary(self._stats)
        stop.raise_if_stopped()
        raise_run_error(self._scheduler, stop.main.exception())
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the run: cancel running tasks and stop workers; nothing more is
        handed out. Safe to call twice."""
        self._closed, self._ready = True, iter(())
        main = None if self._stop is None else self._stop.main
        if main is not None and not main.done():
            main.cancel()
            await asyncio.wait([main])
        if main is not None and self.summary is None:  # left early: what it took
            self.summary = self._scheduler.summary(self._stats)

    def __del__(self) -> None:
        # Dropped unfinished (``break`` out of ``async for r in whilst.aimap(...)``):
        # stop the run, as the sync form does; it ends on its loop.
        stop = getattr(self, "_stop", None)
        if stop is not None and not stop.main.done():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                stop.main.get_loop().call_soon_threadsafe(stop.main.cancel)

    async def __aenter__(self) -> AsyncRun:
        self._start().__enter__()  # a signal stops the run even while your code runs
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.aclose()
        finally:
            if self._stop is not None:
                self._stop.__exit__()
