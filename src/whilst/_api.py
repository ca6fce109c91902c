"""The public forms: ``map``, ``imap``, ``amap``, ``aimap``."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import Any, Unpack

from ._errors import TaskCancelled, TasksFailed, UsageTypeError, WhilstError, describe, safe_repr
from ._options import PolicyOptions, resolve
from ._output import Collect
from ._result import Result, Status
from ._run import AsyncRun, Run, raise_run_error, streaming
from ._runner import LoopStop, in_running_loop, make_runner
from ._scheduler import Scheduler
from ._summary import Stats

Items = Iterable[Any] | AsyncIterable[Any]


def map(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
    summary: bool = False,
    **policy: Unpack[PolicyOptions],
) -> list[Any]:
    """Call ``fn`` on every item and return the values in input order.

    Args:
        fn: a plain function or a coroutine function of one item.
        items: any iterable or async iterable; it is read lazily.
        mode: ``"auto"`` (coroutine functions on the event loop; plain ones in
            threads, then in processes if CPU-bound, or on the loop if they
            return coroutines), ``"sync"``, ``"async"``, ``"threads"``,
            ``"processes"``, ``"dask"`` or ``"ray"`` (a cluster's workers).
        limit: most tasks in flight at once. Defaults: async 100, threads
            ``min(32, cpus + 4)``, processes the CPU count (100 for a coroutine
            function: its workers, one per CPU, each run many), sync 1.

    Policy (keyword-only, the same in every form and mode):
        retries: extra attempts for a task that failed (``retries=3``: at
            most 4 attempts; GNU parallel's ``--retries 3`` means 3 in all).
        backoff, max_backoff: the wait before retry ``n`` is drawn uniformly
            below ``backoff * 2**(n-1)`` seconds, at most ``max_backoff``
            (exponential backoff with full jitter). Defaults 0.5 and 30 (or
            backoff, when that is longer); max_backoff below backoff is an error.
        retry_on: which errors to retry: an exception type, a tuple of them or
            a function of the error. Default: any Exception. A task may raise
            :class:`whilst.Retry` to be retried after a given delay.
        timeout: seconds per attempt. Async attempts are cancelled; in
            processes the worker is killed and replaced; a thread cannot be
            killed, so a timed-out thread is abandoned (its slot stays taken
            until it returns) and sync mode can only mark an attempt that
            overran. Use processes for code that must be stopped.
        deadline: seconds for the whole run; then nothing new starts, running
            attempts are stopped as for ``timeout`` and every unfinished item
            ends ``cancelled``.
        rate, burst: most starts per second (``5``, ``"300/min"``), evenly
            spaced; ``burst`` lets that many start at once (default 1).
        key, per_key: at most ``per_key`` tasks in flight whose items share
            ``key(item)`` (say, a URL's host); others pass meanwhile.
        halt: ``"never"`` (default), ``"soon,fail=N"`` (start nothing new
            after N failures), ``"now,fail=N"`` (cancel running tasks too),
            ``fail=P%`` for a share of the tasks, ``"now,success=1"`` (the
            first success wins). Unstarted items end ``cancelled``.
        grace: seconds a first Ctrl-C (or SIGTERM) lets running tasks finish
            before they are cancelled; a second one cancels at once. Default 5.
        cluster, cluster_insecure: with ``mode="dask"`` or ``"ray"``, the
            cluster: an address or a client (default: the one running, or a
            local one); a plain address off this machine only with
            ``cluster_insecure=True``.

    Journal:
        journal: a SQLite file recording each task as it ends; run again with
            it and tasks already ok are skipped (status ``skipped``, value kept).
        resume: ``"failed"`` (default: run all that is not ok),
            ``"unfinished"`` (only tasks with no final record) or ``"none"``.
        task_id: a function of the item giving its identity in the journal
            (default: the item itself, or a hash of it).
        force: resume a journal written by another function.
        durable: sync every commit to disk (SQLite ``synchronous=FULL``).

    Watching (never changes what runs):
        summary: print the run's summary on stderr at the end (counts, wall
            and task time, concurrency, durations, retries, mode).
        progress: ``True`` for a progress bar on stderr, ``"auto"`` for one
            when stderr is a terminal, or a function called with a
            :class:`whilst.Progress` ten times a second and at the end.
        report: write the run's timeline to this HTML file at the end.
        trace: write the run as Chrome trace events (Perfetto, chrome://tracing).

    Raises:
        TasksFailed: when any task failed; ``.results`` holds every result,
            successes included, so no finished work is lost.
        UsageError: a bad option or argument, before any task starts.

    Works inside a running event loop too (a notebook cell): the run then uses
    a loop in a helper thread.
    """
    options = resolve(fn, mode=mode, limit=limit, policy=policy)
    _check_summary(summary)
    collect = Collect(times=summary)
    scheduler = Scheduler(fn, items, options, collect)
    runner = make_runner()
    inside_a_loop = in_running_loop()
    try:
        main = runner.start(scheduler)
        runner.call(asyncio.wait([main]))
        error = None if main.cancelled() else main.exception()
        runner.raise_if_interrupted()
    finally:
        runner.close()
    raise_run_error(scheduler, error)
    if summary:
        _print_summary(collect, scheduler)
    try:
        return _values(collect, scheduler.left_unread)
    except TasksFailed as exc:
        if inside_a_loop and any(w in str(e) for e in exc.exceptions for w in _OTHER_LOOP):
            exc.add_note(
                "whilst: called inside a running event loop, whilst.map runs on a loop of "
                "its own, and what these tasks use belongs to the caller's (a session, a "
                "lock): there, use await whilst.amap(...)"
            )
        raise


#: What asyncio (and uvloop) say when a task awaits something of another loop.
_OTHER_LOOP = (  # asyncio's words (and uvloop's) for a thing of another loop
    "attached to a different loop",  # a future, a task
    "bound to a different event loop",  # an Event, a Lock, a Queue
    "belongs to a different loop",
    "await wasn't used with future",
)


async def amap(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
    summary: bool = False,
    **policy: Unpack[PolicyOptions],
) -> list[Any]:
    """:func:`map` for use inside a running event loop: ``await whilst.amap(...)``.

    Options are as for :func:`map`. The scheduler runs on the caller's loop, so
    ``async`` mode tasks share it.
    Ctrl-C or SIGTERM starts nothing new and gives running tasks ``grace``
    seconds, a second one cancels them at once; cancelling the caller's task
    cancels the run at once.
    """
    options = resolve(fn, mode=mode, limit=limit, policy=policy)
    _check_summary(summary)
    collect = Collect(times=summary)
    scheduler = Scheduler(fn, items, options, collect)
    main = asyncio.get_running_loop().create_task(scheduler.run())
    with LoopStop(scheduler, main) as stop:
        await stop.until(lambda: asyncio.wait([main]))
    stop.raise_if_stopped()
    raise_run_error(scheduler, main.exception())
    if summary:
        _print_summary(collect, scheduler)
    return _values(collect, scheduler.left_unread)


def imap(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
    ordered: bool = True,
    **policy: Unpack[PolicyOptions],
) -> Run:
    """Call ``fn`` on every item, yielding each :class:`Result` as it is ready.

    Lazy and bounded: items are read as slots free up and at most about
    ``8 * limit`` results are held (``4 * limit + 16`` waiting, and as many in
    the bunch the caller goes through), so a generator of ten million items is fine.
    ``ordered=True`` yields in input order; ``ordered=False`` as tasks finish.
    A failed task is a result with ``ok`` false, never an exception here.
    Options (policy included) are as for :func:`map`; they are checked now,
    tasks start on the first ``next()``.
    """
    options = resolve(fn, mode=mode, limit=limit, ordered=ordered, policy=policy)
    return Run(*streaming(fn, items, options))


def aimap(
    fn: Callable[..., Any],
    items: Items,
    *,
    mode: str = "auto",
    limit: int | None = None,
    ordered: bool = True,
    **policy: Unpack[PolicyOptions],
) -> AsyncRun:
    """:func:`imap` for use inside a running event loop: ``async for r in whilst.aimap(...)``."""
    options = resolve(fn, mode=mode, limit=limit, ordered=ordered, policy=policy)
    return AsyncRun(*streaming(fn, items, options))


def _check_summary(summary: object) -> None:
    if not isinstance(summary, bool):
        raise UsageTypeError(f"summary= takes True or False, got {summary!r}")


def _print_summary(collect: Collect, scheduler: Scheduler) -> None:
    stats = Stats()
    stats.add(collect.in_order())
    scheduler.summary(stats).print()


def _values(collect: Collect, unread: str | None) -> list[Any]:
    """Every value in input order, or TasksFailed with every result.

    A halted run leaves an input of no known length unread (it may never end),
    so the values would be silently short: that raises too, even when every
    task read was ok.
    """
    if not collect.failed and unread is None:
        return collect.values()
    results = collect.in_order()
    failed = [r for r in results if not r.ok]
    errors = _errors(failed)
    message = _failure_message(failed, len(results)) if failed else ""
    if unread is not None:
        errors.append(TaskCancelled(f"{unread}: the rest of the input was not read"))
        message = "; ".join(filter(None, [message, errors[-1].args[0]]))
    raise TasksFailed(message, errors, results)


def _failure_message(failed: Sequence[Result], total: int) -> str:
    """ "1 of 10 tasks failed, 9 cancelled (first: task 0, item 'x', failed: ...)". The
    first named is the first that failed of itself: not one cancelled because the
    run stopped (say, by a halt rule that failure met), if any other is there."""
    first = next((r for r in failed if r.status is not Status.CANCELLED), failed[0])
    what = describe(first.error) if first.error else first.status.value
    more = "" if len(failed) == 1 else f"; {len(failed) - 1} more in .results"
    (status, n), *others = collections.Counter(r.status.value for r in failed).items()
    counts = ", ".join([f"{n} of {total} tasks {status}"] + [f"{k} {s}" for s, k in others])
    return (
        f"{counts.replace('_', ' ')} (first: task {first.index}, item {_short(first.item)}, "
        f"{first.status.value.replace('_', ' ')}: {what}{more})"
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
    text = safe_repr(item)
    return text if len(text) <= width else text[: width - 3] + "..."
