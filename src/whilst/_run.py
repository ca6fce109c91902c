"""What ``imap`` and ``aimap`` return: a lazy iterator of results, and its summary."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ._options import Options
from ._output import Stream, window_for
from ._result import Result, Status
from ._runner import Runner, make_runner
from ._scheduler import Scheduler


@dataclass(frozen=True, slots=True)
class Summary:
    """A finished run in figures.

    Attributes:
        counts: results by status word (``{"ok": 98, "failed": 2}``).
        wall: seconds from the run's start to its end.
        task_time: the durations of the tasks that ran added up: what running
            them one after another would have cost.
        mode: where the tasks ran; ``mode_reason`` says why.
        limit: most tasks that were allowed in flight at once.
        total: how many tasks ended (every item ends in exactly one result).
    """

    counts: dict[str, int]
    wall: float
    task_time: float
    mode: str
    mode_reason: str
    limit: int
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.counts.values()))

    @property
    def speedup(self) -> float:
        """Task time over wall time: how many times faster than one after another."""
        return self.task_time / self.wall if self.wall > 0 else 0.0

    @property
    def skipped(self) -> int:
        """Tasks not run: a journal had them done by an earlier run."""
        return self.counts.get("skipped", 0)

    @property
    def ran(self) -> int:
        """Tasks that ran (or were to run) in this run: all but the skipped."""
        return self.total - self.skipped

    def __str__(self) -> str:
        by_status = ", ".join(f"{n} {s}" for s, n in self.counts.items() if s != "skipped")
        text = f"{self.ran} ran ({by_status or 'none'})"
        if self.skipped:
            text += f", {self.skipped} skipped (done in an earlier run, from the journal)"
        return (
            f"{text}; {self.wall:.2f} s wall, {self.task_time:.2f} s of tasks, "
            f"{self.speedup:.1f}x one after another; mode {self.mode} ({self.mode_reason})"
        )

    @property
    def failed(self) -> int:
        """Tasks that ended without a value."""
        return self.total - self.counts.get("ok", 0) - self.counts.get("skipped", 0)


class _Tally:
    __slots__ = ("counts", "ok", "task_time")

    def __init__(self) -> None:
        self.ok = 0
        self.counts: collections.Counter[Status] = collections.Counter()  # all but ok
        self.task_time = 0.0

    def add(self, results: list[Result]) -> None:
        # Count by identity: hashing an enum member runs Python code (Enum.__hash__).
        ok, task_time, counts = Status.OK, self.task_time, self.counts
        self.ok += len(results)
        for r in results:
            if r.status is not ok:
                counts[r.status] += 1
                self.ok -= 1
                if r.status is Status.SKIPPED:  # ran in an earlier run
                    continue
            task_time += r.end - r.start
        self.task_time = task_time

    def summary(self, scheduler: Scheduler) -> Summary:
        o = scheduler.options
        return Summary(
            counts={
                status.value: n for status, n in {Status.OK: self.ok, **self.counts}.items() if n
            },
            wall=scheduler.ended - scheduler.started,
            task_time=self.task_time,
            mode=o.mode,
            mode_reason=o.mode_reason,
            limit=o.limit,
        )


def streaming(fn: Any, items: Any, options: Options) -> tuple[Scheduler, Stream]:
    """A scheduler whose results stream out, at most ``window_for(limit)`` held at once."""
    stream = Stream(ordered=options.ordered, window=window_for(options.limit))
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
    :meth:`close` or a ``with`` block: running tasks are cancelled and workers
    stopped. Once exhausted, :attr:`summary` tells how the run went.
    """

    def __init__(self, scheduler: Scheduler, stream: Stream) -> None:
        self._scheduler = scheduler
        self._stream = stream
        self._runner: Runner | None = None
        self._tally = _Tally()
        self._closed = False
        self._results = self._iterate()  # a generator: the cheapest way to hand out results
        self.summary: Summary | None = None

    def __iter__(self) -> Iterator[Result]:
        return self._results

    def __next__(self) -> Result:
        return next(self._results)

    def _iterate(self) -> Generator[Result, None, None]:
        while batch := self._take():
            self._tally.add(batch)
            yield from batch

    def _take(self) -> list[Result]:
        if self._closed:
            return []
        runner = self._runner
        if runner is None:
            runner = self._runner = make_runner()
            runner.start(self._scheduler)
        try:
            batch = runner.call(self._stream.take())
        except BaseException:
            self._shutdown()
            raise
        if batch:
            return batch
        main = runner.main
        assert main is not None
        error = None if main.cancelled() else main.exception()
        self._shutdown()
        self.summary = self._tally.summary(self._scheduler)
        runner.raise_if_interrupted()
        raise_run_error(self._scheduler, error)
        return []

    def close(self) -> None:
        """Stop the run: cancel running tasks, stop workers. Safe to call twice."""
        with contextlib.suppress(ValueError):  # "generator already executing": it ends anyway
            self._results.close()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            self._runner.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


class AsyncRun(AsyncIterator[Result]):
    """Results of an :func:`~whilst.aimap` call, on the caller's event loop."""

    def __init__(self, scheduler: Scheduler, stream: Stream) -> None:
        self._scheduler = scheduler
        self._stream = stream
        self._main: Any = None
        self._ready: collections.deque[Result] = collections.deque()
        self._tally = _Tally()
        self.summary: Summary | None = None

    def __aiter__(self) -> AsyncRun:
        return self

    async def __anext__(self) -> Result:
        ready = self._ready
        if not ready:
            await self._fill()
        return ready.popleft()

    async def _fill(self) -> None:
        if self._main is None:
            self._main = asyncio.get_running_loop().create_task(self._scheduler.run())
        try:
            batch = await self._stream.take()
        except BaseException:
            await self.aclose()
            raise
        if batch:
            self._tally.add(batch)
            self._ready.extend(batch)
            return
        main = self._main
        await asyncio.wait([main])
        self.summary = self._tally.summary(self._scheduler)
        if main.cancelled():
            raise asyncio.CancelledError
        raise_run_error(self._scheduler, main.exception())
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the run: cancel running tasks and stop workers."""
        main = self._main
        if main is not None and not main.done():
            main.cancel()
            await asyncio.wait([main])

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
