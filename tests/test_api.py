"""Behaviour of the API forms beyond the per-mode contract."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import whilst
from whilst import Status
from whilst._output import window_for
from whilst._scheduler import BATCH_BUDGET
from whilst._summary import Stats

from conftest import adouble, anap, double, max_overlap


class Counted:
    """A generator that counts how far it has been read."""

    def __init__(self, n: int | None = None) -> None:
        self.pulled = 0
        self.n = n

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count() if self.n is None else range(self.n):
            self.pulled += 1
            yield i


def read_ahead_bound(mode: str, limit: int) -> int:
    """How far imap may read ahead of its consumer: a constant, whatever the input."""
    if mode in ("threads", "processes"):  # batching modes
        in_flight = BATCH_BUDGET
        window = max(window_for(limit), 2 * BATCH_BUDGET)
    else:
        in_flight, window = limit, window_for(limit)
    return in_flight + 2 * window


@pytest.mark.parametrize("mode", ["async", "threads", "sync", "processes"])
def test_imap_reads_the_input_lazily(mode: str) -> None:
    source = Counted()  # endless
    fn = anap if mode == "async" else abs
    limit = 1 if mode == "sync" else 4
    run = whilst.imap(fn, (0 for _ in iter(source)), mode=mode, limit=limit)
    assert source.pulled == 0  # nothing starts before the first next()
    for consumed, _ in enumerate(itertools.islice(run, 50_000), start=1):
        # never more than limit in flight (a batching mode: BATCH_BUDGET items), plus the
        # window of held results, plus the one batch of them the iterator has taken
        assert source.pulled - consumed <= read_ahead_bound(mode, limit)
    run.close()


def test_ordered_imap_holds_a_bounded_window_behind_a_slow_task() -> None:
    source = Counted()
    started = []

    async def fn(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0.5 if x == 0 else 0)
        return x

    with whilst.imap(fn, iter(source), mode="async", limit=4) as run:
        first = next(run)
    assert first.index == 0
    # While item 0 ran, the fast ones piled up only to the window, not the whole input.
    assert len(started) <= 4 + 2 * window_for(4)


def test_async_mode_overlaps_on_one_loop() -> None:
    loops = set()

    async def fn(x: float) -> float:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(x)
        return x

    t0 = time.perf_counter()
    # (Sleeps long beside a stall of the loop on a loaded machine: 0.24 s was seen.)
    results = list(whilst.imap(fn, [0.6] * 50, mode="async", limit=50))
    wall = time.perf_counter() - t0
    assert len(loops) == 1
    assert max_overlap(results) == 50
    assert wall < 0.6 * 50 / 4  # overlapped, not one after another


def test_sync_mode_is_one_after_another() -> None:
    results = list(whilst.imap(lambda x: time.sleep(x), [0.02] * 5, mode="sync"))
    assert max_overlap(results) == 1
    assert all(a.end <= b.start for a, b in itertools.pairwise(results))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_task_starts_once_its_item_is_read(mode: str) -> None:
    """A slot going straight on from a list's item to the next starts it as the
    last one ended; reading a slow input never counts as the next task's time."""
    fn = anap if mode == "async" else (lambda x: time.sleep(x))
    with pytest.raises(whilst.TasksFailed) as info:  # every Result, from a map
        whilst.map(fn, [0.01, 0.01, 0.01, None], mode=mode, limit=1)
    listed = sorted(info.value.results, key=lambda r: r.index)
    assert all(a.end == b.start for a, b in itertools.pairwise(listed))
    read: list[float] = []

    def slow_input() -> Iterator[float]:
        for _ in range(3):
            time.sleep(0.2)  # reading each item takes a while
            read.append(time.time())
            yield 0.01

    results = list(whilst.imap(fn, slow_input(), mode=mode, limit=1))
    assert all(r.start >= t for r, t in zip(results, read, strict=True))
    assert all(r.duration < 0.15 for r in results)


@pytest.mark.parametrize("journal", [False, True])
@pytest.mark.parametrize("policy", [{}, {"retries": 1}])
@pytest.mark.parametrize("in_loop", [False, True])
def test_sync_imap_runs_no_task_ahead_of_its_caller(
    policy: dict[str, object], in_loop: bool, journal: bool, tmp_path: Path
) -> None:
    """Sync mode takes turns with the caller, as a plain for loop: each result comes
    before the next task starts, and a break runs no task more (a journal, which
    holds results until they are committed, too)."""
    started: list[int] = []
    if journal:
        policy = {**policy, "journal": tmp_path / "run.db"}

    def task(x: int) -> int:
        started.append(x)
        time.sleep(0.01)  # longer than the pace: handed over at once
        return x

    def search() -> None:
        for r in whilst.imap(task, range(50), mode="sync", **policy):  # type: ignore[arg-type]
            assert started == list(range(r.index + 1))
            if r.index == 3:
                break

    if in_loop:

        async def main() -> None:
            search()

        asyncio.run(main())
    else:
        search()
    assert started == [0, 1, 2, 3]


def test_amap_in_sync_mode_runs_the_tasks_in_the_callers_thread() -> None:
    """What the README gives for a function bound to the caller's thread inside a
    running loop (map there runs its tasks in a helper thread)."""

    def where(_: int) -> str:
        return threading.current_thread().name

    async def main() -> tuple[list[str], list[str]]:
        return await whilst.amap(where, range(3), mode="sync"), whilst.map(
            where, range(3), mode="sync"
        )

    mine, helpers = asyncio.run(main())
    assert mine == [threading.current_thread().name] * 3
    assert threading.current_thread().name not in helpers


def test_sync_mode_lets_tasks_call_asyncio_run() -> None:
    async def inner(x: int) -> int:
        return x + 1

    assert whilst.map(lambda x: asyncio.run(inner(x)), range(3), mode="sync") == [1, 2, 3]


@pytest.mark.parametrize("mode", ["sync", "threads", "processes", "auto"])
def test_a_coroutine_function_is_awaited_in_every_mode(mode: str) -> None:
    assert whilst.map(anap, [0.01, 0.02], mode=mode) == [0.01, 0.02]


@pytest.mark.parametrize("mode", ["sync", "threads", "processes"])
def test_a_lambda_returning_a_coroutine_is_awaited(mode: str) -> None:
    assert whilst.map(lambda x: anap(x), [0.01], mode=mode) == [0.01]


def test_async_mode_refuses_a_plain_function_naming_the_fix_for_each_kind() -> None:
    """A plain function may return a coroutine (a lambda sharing a session) or block:
    the message tells both what to do (it said only threads, which fails the first)."""
    session = object()
    with pytest.raises(whilst.UsageError) as info:
        whilst.aimap(lambda u: anap(session and u), [0.01], mode="async")
    message = str(info.value)
    assert "if it returns a coroutine" in message
    assert "functools.partial(fn, arg)" in message
    assert "the async def itself" in message
    assert "mode='auto', which awaits them on the run's event loop" in message
    assert message.endswith("if it blocks, use mode='threads'")


def test_cluster_without_a_mode_says_the_mode_was_left_at_auto() -> None:
    """(It said "this run's mode is 'threads'": a mode the user never asked for.)"""
    with pytest.raises(whilst.UsageError) as info:
        whilst.map(double, [1], cluster="tcp://10.0.0.1:8786")
    assert "and mode was left at 'auto'; add mode='dask' (or 'ray')" in str(info.value)
    with pytest.raises(whilst.UsageError, match="and this run's mode is 'threads'; add"):
        whilst.map(double, [1], mode="threads", cluster="tcp://10.0.0.1:8786")


def test_auto_chooses_by_the_kind_of_function() -> None:
    run = whilst.imap(anap, [0])
    list(run)
    assert run.summary is not None
    assert run.summary.mode == "async"
    assert "coroutine function" in run.summary.mode_reason
    run = whilst.imap(double, [0])
    list(run)
    assert run.summary is not None
    assert run.summary.mode == "threads"


def test_default_limits() -> None:
    from whilst._options import cpu_count, resolve

    assert resolve(anap).limit == 100
    assert resolve(double).limit == min(32, cpu_count() + 4)
    assert resolve(double, mode="processes").limit == cpu_count()
    assert resolve(double, mode="sync").limit == 1


def test_summary_counts_and_speedup() -> None:
    run = whilst.imap(
        lambda x: 1 / x if x else time.sleep(0.1) or 1 / x, [0, 1, 2, 4], mode="threads"
    )
    results = list(run)
    s = run.summary
    assert s is not None
    assert s.counts == {"ok": 3, "failed": 1}
    assert s.total == 4
    assert s.failed == 1
    assert s.task_time == pytest.approx(sum(r.duration for r in results))
    assert s.wall > 0


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("mode", ["sync", "threads", "processes"])
def test_a_task_raising_base_exceptions_fails_alone(mode: str, exc: type) -> None:
    def fn(x: int) -> int:
        if x == 1:
            raise exc(3)
        return x

    results = list(whilst.imap(fn, range(4), mode=mode))
    assert [r.status for r in results] == [Status.OK, Status.FAILED, Status.OK, Status.OK]
    assert isinstance(results[1].error, exc)
    with pytest.raises(whilst.TasksFailed) as info:
        whilst.map(fn, range(4), mode=mode)
    assert [r.value for r in info.value.results if r.ok] == [0, 2, 3]


def stop_on_one(x: int) -> int:
    if x == 1:
        raise StopIteration("one")
    return x


async def astop_on_one(x: int) -> int:
    return stop_on_one(x)


@pytest.mark.parametrize("policy", [{}, {"retries": 1, "retry_on": StopIteration, "backoff": 0}])
@pytest.mark.parametrize("kind", ["plain", "coroutine"])
@pytest.mark.parametrize("mode", ["sync", "async", "threads", "processes"])
def test_a_task_raising_stop_iteration_fails_with_it(
    mode: str, kind: str, policy: dict[str, object]
) -> None:
    """PEP 479 turns a StopIteration that leaves a coroutine into a RuntimeError:
    the task's error is still the StopIteration its function raised, in every mode."""
    if mode == "async" and kind == "plain":
        pytest.skip("async mode takes coroutine functions")
    fn = stop_on_one if kind == "plain" else astop_on_one
    results = list(whilst.imap(fn, range(3), mode=mode, **policy))  # type: ignore[arg-type]
    assert [r.status for r in results] == [Status.OK, Status.FAILED, Status.OK]
    assert type(results[1].error) is StopIteration
    assert str(results[1].error) == "one"
    assert results[1].attempts == (2 if policy else 1)  # retry_on knows it for what it is


def test_tasks_failed_counts_each_way_tasks_ended_and_names_the_first() -> None:
    def bad_first(x: str) -> str:
        if x == "a":
            raise ValueError("bad")
        return x

    with pytest.raises(whilst.TasksFailed) as info:
        whilst.map(bad_first, ["a", *"bcdefghij"], mode="sync", halt="now,fail=1")
    assert str(info.value).startswith(
        "1 of 10 tasks failed, 9 cancelled (first: task 0, item 'a', failed: ValueError: bad; "
        "9 more in .results)"
    )


def cancel_on_one(x: int) -> int:
    if x == 1:
        raise asyncio.CancelledError
    return x


async def acancel_on_one(x: int) -> int:
    return cancel_on_one(x)


@pytest.mark.parametrize("mode", ["sync", "async", "threads", "processes"])
def test_a_task_raising_cancelled_error_itself_is_cancelled(mode: str) -> None:
    fn = acancel_on_one if mode == "async" else cancel_on_one
    results = list(whilst.imap(fn, range(3), mode=mode))
    assert [r.status for r in results] == [Status.OK, Status.CANCELLED, Status.OK]


def test_an_input_that_fails_raises_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    seen = []
    run = whilst.imap(lambda x: x, items(), mode="threads")
    seen.extend(next(run).value for _ in range(2))
    with pytest.raises(OSError, match="disk gone") as info:
        next(run)
    assert seen == [1, 2]
    assert "the input raised this while being read" in str(info.value.__notes__)


def test_async_iterables_are_read_too() -> None:
    async def items():  # type: ignore[no-untyped-def]
        for i in range(30):
            await asyncio.sleep(0)
            yield i

    assert whilst.map(double, items(), mode="threads") == [x * 2 for x in range(30)]
    assert whilst.map(adouble, items(), mode="async") == [x * 2 for x in range(30)]


@pytest.mark.parametrize("mode", ["threads", "processes", "auto"])
def test_an_async_input_item_runs_as_it_comes_in_a_batching_mode(mode: str) -> None:
    """Each item of this input comes only once the result before it is out (a
    feed that answers what it is told), so a batch that waited to fill, or a slot
    that read on before collecting the batch it had out, would wait forever."""

    async def main() -> list[int]:
        seen: list[int] = []
        answered = asyncio.Event()

        async def feed():  # type: ignore[no-untyped-def]
            for i in range(6):
                yield i
                await answered.wait()
                answered.clear()

        async for r in whilst.aimap(abs, feed(), mode=mode):
            seen.append(r.value)
            answered.set()
        return seen

    assert asyncio.run(asyncio.wait_for(main(), 30)) == list(range(6))


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_halt_stops_waiting_for_an_async_input(mode: str) -> None:
    """After a failure halts the run, nothing waits for an input that has no more
    items for now (or ever): the run ends, saying its input was not read to the end."""

    async def feed():  # type: ignore[no-untyped-def]
        yield 1
        yield "x"  # abs("x") fails
        await asyncio.Event().wait()  # never set
        yield 2

    async def main() -> whilst.Summary | None:
        run = whilst.aimap(abs, feed(), mode=mode, halt="now,fail=1")
        assert [r.ok async for r in run] == [True, False]
        return run.summary

    summary = asyncio.run(asyncio.wait_for(main(), 30))
    assert summary is not None
    assert summary.left_unread is not None


def test_a_fast_async_input_still_fills_batches() -> None:
    """Items that are there at once (or a turn of the loop later) go in batches:
    reading ahead only what a batch wants does not cut them to one item each."""

    async def items():  # type: ignore[no-untyped-def]
        for i in range(20_000):
            if i % 2:
                await asyncio.sleep(0)
            yield i

    results = list(whilst.imap(abs, items(), mode="threads", limit=2))
    assert [r.value for r in results] == list(range(20_000))
    # In a batch each task starts as the one before it ends (the same float).
    batches = 1 + sum(a.end != b.start for a, b in itertools.pairwise(results))
    assert batches < 2_000  # batches, not one by one


@pytest.mark.parametrize("mode", ["async", "threads"])
def test_a_run_left_early_still_has_a_summary(mode: str) -> None:
    fn = adouble if mode == "async" else double
    run = whilst.imap(fn, range(1000), mode=mode)
    for r in run:
        if r.index == 3:
            break
    run.close()
    assert run.summary is not None
    assert 4 <= run.summary.counts["ok"] < 1000

    async def main() -> whilst.Summary | None:
        async with whilst.aimap(fn, range(1000), mode=mode) as arun:
            async for r in arun:
                if r.index == 3:
                    break
        return arun.summary

    summary = asyncio.run(main())
    assert summary is not None
    assert 4 <= summary.counts["ok"] < 1000


def test_closing_imap_inside_its_for_loop_hands_out_nothing_more() -> None:
    """Results already finished and held (a whole chunk of them) are not handed out
    once the run is closed: the loop ends at the next step (in the async form too,
    where it went on with the chunk, then raised CancelledError)."""
    run = whilst.imap(adouble, range(10_000), mode="async", limit=100)
    seen = []
    for r in run:
        seen.append(r.index)
        if r.index == 5:
            run.close()
    assert seen == list(range(6))

    async def main() -> list[int]:
        arun = whilst.aimap(adouble, range(10_000), mode="async", limit=100)
        seen = []
        async for r in arun:
            seen.append(r.index)
            if r.index == 5:
                await arun.aclose()
        return seen

    assert asyncio.run(main()) == list(range(6))


def test_imap_closed_from_another_thread_as_a_chunk_is_taken_hands_out_none_of_it() -> None:
    run = whilst.imap(adouble, range(1000), mode="async", limit=100)

    class ClosingStats(Stats):
        def add_chunk(self, chunk: Any) -> None:  # the reader holds a chunk now
            super().add_chunk(chunk)
            closer = threading.Thread(target=run.close)
            closer.start()
            closer.join(10)

    run._feed.stats = ClosingStats()
    assert list(run) == []
    assert run.summary is not None


def test_one_imap_read_from_two_threads_at_once_refuses_the_second() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.5)
        return x

    run = whilst.imap(slow, range(100), mode="async", limit=2)
    got: list[int] = []
    first = threading.Thread(target=lambda: got.append(next(run).index))
    first.start()
    time.sleep(0.1)  # the first thread waits for its result meanwhile
    with pytest.raises(ValueError, match="already executing"):
        next(run)
    first.join(10)
    assert got == [0]
    assert next(run).index == 1  # the run goes on for the one reading it
    run.close()


def test_aimap_closed_by_another_task_ends_its_readers_loop_quietly() -> None:
    async def main() -> tuple[list[int], whilst.Summary | None]:
        arun = whilst.aimap(anap, range(1000), mode="async", limit=2)
        seen: list[int] = []
        first = asyncio.Event()

        async def read() -> None:
            async for r in arun:  # item 1 takes 1 s: the reader waits for it
                seen.append(r.index)
                first.set()

        reader = asyncio.create_task(read())
        await first.wait()
        await arun.aclose()
        await asyncio.wait_for(reader, 10)  # no CancelledError
        return seen, arun.summary

    seen, summary = asyncio.run(main())
    assert seen == [0]
    assert summary is not None
    assert summary.counts["ok"] >= 1


def test_aimap_in_a_plain_for_loop_names_the_form_to_use() -> None:
    async def echo(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"`async for` inside a coroutine.*whilst.imap"):
        for _ in whilst.aimap(echo, [1]):  # (it said "'AsyncRun' object is not iterable")
            pass


def test_aimap_raises_an_input_error_once() -> None:
    async def items():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise OSError("the feed broke")

    async def main() -> list[int]:
        arun = whilst.aimap(adouble, items(), mode="async")
        with pytest.raises(OSError, match="the feed broke"):
            async for _ in arun:
                pass
        return [r.index async for r in arun]  # after the error: the end, quietly

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_summary_is_the_summary_of_its_results(ordered: bool) -> None:
    """Counted chunk by chunk as results are handed out, failures among them or not."""

    async def fn(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        if x % 97 == 0:
            raise ValueError(x)
        return x

    run = whilst.imap(fn, range(3000), mode="async", limit=50, ordered=ordered)
    results = list(run)
    assert sorted(r.index for r in results) == list(range(3000))
    assert all(r.ok == (r.index % 97 != 0) for r in results)
    stats = Stats()
    stats.add(results)
    expected = stats.summary(wall=0, mode="", mode_reason="", limit=0, peak=0, retries=0)
    s = run.summary
    assert s is not None
    assert s.counts == expected.counts == {"ok": 2969, "failed": 31}
    assert s.task_time == pytest.approx(expected.task_time)
    assert (s.p50, s.p95, s.max) == (expected.p50, expected.p95, expected.max)


def test_result_ok_follows_its_status_as_it_is_made() -> None:
    made = {s: whilst.Result(0, "x", s).ok for s in Status}
    assert made == {s: s in (Status.OK, Status.SKIPPED) for s in Status}
    r = whilst.Result(3, "x", Status.OK, 9)
    failed = dataclasses.replace(r, status=Status.FAILED, value=None)
    assert (r.ok, failed.ok, failed.index) == (True, False, 3)
    # ok is no field: a Result made again from its fields is the same.
    again = whilst.Result(**dataclasses.asdict(r))
    assert (again.ok, again.value) == (True, 9) == (whilst.Result(*dataclasses.astuple(r)).ok, 9)


def test_closing_imap_early_stops_the_run() -> None:
    started = []

    async def fn(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0.01)
        return x

    run = whilst.imap(fn, itertools.count(), mode="async", limit=3)
    assert [next(run).value for _ in range(5)] == [0, 1, 2, 3, 4]
    run.close()
    n = len(started)
    time.sleep(0.05)
    assert len(started) == n
    with pytest.raises(StopIteration):
        next(run)


@pytest.mark.parametrize("mode", ["async", "threads"])
def test_leaving_an_imap_loop_stops_the_run_at_once_without_the_gc(
    mode: str, tmp_path: Path
) -> None:
    """break frees the results (no cycle waits for the garbage collector): the run
    stops and its journal is free for the next run at once."""
    import gc

    journal = tmp_path / "run.db"
    fn = adouble if mode == "async" else double
    gc.disable()
    try:
        for r in whilst.imap(fn, range(1000), mode=mode, limit=4, journal=journal):
            if r.index == 3:
                break
        assert whilst.map(fn, range(10), mode=mode, journal=journal) == [x * 2 for x in range(10)]
    finally:
        gc.enable()


def test_leaving_an_aimap_loop_stops_the_run(tmp_path: Path) -> None:
    """As the sync form: break out of ``async for r in whilst.aimap(...)`` and the
    run stops (nothing new starts) and its journal is free."""
    import gc

    started: list[int] = []

    async def counted(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0.01)
        return x

    async def main() -> tuple[int, list[int]]:
        journal = tmp_path / "run.db"
        async for r in whilst.aimap(counted, range(1000), limit=4, journal=journal):
            if r.index == 3:
                break
        await asyncio.sleep(0.1)
        n = len(started)
        await asyncio.sleep(0.2)
        return len(started) - n, await whilst.amap(counted, range(5), journal=journal)

    gc.disable()
    try:
        assert asyncio.run(main()) == (0, [0, 1, 2, 3, 4])
    finally:
        gc.enable()


def test_a_run_kept_in_a_variable_goes_on_as_any_iterator() -> None:
    """Only a run nobody holds stops when its loop is left: one kept in a variable
    can be read in pieces (itertools.islice) or after a break, to its end."""
    run = whilst.imap(double, range(20), mode="threads", limit=2)
    pieces = []
    while piece := [r.value for r in itertools.islice(run, 5)]:
        pieces.append(piece)
    assert pieces == [[x * 2 for x in range(k, k + 5)] for k in range(0, 20, 5)]
    assert run.summary is not None
    assert run.summary.total == 20
    run = whilst.imap(double, range(10), mode="threads")
    for r in run:
        if r.index == 3:
            break
    first = next(iter(run))
    assert [first.index, *(r.index for r in run)] == list(range(4, 10))


def test_an_imap_collected_on_its_own_loop_thread_stops_without_a_deadlock() -> None:
    """Inside a running loop an imap runs on a helper thread; when the garbage
    collector frees the dropped run there, it must not wait on that very loop."""
    import gc

    async def collecting(x: int) -> int:
        await asyncio.sleep(0.02)
        gc.collect()  # on the helper loop's thread: the dropped runs are freed here
        return x

    async def main() -> set[threading.Thread]:
        # The runs' own threads: one an earlier test left ending may end meanwhile.
        before = set(threading.enumerate())
        for _ in range(3):
            run = whilst.imap(collecting, range(1000), mode="async", limit=4)
            next(run)
            run.cycle = run  # type: ignore[attr-defined]  # so only the collector frees it
            del run
        for _ in range(100):  # up to 5 s
            if not set(threading.enumerate()) - before:
                break
            await asyncio.sleep(0.05)
        return set(threading.enumerate()) - before

    assert asyncio.run(main()) == set()


SLOW_ONES = {3000, 3004, 3008}
slow_ran: dict[int, tuple[str, float, float]] = {}  # item: (thread, start, end)


def slow_among_tiny(x: int) -> int:
    if x in SLOW_ONES:
        start = time.monotonic()
        time.sleep(0.4)
        slow_ran[x] = (threading.current_thread().name, start, time.monotonic())
    return x


@pytest.mark.parametrize("mode", ["threads", "auto"])
@pytest.mark.parametrize("form", ["map", "imap"])
def test_slow_tasks_batched_among_tiny_ones_run_side_by_side(mode: str, form: str) -> None:
    """Tiny tasks travel in batches; slow ones in the same batch must not wait for
    each other (and hold up their batch-mates) while other threads sit idle: idle
    threads take back what a busy one has not started. Without that, the three
    slow tasks ran one after another in one thread."""
    slow_ran.clear()
    items = range(4000)
    if form == "map":
        assert whilst.map(slow_among_tiny, items, mode=mode, limit=4) == list(items)
    else:
        results = whilst.imap(slow_among_tiny, items, mode=mode, limit=4)
        assert [r.value for r in results] == list(items)
    assert len({thread for thread, _, _ in slow_ran.values()}) == 3
    latest_start = max(start for _, start, _ in slow_ran.values())
    assert latest_start < min(end for _, _, end in slow_ran.values())  # all three at once


def test_threads_mode_threads_end_after_the_run() -> None:
    # The run's own threads: one an earlier test left ending may end meanwhile.
    before = set(threading.enumerate())
    whilst.map(double, range(100), mode="threads", limit=8)
    deadline = time.time() + 5
    while set(threading.enumerate()) - before and time.time() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) - before == set()


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_an_abandoned_imap_is_cleaned_up(mode: str) -> None:
    import gc

    run = whilst.imap(double, range(10_000), mode=mode, limit=2)
    assert next(run).value == 0
    del run
    gc.collect()  # no warning, no error: the run is stopped and its workers released
    assert whilst.map(double, range(5), mode=mode) == [0, 2, 4, 6, 8]


def test_an_imap_started_outside_a_loop_can_be_read_and_dropped_inside_one() -> None:
    import gc

    run = whilst.imap(double, range(1000), mode="threads")
    assert next(run).value == 0

    async def main() -> list[int]:
        nonlocal run
        second = next(run).value  # the outer loop is blocked meanwhile, as with any sync call
        del run
        gc.collect()
        return [second, *whilst.map(double, range(3))]

    assert asyncio.run(main()) == [2, 0, 2, 4]


@pytest.mark.parametrize("form", ["amap", "aimap"])
def test_a_timeout_around_an_async_form_cancels_the_run_at_once(form: str) -> None:
    # A cancellation of the awaiting task is no stop signal: no grace, the run
    # is cancelled and the cancellation (here, the timeout) goes on to the caller.
    cleaned: list[int] = []

    async def slow(x: float) -> float:
        try:
            await asyncio.sleep(x)
        finally:
            cleaned.append(1)
        return x

    async def main() -> None:
        async with asyncio.timeout(0.2):
            if form == "amap":
                await whilst.amap(slow, [5, 5], grace=10)
            else:
                async with whilst.aimap(slow, [5, 5], grace=10) as run:
                    async for _ in run:
                        pass

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(main())
    assert time.monotonic() - started < 2
    assert cleaned == [1, 1]  # the running tasks were cancelled, their finally ran


def test_messages_from_a_review_read_well() -> None:
    with pytest.raises(TypeError, match="ordered= is for imap and aimap"):
        whilst.map(double, [1], ordered=False)  # type: ignore[call-arg]

    def empty(x: int) -> int:
        raise ValueError

    with pytest.raises(whilst.TasksFailed, match=r"failed: ValueError\)$"):
        whilst.map(empty, [1], mode="sync")
    assert str(whilst.WorkerCrashed(-9)).endswith("died of signal 9")


class Unshowable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_an_item_whose_repr_raises_is_shown_by_a_placeholder(tmp_path: Path) -> None:
    from whilst._errors import safe_repr

    huge = 10**5000  # repr raises past Python's 4300-digit limit
    assert safe_repr(huge) == safe_repr(-huge) == "<int of 5001 digits>"
    assert safe_repr(Unshowable()) == "<Unshowable object: its repr raised ValueError>"

    def fail(x: Any) -> int:
        raise KeyError("no")

    with pytest.raises(whilst.TasksFailed, match="item <int of 5001 digits>") as caught:
        whilst.map(fail, [huge, Unshowable()], mode="threads")
    assert len(caught.value.results) == 2
    page, trace, db = tmp_path / "run.html", tmp_path / "run.json", tmp_path / "run.db"
    values = whilst.map(
        lambda x: 1, [huge, Unshowable()], mode="threads", report=page, trace=trace, journal=db
    )
    assert values == [1, 1]
    assert "int of 5001 digits" in page.read_text()
    assert "its repr raised ValueError" in trace.read_text()
    assert [r.item for r in whilst.Journal(db)] == [safe_repr(huge), safe_repr(Unshowable())]


def test_tasks_failed_names_the_failure_a_halt_met_not_a_task_it_cancelled() -> None:
    async def task(x: int) -> None:
        if x == 3:
            raise ValueError("boom")
        await asyncio.sleep(5)

    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(task, range(4), mode="async", halt="now,fail=1")
    assert "(first: task 3, item 3, failed: ValueError: boom;" in str(caught.value)


def test_a_summary_of_tiny_tasks_shows_a_mean_concurrency_below_a_tenth_as_it_is() -> None:
    with whilst.imap(abs, range(10)) as run:
        list(run)
    summary = run.summary
    assert summary is not None
    tiny = dataclasses.replace(summary, task_time=0.0042, wall=1.0)
    assert "mean 0.0042," in str(tiny)  # not "0.0": none at all
    assert "mean <0.001," in str(dataclasses.replace(summary, task_time=1e-7, wall=1.0))


def test_map_inside_a_loop_on_things_of_that_loop_says_to_await_amap() -> None:
    """The notebook case: a task using the caller's session failed with asyncio's
    'attached to a different loop', naming whilst's internals, and no way out."""

    async def main() -> list[whilst.TasksFailed]:
        fut = asyncio.get_running_loop().create_future()  # of the caller's loop
        event = asyncio.Event()
        with contextlib.suppress(TimeoutError):  # a wait binds it to this loop
            await asyncio.wait_for(event.wait(), 0.001)

        async def use(x: int) -> int:
            return await fut  # type: ignore[no-any-return]

        async def wait(x: int) -> int:  # "is bound to a different event loop"
            await event.wait()
            return x

        failed = []
        for fn in (use, wait):
            with pytest.raises(whilst.TasksFailed) as caught:
                whilst.map(lambda x, fn=fn: fn(x), range(2))  # type: ignore[misc]
            failed.append(caught.value)
        return failed

    for failed in asyncio.run(main()):
        assert any("use await whilst.amap(...)" in note for note in failed.__notes__)


def test_an_aimap_read_by_two_tasks_at_once_says_so() -> None:
    """The second reader's wait replaced the first's, which then waited for ever."""

    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async def main() -> list[object]:
        run = whilst.aimap(slow, range(10))

        async def read() -> list[int]:
            return [r.index async for r in run]

        both = asyncio.gather(read(), read(), return_exceptions=True)
        return await asyncio.wait_for(both, 20)

    first, second = asyncio.run(main())
    assert isinstance(second, RuntimeError)
    assert "is being read already, by another task" in str(second)
    assert first == list(range(10))
