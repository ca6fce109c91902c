"""One contract, every mode: order, limits, errors and results behave the same."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import whilst
from whilst import Status

from conftest import (
    adouble,
    afail_on_three,
    anap,
    double,
    fail_on_three,
    for_mode,
    max_overlap,
    nap,
)


def test_map_returns_values_in_input_order(mode: str) -> None:
    fn = for_mode(mode, double, adouble)
    assert whilst.map(fn, range(200), mode=mode) == [x * 2 for x in range(200)]


def test_map_of_nothing_is_empty(mode: str) -> None:
    assert whilst.map(for_mode(mode, double, adouble), [], mode=mode) == []


def test_imap_yields_one_result_per_item_in_order(mode: str) -> None:
    fn = for_mode(mode, double, adouble)
    results = list(whilst.imap(fn, (x for x in range(100)), mode=mode))
    assert [r.index for r in results] == list(range(100))
    assert [r.item for r in results] == list(range(100))
    assert [r.value for r in results] == [x * 2 for x in range(100)]
    for r in results:
        assert r.ok
        assert r.status is Status.OK
        assert r.error is None
        assert r.attempts == 1
        assert r.mode == mode
        assert r.worker
        assert 0 <= r.duration == r.end - r.start < 60
        assert abs(r.start - time.time()) < 120  # epoch seconds, not a monotonic clock


def test_limit_is_never_exceeded_and_is_used(mode: str) -> None:
    fn = for_mode(mode, nap, anap)
    limit = 1 if mode == "sync" else 3
    results = list(whilst.imap(fn, [0.05] * 12, mode=mode, limit=limit))
    assert all(r.ok for r in results)
    assert max_overlap(results) <= limit  # never exceeded
    assert max_overlap(results) >= min(2, limit)  # and really used (a cold worker may lag)


def test_a_failing_task_is_its_result_and_loses_nothing(mode: str) -> None:
    fn = for_mode(mode, fail_on_three, afail_on_three)
    results = list(whilst.imap(fn, range(8), mode=mode))
    assert [r.ok for r in results] == [i != 3 for i in range(8)]
    bad = results[3]
    assert bad.status is Status.FAILED
    assert isinstance(bad.error, ValueError)
    assert str(bad.error) == "no threes: 3"
    assert bad.value is None


def test_map_raises_tasks_failed_carrying_every_result(mode: str) -> None:
    fn = for_mode(mode, fail_on_three, afail_on_three)
    with pytest.raises(whilst.TasksFailed) as info:
        whilst.map(fn, range(8), mode=mode)
    group = info.value
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, whilst.WhilstError)
    assert [r.value for r in group.results if r.ok] == [0, 1, 2, 4, 5, 6, 7]
    assert [r.index for r in group.failed] == [3]
    assert len(group.exceptions) == 1
    assert isinstance(group.exceptions[0], ValueError)
    assert "1 of 8 tasks failed" in str(group)


def test_except_star_catches_the_task_errors(mode: str) -> None:
    fn = for_mode(mode, fail_on_three, afail_on_three)
    caught = []
    try:
        whilst.map(fn, range(5), mode=mode)
    except* ValueError as group:
        caught.extend(group.exceptions)
    assert [str(e) for e in caught] == ["no threes: 3"]


def test_unordered_yields_as_completed(mode: str) -> None:
    if mode == "sync":
        pytest.skip("sync runs one at a time: completion order is input order")
    fn = for_mode(mode, nap, anap)
    results = list(whilst.imap(fn, [0.6, 0.01, 0.01, 0.01], mode=mode, limit=4, ordered=False))
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    assert results[-1].index == 0


def test_aimap_and_amap(mode: str) -> None:
    import asyncio

    fn = for_mode(mode, double, adouble)

    async def main() -> tuple[list[int], list[int]]:
        values = await whilst.amap(fn, range(20), mode=mode)
        streamed = [r.value async for r in whilst.aimap(fn, range(20), mode=mode)]
        return values, streamed

    values, streamed = asyncio.run(main())
    assert values == streamed == [x * 2 for x in range(20)]


def test_sync_forms_work_inside_a_running_loop(mode: str) -> None:
    import asyncio

    fn = for_mode(mode, double, adouble)

    async def cell() -> tuple[list[int], list[int]]:  # a notebook cell
        return whilst.map(fn, range(10), mode=mode), [
            r.value for r in whilst.imap(fn, range(10), mode=mode)
        ]

    values, streamed = asyncio.run(cell())
    assert values == streamed == [x * 2 for x in range(10)]


def test_where_each_mode_runs() -> None:
    here = threading.get_ident()

    def ident(_: int) -> int:
        return threading.get_ident()

    async def aident(_: int) -> int:
        return threading.get_ident()

    assert set(whilst.map(ident, range(5), mode="sync")) == {here}
    assert set(whilst.map(aident, range(5), mode="async")) == {here}
    threads = whilst.map(ident, range(50), mode="threads", limit=4)
    assert here not in threads
    assert 1 < len(set(threads)) <= 4


def test_processes_run_in_other_processes() -> None:
    pids = whilst.map(lambda _: os.getpid(), range(40), mode="processes", limit=2)
    assert os.getpid() not in pids
    assert 1 <= len(set(pids)) <= 2


def test_a_first_run_in_an_atexit_handler(tmp_path: Path) -> None:
    """whilst's first run may come at exit (an atexit handler flushing work):
    nothing it imports then may need to register for exit itself."""
    script = tmp_path / "at_exit.py"
    script.write_text(
        "import atexit, whilst\n"
        "async def aabs(x):\n"
        "    return abs(x)\n"
        "@atexit.register\n"
        "def at_exit():\n"
        "    for mode in ('sync', 'threads', 'processes'):\n"
        "        print(whilst.map(abs, [-2, -1], mode=mode))\n"
        "    print(whilst.map(aabs, [-2, -1], mode='async'))\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n") == ["[2, 1]"] * 4 + [""]
