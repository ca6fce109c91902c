"""Measured ``auto`` (issue 7): the first tasks run in threads with their CPU time
measured; CPU-bound work that can be pickled moves to processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import whilst
from whilst import Status
from whilst._options import cpu_count, resolve
from whilst._output import window_for

from conftest import max_overlap


def crunch(n: int) -> int:
    return sum(i * i for i in range(n))


def nap(x: float) -> float:
    time.sleep(x)
    return x


def timed(
    fn: object, items: list[object], mode: str
) -> tuple[float, whilst.Run, list[whilst.Result]]:
    began = time.perf_counter()
    run = whilst.imap(fn, items, mode=mode)  # type: ignore[arg-type]
    results = list(run)
    return time.perf_counter() - began, run, results


def test_cpu_heavy_work_moves_to_processes_and_runs_on_every_core() -> None:
    items = [400_000] * 64
    _, run, results = timed(crunch, items, "auto")
    assert run.summary is not None
    assert run.summary.mode == "processes"
    assert run.summary.mode_reason.startswith("auto chose processes: the first")
    assert "% of their time on the CPU" in run.summary.mode_reason
    assert [r.value for r in results] == [crunch(400_000)] * 64
    modes = [r.mode for r in results]
    assert modes[0] == "threads"  # measured there first
    assert modes[-1] == "processes"
    # Two at once, not one at a time behind one lock (start and end: the workers' clocks).
    assert max_overlap([r for r in results if r.mode == "processes"]) >= 2


def burn(seconds: float) -> float:
    """``seconds`` of this thread's CPU time, in bytecode: holds the lock throughout."""
    began = time.thread_time()
    while time.thread_time() - began < seconds:
        pass
    return seconds


@pytest.mark.skipif(cpu_count() < 2, reason="auto keeps threads on one CPU")
def test_long_cpu_tasks_move_too_though_none_ended_within_the_probe() -> None:
    """Six threads taking turns on 0.4 s CPU tasks end none in the probe's 0.5 s:
    what they spent on the CPU so far counts (it once measured one finished task
    against the whole probe: "21%, waiting")."""
    run = whilst.imap(burn, [0.4] * 12)
    results = list(run)
    assert run.summary is not None
    assert run.summary.mode_reason.startswith("auto chose processes"), run.summary.mode_reason
    assert [r.mode for r in results][-1] == "processes"


@pytest.mark.skipif(cpu_count() < 2, reason="auto keeps threads on one CPU")
def test_each_result_of_a_moved_run_names_the_mode_its_worker_is_in() -> None:
    """On the policy path too (a timeout): a task that ran in a thread says threads
    even when the result comes after the move (it said processes, thread-4)."""
    results = list(whilst.imap(burn, [0.05] * 40, timeout=30))
    assert {r.mode for r in results} == {"threads", "processes"}
    assert all((r.mode == "threads") == r.worker.startswith("thread-") for r in results)


@pytest.mark.skipif(cpu_count() < 2, reason="auto keeps threads on one CPU")
def test_with_a_timeout_no_attempt_waits_for_another_while_its_timeout_runs() -> None:
    """Auto's 10 slots on 2 CPUs: the probe's threads took turns on the interpreter
    lock, and in processes (a worker a CPU) attempts queued behind other slots':
    10 of 16 ran past their timeout. With a timeout the probe runs one attempt at
    a time, and processes one a worker."""
    results = list(whilst.imap(burn, [0.2] * 16, timeout=0.8, limit=10))
    assert [r.status for r in results] == [Status.OK] * 16, [r.error for r in results]
    moved = [r for r in results if r.mode == "processes"]
    assert moved
    for worker in {r.worker for r in moved}:
        assert max_overlap([r for r in moved if r.worker == worker]) == 1
    assert max_overlap([r for r in results if r.mode == "threads"]) == 1


@pytest.mark.skipif(cpu_count() < 2, reason="auto keeps threads on one CPU")
def test_with_a_timeout_the_turns_go_to_the_attempts_that_waited_longest() -> None:
    """A slot that freed its turn took it straight back (nothing awaited between):
    over an endless input, tasks 2 to 5 waited for ever while later ones ran."""
    tasks = (0.02 for _ in itertools.count())
    with whilst.imap(burn, tasks, timeout=5, ordered=False, limit=6) as run:
        seen = sorted(r.index for r in itertools.islice(run, 150))
    missing = sorted(set(range(seen[-1])) - set(seen))
    assert all(k > seen[-1] - 12 for k in missing), missing  # only those in flight


@pytest.mark.skipif(cpu_count() < 2, reason="auto keeps threads on one CPU")
def test_an_attempt_cut_in_its_thread_after_the_move_says_so() -> None:
    """The run moved to processes while this attempt ran in a thread: its timeout
    abandoned a thread (it said its worker process was killed)."""
    before = set(threading.enumerate())
    (r,) = list(whilst.imap(burn, [1.5], timeout=1))
    assert r.status is Status.TIMED_OUT
    assert (r.mode, r.worker) == ("threads", "thread-0")
    assert "thread still running" in str(r.error)
    for thread in set(threading.enumerate()) - before:  # the abandoned one burns on:
        thread.join(5)  # the next tests measure threads' CPU share, with no lock taken


def test_waiting_work_stays_in_threads() -> None:
    _, run, results = timed(nap, [0.02] * 20, "auto")
    assert run.summary is not None
    assert run.summary.mode == "threads"
    assert run.summary.mode_reason.startswith("auto kept threads:")
    assert "waiting" in run.summary.mode_reason
    assert all(r.status is Status.OK and r.mode == "threads" for r in results)


def test_cpu_heavy_work_that_cannot_be_pickled_stays_in_threads_and_says_why() -> None:
    lock = threading.Lock()

    def locked(n: int) -> int:  # a closure over a lock: processes cannot have it
        with lock:
            return sum(i * i for i in range(n))

    _, run, results = timed(locked, [300_000] * 12, "auto")
    assert run.summary is not None
    assert run.summary.mode == "threads"
    assert "cannot be pickled" in run.summary.mode_reason
    assert "lock" in run.summary.mode_reason  # what pickle tripped on, and the fix
    assert len(results) == 12


class Holder:
    """An item that cannot be pickled (it holds a lock)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()


def crunch_held(item: Holder) -> int:
    return crunch(item.n)


def test_items_that_cannot_be_pickled_keep_the_run_in_threads() -> None:
    _, run, results = timed(crunch_held, [Holder(300_000) for _ in range(16)], "auto")
    assert run.summary is not None
    assert run.summary.mode == "threads"
    assert "items or values cannot be pickled" in run.summary.mode_reason
    assert all(r.ok for r in results)


def test_a_run_too_short_to_measure_says_so() -> None:
    _, run, _ = timed(crunch, [1000, 1000], "auto")
    assert run.summary is not None
    assert run.summary.mode_reason.startswith("auto kept threads: the run's 2 tasks")
    _, run, _ = timed(crunch, [1000], "auto")
    assert run.summary is not None
    assert run.summary.mode_reason.startswith("auto kept threads: the run's 1 task (too few")


# -- a plain function that returns coroutines (from a user trial) ------------------


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A real aiohttp server on 127.0.0.1, on the caller's loop: its base URL, and
    how often each page was asked for. /slow takes 5 s, /flaky fails the first time."""
    hits: Counter[str] = Counter()

    async def page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits[name] += 1
        await asyncio.sleep(5 if name == "slow" else 0.01)
        if name == "flaky" and hits[name] == 1:
            return web.Response(status=500)
        return web.Response(text=f"page {name}")

    app = web.Application()
    app.router.add_get("/{name}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def fetch(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, raise_for_status=True) as response:
        return await response.text()


def test_a_lambda_sharing_the_callers_session_runs_every_task_on_the_callers_loop() -> None:
    """``aimap(lambda u: fetch(session, u), urls)``: the coroutines the lambda returns
    are awaited on the caller's loop, which owns the session (they were awaited on
    each thread's own loop: every task failed, "attached to a different loop"), and
    once they are known the calls run there too, with no thread each."""
    caller = threading.current_thread()
    called_in: list[threading.Thread] = []

    def get(session: aiohttp.ClientSession, url: str) -> object:
        called_in.append(threading.current_thread())
        return fetch(session, url)

    async def main() -> tuple[whilst.AsyncRun, list[whilst.Result], list[str], list[str]]:
        async with local_server() as (base, _), aiohttp.ClientSession() as session:
            urls = [f"{base}/{i}" for i in range(30)]
            run = whilst.aimap(lambda u: get(session, u), urls)
            results = [r async for r in run]
            values = await whilst.amap(lambda u: fetch(session, u), urls)
            return run, results, values, urls

    run, results, values, urls = asyncio.run(main())
    assert [(r.status, r.value) for r in results] == [(Status.OK, f"page {i}") for i in range(30)]
    assert values == [f"page {i}" for i in range(30)]
    assert {r.mode for r in results} == {"async"}
    assert all(r.worker.startswith("loop-") for r in results)
    assert run.summary is not None
    assert run.summary.mode == "async"
    assert run.summary.mode_reason == "auto chose async: the function returns coroutines"
    # Only the first tasks, handed to threads before any came back, were called there.
    in_threads = sum(thread is not caller for thread in called_in)
    assert in_threads <= resolve(abs).limit < len(urls)


def test_timeouts_retries_and_cancellation_of_such_tasks_act_on_the_callers_loop() -> None:
    """A timed-out attempt is cancelled on the loop (no thread is abandoned, the run
    does not wait for it), a failed one is retried, and cancelling the caller's
    amap stops the run at once, leaving no coroutine unawaited."""

    async def main() -> tuple[list[whilst.Result], float, float]:
        async with local_server() as (base, hits), aiohttp.ClientSession() as session:
            urls = [f"{base}/slow", f"{base}/flaky", *(f"{base}/{i}" for i in range(10))]
            began = time.monotonic()
            run = whilst.aimap(
                lambda u: fetch(session, u), urls, timeout=0.5, retries=1, backoff=0.01
            )
            results = [r async for r in run]
            took = time.monotonic() - began
            assert hits["flaky"] == 2
            began = time.monotonic()
            amap = asyncio.ensure_future(
                whilst.amap(lambda u: fetch(session, u), [f"{base}/slow"] * 20)
            )
            await asyncio.sleep(0.3)
            amap.cancel()
            with pytest.raises(asyncio.CancelledError):
                await amap
            return results, took, time.monotonic() - began

    results, took, cancel_took = asyncio.run(main())
    slow, flaky, *rest = results
    assert slow.status is Status.TIMED_OUT
    assert slow.attempts == 2
    assert slow.mode == "async"
    assert "it was cancelled" in str(slow.error)
    assert "thread" not in str(slow.error)
    assert (flaky.status, flaky.value, flaky.attempts) == (Status.OK, "page flaky", 2)
    assert all(r.status is Status.OK and r.mode == "async" for r in rest)
    assert took < 3  # two 0.5 s attempts, not the 5 s the page takes
    assert cancel_took < 2


def where(x: int) -> str:
    """A plain function returning a coroutine that says which thread awaits it."""

    async def inner() -> str:
        await asyncio.sleep(0.01)
        return threading.current_thread().name

    return inner()


def test_a_lambda_returning_coroutines_in_plain_code_runs_them_on_the_runs_loop() -> None:
    """``whilst.map`` from plain code (no loop running): the run's own loop, in the
    caller's thread, awaits them, as in async mode (a thread's own loop did)."""
    me = threading.current_thread().name
    assert whilst.map(lambda x: where(x), range(20)) == [me] * 20
    run = whilst.imap(lambda x: where(x), range(20))
    results = list(run)
    assert [r.value for r in results] == [me] * 20
    assert {r.mode for r in results} == {"async"}
    assert run.summary is not None
    assert run.summary.mode == "async"
    assert run.summary.mode_reason == "auto chose async: the function returns coroutines"


def test_once_it_proves_to_return_coroutines_async_limit_applies_unless_one_was_asked() -> None:
    """Auto starts with the threads' default limit (CPUs + 4): held to it, a run of
    network calls went 6 at a time, 17x slower than as an ``async def``."""
    running, peaks = 0, []

    async def call(x: int) -> int:
        nonlocal running
        running += 1
        peaks.append(running)
        await asyncio.sleep(0.05)
        running -= 1
        return x

    for limit, most in ((None, 100), (4, 4)):
        peaks.clear()
        run = whilst.imap(lambda x: call(x), range(300), limit=limit)
        assert [r.value for r in run] == list(range(300))
        assert run.summary is not None
        assert run.summary.limit == most
        assert max(peaks) <= most
        if limit is None:
            assert max(peaks) > resolve(abs).limit  # more than the threads' default


def test_once_it_goes_async_with_a_policy_its_batches_and_read_ahead_stay_small() -> None:
    """The policy path's batches had grown while the tasks looked tiny in threads,
    and kept growing on the loop (1,365 coroutines a batch, one after another):
    the window grew with them, and a reader that paused found tens of thousands
    of items read ahead, against the 416 results async's limit holds."""
    read = 0

    def items() -> Iterator[int]:
        nonlocal read
        for i in range(20_000):
            read += 1
            yield i

    async def noop(x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def main() -> tuple[int, int, whilst.AsyncRun]:
        run = whilst.aimap(lambda x: noop(x), items(), retries=1)
        taken, ahead = 0, 0
        async for _ in run:
            taken += 1
            if taken in (1, 5_000):  # the reader pauses; the run goes on meanwhile
                await asyncio.sleep(0.3)
                ahead = max(ahead, read - taken)
        return taken, ahead, run

    taken, ahead, run = asyncio.run(main())
    assert taken == 20_000
    assert run.summary is not None
    assert run.summary.limit == 100
    assert ahead <= 2 * window_for(100) + 100  # held, set aside, and one in flight a slot


class Doubled:
    """An awaitable that is not a coroutine (as aiohttp's ``session.get(url)``)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __await__(self) -> Iterator[Any]:
        yield from asyncio.sleep(0).__await__()
        return self.x * 2


@pytest.mark.parametrize("mode", ["auto", "sync"])
def test_an_awaitable_a_plain_function_returns_is_awaited(mode: str) -> None:
    """Not only a coroutine: its value came back unawaited (a Doubled object)."""
    assert whilst.map(lambda x: Doubled(x), range(50), mode=mode) == list(range(0, 100, 2))

    async def main() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()

        def later(x: int) -> asyncio.Future[int]:  # (auto would call it in a thread)
            fut = loop.create_future()
            loop.call_later(0.01, fut.set_result, x + 1)
            return fut

        doubled = await whilst.amap(lambda x: Doubled(x), range(20), mode=mode, retries=1)
        return doubled, await whilst.amap(later, range(20), mode="sync", retries=1)

    assert asyncio.run(main()) == (list(range(0, 40, 2)), list(range(1, 21)))


def test_once_it_goes_async_its_attempts_still_time_out() -> None:
    """The slots turn into async's own as they go on: a timeout still stops each."""
    start = time.monotonic()
    run = whilst.imap(lambda x: asyncio.sleep(10 if x % 2 else 0, x), range(40), timeout=0.3)
    results = list(run)
    assert time.monotonic() - start < 5
    assert [r.status for r in results] == [whilst.Status.OK, whilst.Status.TIMED_OUT] * 20
    assert {r.mode for r in results} == {"async"}


def test_once_it_goes_async_a_resume_still_gives_every_item_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume reads runs of items between those done, and leaves some read
    aside; the slots auto turned into async's own read the input on past them
    (from the review: 2 to 8 results of 3000 missing, or an IndexError in map)."""
    monkeypatch.setattr("whilst._modes._auto.CPU_BOUND", 9.0)  # (threads, then async)
    second = False

    def fn(x: int) -> Any:
        if not second:
            if x % 2:
                raise ValueError(x)
            return x
        if x < 1500:
            time.sleep(0.00002)
            return x
        return asyncio.sleep(0, x)

    for attempt in range(6):  # (it went wrong in about one run of three)
        journal, second = tmp_path / f"run{attempt}.db", False
        assert len(list(whilst.imap(fn, range(3000), journal=journal))) == 3000
        second = True
        results = list(whilst.imap(fn, range(3000), journal=journal))
        assert [r.index for r in results] == list(range(3000))
        assert all(r.ok for r in results)
        assert {r.mode for r in results if r.index % 2 and r.index >= 1500} == {"async"}
