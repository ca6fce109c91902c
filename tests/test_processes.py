"""Processes mode: real worker processes, batching, crashes, coroutines inside workers."""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import whilst
from whilst import Status


def crash_on_three(x: int) -> int:
    time.sleep(0.05)
    if x == 3:
        os._exit(7)
    return x


def test_a_worker_that_dies_fails_only_its_task() -> None:
    results = list(whilst.imap(crash_on_three, range(8), mode="processes", limit=2))
    assert [r.status for r in results] == [
        Status.CRASHED if i == 3 else Status.OK for i in range(8)
    ]
    error = results[3].error
    assert isinstance(error, whilst.WorkerCrashed)
    assert error.exitcode == 7
    assert "exit code 7" in str(error)
    assert [r.value for r in results if r.ok] == [0, 1, 2, 4, 5, 6, 7]
    dead = results[3].worker  # the worker that died, not the one that replaced it
    assert dead.startswith("pid-")
    assert not psutil.pid_exists(int(dead.removeprefix("pid-")))


SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]


def start_a_sleeper(marker: str) -> str:
    """A task that starts a command and waits for it (or crashes, leaving it)."""
    child = subprocess.Popen([*SLEEPER, marker])
    if marker.endswith("crash"):
        time.sleep(0.2)
        os._exit(3)
    child.wait()
    return marker


def _sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == [*SLEEPER, marker] and p.info["status"] != "zombie":
            found.append(p)
    return found


@pytest.mark.parametrize("how", ["timeout", "crash"])
def test_a_killed_worker_takes_the_processes_its_task_started_with_it(how: str) -> None:
    """A timed-out attempt's worker is killed with its whole process group, so a
    command the task ran does not live on, orphaned (nor one a crashed worker left)."""
    marker = f"{os.getpid()}-{how}"
    results = list(whilst.imap(start_a_sleeper, [marker], mode="processes", timeout=1))
    assert results[0].status is (Status.TIMED_OUT if how == "timeout" else Status.CRASHED)
    deadline = time.monotonic() + 5
    while _sleepers(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _sleepers(marker)
    for p in left:
        p.kill()
    assert not left


def test_tiny_tasks_travel_in_batches() -> None:
    results = list(whilst.imap(abs, range(20_000), mode="processes", limit=2))
    assert [r.value for r in results] == list(range(20_000))
    # Results of one batch share a worker and follow each other without a round trip
    # between them: far fewer distinct (worker, start) runs than tasks.
    workers = {r.worker for r in results}
    assert 1 <= len(workers) <= 2
    switches = sum(1 for a, b in itertools.pairwise(results) if a.worker != b.worker)
    assert switches < 2_000


def test_batches_do_not_swallow_errors() -> None:
    results = list(whilst.imap(reciprocal, range(-500, 500), mode="processes"))
    bad = [r for r in results if not r.ok]
    assert [r.item for r in bad] == [0]
    assert isinstance(bad[0].error, ZeroDivisionError)
    # the worker's traceback travels with the error
    assert "reciprocal" in str(bad[0].error.__cause__)


def reciprocal(x: int) -> float:
    return 1 / x


class CountingClock:
    """``time`` as the workers' batch loop sees it, counting its clock reads."""

    def __init__(self) -> None:
        self.reads = 0

    def time(self) -> float:
        self.reads += 1
        return time.time()


def test_a_plain_map_reads_the_clock_once_a_batch_not_once_a_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clock read costs as much as a tiny task; a map gives values, so no one sees
    a task's own times. Where they are seen (imap, a summary), each task is timed."""
    from whilst._modes import _worker

    clock = CountingClock()
    monkeypatch.setattr(_worker, "time", clock)  # threads run the batch loop in-process
    n = 20_000
    assert whilst.map(abs, range(n), mode="threads", limit=2) == list(range(n))
    assert clock.reads < n / 10
    clock.reads = 0
    assert [r.value for r in whilst.imap(abs, range(n), mode="threads", limit=2)] == list(range(n))
    assert clock.reads >= n
    clock.reads = 0
    whilst.map(abs, range(n), mode="threads", limit=2, summary=True)
    assert clock.reads >= n


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_plain_maps_failures_still_come_with_their_times(mode: str) -> None:
    """Untimed batches keep every value and error in place; their tasks' times are
    equal shares of the batch's, so they still follow each other without a gap."""
    with pytest.raises(whilst.TasksFailed) as info:
        whilst.map(reciprocal, range(-3000, 3000), mode=mode, limit=2)
    results = info.value.results
    assert [r.item for r in results if not r.ok] == [0]
    assert [r.value for r in results if r.ok] == [1 / x for x in range(-3000, 3000) if x]
    t0 = min(r.start for r in results)
    assert all(t0 <= r.start <= r.end < t0 + 60 for r in results)
    for worker in {r.worker for r in results}:  # one after another, as each worker ran them
        ran = sorted((r for r in results if r.worker == worker), key=lambda r: (r.start, r.end))
        assert all(b.start >= a.end for a, b in itertools.pairwise(ran))


def test_a_coroutine_a_task_returns_is_awaited_before_the_next_task_starts() -> None:
    """Whatever the first part takes (a lock, a connection), the coroutine gives
    back before the next task runs: awaited after the batch, this deadlocked."""
    log: list[tuple[str, int]] = []
    gate = threading.BoundedSemaphore(1)

    async def second(x: int) -> int:
        log.append(("async", x))
        gate.release()
        return x

    def first(x: int) -> Any:
        assert gate.acquire(timeout=1), "the coroutine before this task was not awaited"
        log.append(("sync", x))
        return second(x)

    assert whilst.map(first, range(50), mode="threads", limit=1) == list(range(50))
    assert log == [(part, x) for x in range(50) for part in ("sync", "async")]


def test_untimed_batches_run_what_a_lambda_returns_and_keep_errors_in_place() -> None:
    from whilst._modes._worker import run_batch

    async def double(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return 2 * x

    def fn(x: int) -> Any:
        if x == 4:
            raise StopIteration  # a task's error, not the end of the batch
        return double(x) if x % 2 == 0 else x

    timed = run_batch(fn, range(7), lambda e: type(e).__name__)
    start, ends, values, errors = run_batch(fn, range(7), lambda e: type(e).__name__, timed=False)
    assert values == timed[2] == [0, 1, None, 3, None, 5, 12]
    assert errors == timed[3] == {2: "ValueError", 4: "StopIteration"}
    assert len(ends) == 7  # one clock read, the batch's end, for every task
    assert len(set(ends)) == 1
    assert start <= ends[0]


def test_an_untimed_batch_gives_each_task_an_equal_share_of_its_time() -> None:
    from whilst._modes import Outcomes
    from whilst._result import batch_results

    outcomes = Outcomes(100.0, [104.0] * 4, [1, 2, 3, 4], {}, timed=False)
    results = batch_results(10, ["a", "b", "c", "d"], outcomes, "threads", "thread-0")
    assert [(r.index, r.start, r.end) for r in results] == [
        (10, 100.0, 101.0), (11, 101.0, 102.0), (12, 102.0, 103.0), (13, 103.0, 104.0)
    ]  # fmt: skip


async def sleepy(x: float) -> int:
    await asyncio.sleep(x)
    return os.getpid()


@pytest.mark.parametrize("limit", [40, None])
def test_coroutine_functions_run_concurrently_inside_each_worker(limit: int | None) -> None:
    """By default too: the CPU count held them to one a worker (2 at once here)."""
    t0 = time.perf_counter()
    run = whilst.imap(sleepy, [0.3] * 40, mode="processes", limit=limit)
    pids = [r.value for r in run]
    wall = time.perf_counter() - t0
    assert os.getpid() not in pids
    assert len(set(pids)) <= (os.cpu_count() or 1)
    assert wall < 40 * 0.3 / 4  # many at once per worker, not one after another
    assert run.summary is not None
    assert run.summary.limit == (limit or 100)


def test_closures_and_lambdas_travel_by_value() -> None:
    offset = 10

    def add(x: int) -> int:
        return x + offset

    assert whilst.map(add, range(3), mode="processes") == [10, 11, 12]
    assert whilst.map(lambda x: x * offset, range(3), mode="processes") == [0, 10, 20]


def run_script(path: Path, text: str) -> str:
    """Run ``text`` as a program of its own (it must exit 0): what it printed."""
    path.write_text(text)
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_a_partial_of_a_scripts_function_travels_by_value(tmp_path: Path) -> None:
    """A functools.partial pickles its function by name; one from a script's
    __main__ cannot be imported by a worker, so it travels by value too."""
    out = run_script(
        tmp_path / "script.py",
        "import functools, whilst\n"
        "def scale(x, k):\n"
        "    return x * k\n"
        "if __name__ == '__main__':\n"
        "    print(whilst.map(functools.partial(scale, k=3), [1, 2], mode='processes'))\n",
    )
    assert out == "[3, 6]"


def test_workers_stay_warm_between_runs() -> None:
    first = set(whilst.map(lambda _: os.getpid(), range(4), mode="processes", limit=2))
    second = set(whilst.map(lambda _: os.getpid(), range(4), mode="processes", limit=2))
    assert first & second


def nap_but_the_first(x: int) -> int:
    time.sleep(0 if x == 0 else 0.3)
    return x


def test_workers_outlive_the_thread_that_started_them() -> None:
    """A run's workers are started from whatever thread runs its loop (an imap
    read first in another thread, a run in ``asyncio.to_thread``, a notebook's
    helper thread); they must not die with that thread."""
    run = whilst.imap(nap_but_the_first, range(6), mode="processes", limit=2)
    reader = threading.Thread(target=lambda: next(run))
    reader.start()
    reader.join()  # the thread that started the workers has ended
    assert [(r.index, r.status) for r in run] == [(i, Status.OK) for i in range(1, 6)]


def test_workers_die_with_a_runner_killed_by_sigkill(tmp_path: Path) -> None:
    """No finally runs in a runner killed -9: its workers stop by themselves, and
    with them what their tasks started."""
    marker = f"{os.getpid()}-runner-killed"
    script = tmp_path / "runner.py"
    script.write_text(
        "import subprocess, sys, whilst\n"
        "def task(marker):\n"
        f"    subprocess.run({SLEEPER!r} + [marker])\n"
        "whilst.map(task, [sys.argv[1]] * 2, mode='processes', limit=2)\n"
    )
    runner = subprocess.Popen([sys.executable, str(script), marker])
    deadline = time.monotonic() + 30
    while len(_sleepers(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(runner.pid).children()
    assert len(workers) == 2
    assert len(_sleepers(marker)) == 2
    runner.kill()
    runner.wait()
    deadline = time.monotonic() + 5
    while (
        _sleepers(marker) or any(w.is_running() and w.status() != "zombie" for w in workers)
    ) and (time.monotonic() < deadline):
        time.sleep(0.05)
    left = _sleepers(marker) + [w for w in workers if w.is_running() and w.status() != "zombie"]
    for p in left:
        p.kill()
    assert not left


def fork_then_die(path: str) -> None:
    """Leaves a forked copy of the worker (no exec: it keeps every pipe) asleep,
    then kills the worker."""
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    Path(path).write_text(str(child))
    os._exit(3)


def test_a_worker_that_dies_is_noticed_while_a_fork_it_left_holds_its_pipes(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "forked"
    started = time.monotonic()
    results = list(whilst.imap(fork_then_die, [str(pid_file)], mode="processes"))
    assert time.monotonic() - started < 10  # not the 30 s the fork sleeps
    assert results[0].status is Status.CRASHED
    forked = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(forked) and psutil.Process(forked).status() != "zombie":
        if time.monotonic() > deadline:
            os.kill(forked, 9)
            pytest.fail("the fork the worker left lives on")
        time.sleep(0.05)


class NeedsTwo(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)


def unreadable_on_some(x: int) -> Any:
    """Values whose pickle cannot be rebuilt in the parent (NeedsTwo's args)."""
    if x == 2:
        return NeedsTwo("a", "b")
    if x == 5:
        return [1, {"k": NeedsTwo("a", "b")}]
    return x


def test_a_value_that_cannot_be_rebuilt_here_fails_only_its_task() -> None:
    results = list(whilst.imap(unreadable_on_some, range(3000), mode="processes"))
    assert [r.index for r in results if not r.ok] == [2, 5]
    assert all(r.status is Status.FAILED for r in results if r.index in (2, 5))
    assert "cannot be rebuilt" in str(results[5].error)
    assert "missing 1 required positional argument" in str(results[5].error)
    assert [r.value for r in results if r.ok] == [x for x in range(3000) if x not in (2, 5)]


def test_a_scripts_own_classes_travel_as_items_and_values(tmp_path: Path) -> None:
    """Items and values of a class defined in the script (its __main__, which a
    worker cannot import) go by value, as its functions do; auto moves them too."""
    out = run_script(
        tmp_path / "script.py",
        "import dataclasses, whilst\n"
        "@dataclasses.dataclass\n"
        "class Job:\n"
        "    n: int\n"
        "def double(job):\n"
        "    return Job(job.n * 2)\n"
        "jobs = [Job(i) for i in range(300)]\n"
        "out = whilst.map(double, jobs, mode='processes')\n"
        "assert out == [Job(i * 2) for i in range(300)] and type(out[0]) is Job\n"
        "print('ok')\n",
    )
    assert out == "ok"


def test_a_spawned_multiprocessing_child_sends_its_scripts_functions(tmp_path: Path) -> None:
    """In a spawn (or forkserver) child the script is ``__mp_main__``."""
    out = run_script(
        tmp_path / "script.py",
        "import multiprocessing, whilst\n"
        "def square(x):\n"
        "    return x * x\n"
        "def child(n):\n"
        "    return whilst.map(square, range(n), mode='processes', limit=2)\n"
        "if __name__ == '__main__':\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        print(pool.map(child, [4]))\n",
    )
    assert out == "[[0, 1, 4, 9]]"


def test_a_forked_child_that_leaves_a_run_open_stops_none_of_the_parents(
    tmp_path: Path,
) -> None:
    """A child forked in the middle of an imap inherits the open run; its exit
    must neither stop the parent's workers nor touch the parent's event loop."""
    out = run_script(
        tmp_path / "fork_mid_run.py",
        "import os, sys, time, whilst\n"
        "def work(x):\n"
        "    time.sleep(0.01 if x == 0 else 0.3)\n"
        "    return x\n"
        "if __name__ == '__main__':\n"
        "    got = []\n"
        "    for r in whilst.imap(work, range(6), mode='processes', limit=2):\n"
        "        got.append((r.index, r.status.value))\n"
        "        if r.index == 0:\n"
        "            child = os.fork()\n"
        "            if child == 0:\n"
        "                sys.exit(0)  # leaves the run open: its finally blocks run\n"
        "            os.waitpid(child, 0)\n"
        "    print(got)\n",
    )
    assert out == str([(i, "ok") for i in range(6)])


def test_close_from_another_thread_ends_the_readers_loop_at_once() -> None:
    """``run.close()`` from another thread while the reader waits for a result:
    the reader's loop ends (no error), the tasks running are stopped."""
    run = whilst.imap(nap_long, range(10), mode="processes", limit=2)
    closer = threading.Timer(0.3, run.close)
    closer.start()
    started = time.monotonic()
    assert list(run) == []
    assert time.monotonic() - started < 2.5
    closer.join()
    assert run.summary is not None  # of what it took: nothing had ended
    assert run.summary.total == 0


def nap_long(x: int) -> int:
    time.sleep(5)
    return x


def where_and_what(_: object) -> tuple[str, str | None]:
    return os.getcwd(), os.environ.get("WHILST_TEST_VAR")


def test_warm_workers_take_each_runs_directory_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a thread would: a worker kept from an earlier run sees the caller's
    working directory and environment as they are now."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        monkeypatch.setenv("WHILST_TEST_VAR", name)
        assert whilst.map(where_and_what, [0], mode="processes", limit=1) == [
            (str(tmp_path / name), name)
        ]
    monkeypatch.delenv("WHILST_TEST_VAR")
    assert whilst.map(where_and_what, [0], mode="processes", limit=1)[0][1] is None


@pytest.mark.parametrize("exit", ["os._exit(0)", "sys.exit(0)"])
def test_a_forked_child_leaves_the_parents_warm_workers_alone(tmp_path: Path, exit: str) -> None:
    """A child forked after a run (a pre-fork server, multiprocessing's fork) gets
    workers of its own, and neither its runs nor its exit stop the parent's."""
    out = run_script(
        tmp_path / "fork.py",
        "import os, sys, whilst\n"
        "def ppid(_):\n"
        "    return os.getppid()\n"
        "def pid(_):\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    before = whilst.map(pid, range(1), mode='processes', limit=1)\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        assert set(whilst.map(ppid, range(50), mode='processes')) == {os.getpid()}\n"
        f"        {exit}\n"
        "    assert os.waitpid(child, 0)[1] == 0\n"
        "    after = whilst.map(pid, range(1), mode='processes', limit=1)\n"
        "    print(before == after)\n",
    )
    assert out == "True"  # the same warm worker, alive


@pytest.mark.parametrize("limit", [1, 3])
def test_limit_is_the_number_of_workers(limit: int) -> None:
    pids = whilst.map(
        lambda _: (time.sleep(0.05), os.getpid())[1], range(12), limit=limit, mode="processes"
    )
    assert len(set(pids)) == limit


async def echo(x: str) -> str:
    await asyncio.sleep(0.01)
    return x


def test_big_items_and_values_never_deadlock_the_pipes() -> None:
    # 400 tasks of 20 kB in flight at once both ways: far more than a pipe holds.
    big = ["x" * 20_000] * 400
    assert whilst.map(echo, big, mode="processes", limit=400) == big
    huge = ["y" * 1_000_000] * 6
    assert whilst.map(str.upper, huge, mode="processes") == [s.upper() for s in huge]


def die_on_777(x: int) -> int:
    if x == 777:
        os._exit(3)
    return x


def test_a_crash_inside_a_batch_of_tiny_tasks_fails_only_its_task() -> None:
    results = list(whilst.imap(die_on_777, range(5_000), mode="processes", limit=2))
    crashed = [r for r in results if not r.ok]
    assert [r.index for r in crashed] == [777]
    assert crashed[0].status is Status.CRASHED
    assert [r.value for r in results if r.ok] == [x for x in range(5_000) if x != 777]


def pid_unless_777(x: int) -> int:
    if x == 777:
        os._exit(3)
    return os.getpid()


def test_results_after_a_crash_name_the_worker_that_ran_them() -> None:
    """The tasks a crash caught run again, one at a time, on a new worker: their
    results name it, not the dead one (so the timeline puts them where they ran)."""
    results = list(whilst.imap(pid_unless_777, range(5_000), mode="processes", limit=2))
    ok = [r for r in results if r.ok]
    assert len(ok) == 4_999
    assert [r for r in ok if r.worker != f"pid-{r.value}"] == []
    dead = results[777].worker
    assert not psutil.pid_exists(int(dead.removeprefix("pid-")))


def pid_failing_once(x: int, marks: str) -> int:
    """Every tenth item fails its first attempt; the retry of 500 kills its worker."""
    mark = os.path.join(marks, str(x))
    if x % 10 == 0 and not os.path.exists(mark):
        open(mark, "w").close()
        raise ValueError("first attempt")
    if x == 500:
        os._exit(3)
    return os.getpid()


def test_retried_tasks_after_a_crash_name_the_worker_that_ran_them(tmp_path: Path) -> None:
    fn = functools.partial(pid_failing_once, marks=str(tmp_path))
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(fn, range(2_000), mode="processes", limit=2, retries=3, backoff=0.0)
    results = caught.value.results
    assert [r.index for r in results if not r.ok] == [500]
    assert [r for r in results if r.ok and r.worker != f"pid-{r.value}"] == []


async def apid_unless_bad(x: int) -> int:
    await asyncio.sleep(0.0005 * (x % 5))
    if x in (5, 77, 300):
        os._exit(3)
    return os.getpid()


def test_coroutines_with_a_policy_after_a_crash_name_the_worker_that_ran_them() -> None:
    """Coroutines share a worker; those a crash caught run again alone on another
    worker, and their results (one attempt each, as a policy runs them) name it."""
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(apid_unless_bad, range(600), mode="processes", limit=4, retries=2)
    results = caught.value.results
    assert [r.index for r in results if not r.ok] == [5, 77, 300]
    assert [r for r in results if r.ok and r.worker != f"pid-{r.value}"] == []


SLOW_ONES = {3000, 3004, 3008}


def slow_among_tiny(x: int) -> int:
    if x in SLOW_ONES:
        time.sleep(0.4)
    return x


def test_slow_tasks_batched_among_tiny_ones_run_side_by_side() -> None:
    """Tiny tasks travel in batches; slow ones in one batch must not run one after
    another (holding up their batch-mates) while other workers sit idle: an idle
    slot asks the busy worker for the items it has not started. Without that, the
    three ran one after another in one worker."""
    items = range(4000)
    results = list(whilst.imap(slow_among_tiny, items, mode="processes", limit=4))
    assert [r.value for r in results] == list(items)
    slow = [results[x] for x in sorted(SLOW_ONES)]
    t0 = min(r.start for r in results)
    seen = [(r.index, r.worker, round(r.start - t0, 3), round(r.end - t0, 3)) for r in slow]
    assert len({r.worker for r in slow}) == 3, seen
    assert max(r.start for r in slow) < min(r.end for r in slow), seen  # all three at once


def slow_at_3000(x: int) -> int:
    if x == 3000:
        time.sleep(0.5)
    return x


def test_an_ordered_imap_waiting_on_a_slow_first_task_reads_little_ahead() -> None:
    """Batches of items taken back from the slow task's batch ran one or two items
    each, but were sized as full ones: batch sizes (and the results held behind
    the slow one) grew eightfold a round, to thousands of 1 ms tasks read ahead."""
    read = 0

    def items() -> Any:
        nonlocal read
        for i in itertools.count():
            read += 1
            yield i

    def task(x: int) -> int:
        time.sleep(1.0 if x == 0 else 0.001)
        return x

    with whilst.imap(task, items(), mode="threads", limit=4) as run:
        assert next(run).index == 0
    assert read < 1000  # (about 250 here; it was 8,000)


def test_a_batch_queued_behind_a_slow_task_is_given_back_whole() -> None:
    """A slot keeps a second batch queued at its worker while tiny tasks run; when
    the worker is stuck on a slow task, that whole queued batch is given back too,
    not left to wait for it (it was, in 4 runs of 6, 338-500 tasks at a time)."""
    results = list(whilst.imap(slow_at_3000, range(4000), mode="processes", limit=2))
    slow = results[3000]
    held_up = [r.index for r in results if r.worker == slow.worker and r.start >= slow.end]
    assert held_up == []


def log_and_crash(x: int, log: str, crash: int) -> int:
    if x == crash:
        time.sleep(0.5)  # while the rest of its batch is taken back
        os._exit(3)
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return x


def test_items_taken_back_from_a_batch_that_then_crashes_run_once(tmp_path: Path) -> None:
    """A worker dies after giving back the rest of its batch: what it gave back runs
    once, elsewhere; the crash reruns only what the worker kept, one at a time."""
    log = tmp_path / "ran.log"
    fn = functools.partial(log_and_crash, log=str(log), crash=3000)
    results = list(whilst.imap(fn, range(4000), mode="processes", limit=4))
    assert [r.index for r in results if not r.ok] == [3000]
    assert results[3000].status is Status.CRASHED
    ran = collections.Counter(int(line) for line in log.read_text().split())
    assert all(ran[x] == 1 for x in range(3001, 4000))  # none twice, none lost
    assert set(ran) == set(range(4000)) - {3000}


def slow_at_1000(x: int) -> int:
    time.sleep(0.5 if x == 1000 else 0.001)
    return x


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_an_ordered_imap_never_waits_on_a_batch_its_own_slot_holds(mode: str) -> None:
    # One slow task holds the next index back; the other slot fills the window with
    # early results while its own finished batch, the one the reader waits for,
    # was still in flight: it must hand that batch over rather than wait for room.
    started = time.monotonic()
    results = list(whilst.imap(slow_at_1000, range(5000), mode=mode, limit=2))
    assert [r.value for r in results] == list(range(5000))
    assert time.monotonic() - started < 60


WORKER_ORPHANED = """
import os, pickle, sys
from whilst._modes import _worker

tasks, to_worker = os.pipe()
from_worker, results = os.pipe()
os.close(from_worker)  # the parent is gone: killed with -9
fn = (sys.path, pickle.dumps(abs), os.getcwd(), dict(os.environ), True)
for frame in ((_worker.FN, 0, fn), (_worker.RUN, 1, [-1, -2])):
    _worker.write_frame(to_worker, pickle.dumps(frame))
os.close(to_worker)
control, _ = os.pipe()  # (its other end kept open: closed, the worker kills its group)
_worker.main(tasks, results, os.getppid(), control)
print("ended quietly")
"""


def test_a_worker_whose_parent_is_gone_ends_quietly() -> None:
    """Its result cannot go out (a broken pipe): no traceback on the program's stderr."""
    run = subprocess.run(
        [sys.executable, "-c", WORKER_ORPHANED], capture_output=True, text=True, timeout=60
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "ended quietly\n", "")


SCRIPT_ERROR = """\
import traceback, whilst

def helper(x):
    return 1 / (x - 2)

def f(x):
    return helper(x)

try:
    whilst.map(f, range(4), mode="processes")
except whilst.TasksFailed as failed:
    print("".join(traceback.format_exception(failed.results[2].error.__cause__)))
"""


def test_a_worker_traceback_names_the_scripts_file_and_lines(tmp_path: Path) -> None:
    """A script's function travels by value (cloudpickle), which named its code
    <dynamic-code>: no file, no source line. And whilst's own frame came first."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT_ERROR)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert f'File "{script}", line 7, in f' in run.stdout
    assert f'File "{script}", line 4, in helper' in run.stdout
    assert "return 1 / (x - 2)" in run.stdout
    assert "<dynamic-code>" not in run.stdout
    assert "_worker.py" not in run.stdout
