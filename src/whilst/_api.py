"""The public forms: ``map``, ``imap``, ``amap``, ``aimap``."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any

from ._errors import TasksFailed, WhilstError
from ._options import resolve
from ._output import Collect
from ._result import Result
from ._run import AsyncRun, Run, raise_run_error, streaming
from ._runner import make_runner
from ._scheduler import Scheduler

Items = Iterable[Any] | AsyncIterable[Any]


def map(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
) -> list[Any]:
    """Call ``fn`` on every item and return the values in input order.

    Args:
        fn: a plain function or a coroutine function of one item.
        items: any iterable or async iterable; it is read lazily.
        mode: ``"auto"`` (coroutine functions on the event loop, plain ones in
            threads), ``"sync"``, ``"async"``, ``"threads"`` or ``"processes"``.
        limit: most tasks in flight at once. Defaults: async 100, threads
            ``min(32, cpus + 4)``, processes the CPU count, sync 1.

    Raises:
        TasksFailed: when any task failed; ``.results`` holds every result,
            successes included, so no finished work is lost.
        UsageError: a bad option or argument, before any task starts.

    Works inside a running event loop too (a notebook cell): the run then uses
    a loop in a helper thread.
    """
    options = resolve(fn, mode=mode, limit=limit)
    collect = Collect()
    scheduler = Scheduler(fn, items, options, collect)
    runner = make_runner()
    try:
        main = runner.start(scheduler)
        runner.call(asyncio.wait([main]))
        error = None if main.cancelled() else main.exception()
        if runner.interrupted or main.cancelled():
            raise KeyboardInterrupt
    finally:
        runner.close()
    raise_run_error(scheduler, error)
    return _values(collect)


async def amap(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
) -> list[Any]:
    """:func:`map` for use inside a running event loop: ``await whilst.amap(...)``.

    The scheduler runs on the caller's loop, so ``async`` mode tasks share it.
    Cancelling the caller cancels the run.
    """
    options = resolve(fn, mode=mode, limit=limit)
    collect = Collect()
    scheduler = Scheduler(fn, items, options, collect)
    try:
        await scheduler.run()
    except BaseExceptionGroup as group:
        raise_run_error(scheduler, group)
    raise_run_error(scheduler, None)
    return _values(collect)


def imap(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
    ordered: bool = True,
) -> Run:
    """Call ``fn`` on every item, yielding each :class:`Result` as it is ready.

    Lazy and bounded: items are read as slots free up and at most about
    ``2 * limit`` results are held, so a generator of ten million items is fine.
    ``ordered=True`` yields in input order; ``ordered=False`` as tasks finish.
    A failed task is a result with ``ok`` false, never an exception here.
    Options are as for :func:`map`; they are checked now, tasks start on the
    first ``next()``.
    """
    options = resolve(fn, mode=mode, limit=limit, ordered=ordered)
    return Run(*streaming(fn, items, options))


def aimap(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
    ordered: bool = True,
) -> AsyncRun:
    """:func:`imap` for use inside a running event loop: ``async for r in whilst.aimap(...)``."""
    options = resolve(fn, mode=mode, limit=limit, ordered=ordered)
    return AsyncRun(*streaming(fn, items, options))


def _values(collect: Collect) -> list[Any]:
    if not collect.failed:
        return collect.values()
    results = collect.in_order()
    failed = [r for r in results if not r.ok]
    raise TasksFailed(_failure_message(failed, len(results)), _errors(failed), results)


def _failure_message(failed: Sequence[Result], total: int) -> str:
    first = failed[0]
    what = f"{type(first.error).__name__}: {first.error}" if first.error else first.status.value
    more = "" if len(failed) == 1 else f"; {len(failed) - 1} more in .results"
    return (
        f"{len(failed)} of {total} tasks failed (first: item {first.index} {_short(first.item)} "
        f"{first.status.value}: {what}{more})"
    )


def _errors(failed: Sequence[Result]) -> list[Exception]:
    errors: list[Exception] = []
    for r in failed:
        exc = r.error
        if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt raised by a task
            wrapped = WhilstError(f"task {r.index} raised {exc!r}")
            wrapped.__cause__ = exc
            exc = wrapped
        errors.append(exc)
    return errors


def _short(item: Any, width: int = 60) -> str:
    text = builtins.repr(item)
    return text if len(text) <= width else text[: width - 3] + "..."
