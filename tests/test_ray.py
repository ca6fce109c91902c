"""``mode="ray"`` on a real Ray started on this machine (issue 8)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import whilst
from whilst import Status

ray = pytest.importorskip("ray", reason="mode='ray' needs: pip install 'whilst[ray]'")


def square(x: int) -> int:
    if x == 13:
        raise ValueError("unlucky")
    return x * x


def slow(x: int) -> int:
    time.sleep(30 if x == 0 else 0.02)
    return x


def pid(_: object) -> int:
    return os.getpid()


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_every_item_in_order_with_failures_kept(tmp_path: Path) -> None:
    run = whilst.imap(square, range(300), mode="ray", limit=2)
    results = list(run)
    assert [r.index for r in results] == list(range(300))
    assert results[13].status is Status.FAILED
    assert "unlucky" in str(results[13].error)
    assert all(r.value == r.index**2 for r in results if r.index != 13)
    assert run.summary is not None
    assert run.summary.mode == "ray"


def test_retries_and_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(square, range(20), mode="ray", limit=2, retries=1, backoff=0, journal=db)
    with sqlite3.connect(db) as ro:
        attempts = ro.execute("SELECT attempts FROM tasks WHERE idx = 13").fetchone()[0]
    assert attempts == 2
    statuses = [r.status for r in whilst.imap(square, range(20), mode="ray", journal=db)]
    assert statuses.count(Status.SKIPPED) == 19


def test_results_name_the_ray_worker_process_that_ran_them() -> None:
    results = list(whilst.imap(pid, range(40), mode="ray", limit=2))
    assert [r.worker for r in results] == [f"ray-pid-{r.value}" for r in results]


def test_a_timeout_kills_the_ray_worker_running_it() -> None:
    started = time.monotonic()
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(slow, range(6), mode="ray", limit=2, timeout=1)
    assert time.monotonic() - started < 20
    assert [(r.index, r.status) for r in caught.value.failed] == [(0, Status.TIMED_OUT)]


def test_a_worker_killed_mid_run_loses_no_result() -> None:
    worker = whilst.map(pid, [0], mode="ray")[0]
    killed = False

    def items() -> Iterator[int]:
        nonlocal killed
        for i in range(1, 120):
            if i == 40 and not killed:
                os.kill(worker, signal.SIGKILL)
                killed = True
            yield i

    results = list(whilst.imap(slow, items(), mode="ray", limit=2))
    assert killed
    assert [r.index for r in results] == list(range(119))
    assert all(r.status is Status.OK for r in results)
