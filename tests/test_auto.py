"""Measured ``auto`` (issue 7): the first tasks run in threads with their CPU time
measured; CPU-bound work that can be pickled moves to processes."""

from __future__ import annotations

import threading
import time

import pytest

import whilst
from whilst import Status
from whilst._options import cpu_count

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
