"""``mode="dask"`` on real Dask clusters: a LocalCluster of worker processes, and a
scheduler and two workers started as separate processes on 127.0.0.1 (issue 8)."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import whilst
from whilst import Status

pytest.importorskip("distributed", reason="mode='dask' needs: pip install 'whilst[dask]'")

DASK = str(Path(sys.executable).with_name("dask"))


def square(x: int) -> int:
    if x == 13:
        raise ValueError("unlucky")
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.02)
    return x * x


def slow_square_where(x: int) -> tuple[int, str]:
    """The square, and the address of the worker that computed it."""
    from distributed import get_worker

    return slow_square(x), get_worker().address


def pid(_: object) -> int:
    return os.getpid()


def test_a_local_cluster_runs_every_item_in_order_with_a_lane_per_worker() -> None:
    run = whilst.imap(square, range(200), mode="dask", limit=4)
    results = list(run)
    assert [r.index for r in results] == list(range(200))
    assert results[13].status is Status.FAILED
    assert "unlucky" in str(results[13].error)
    assert all(r.value == r.index**2 for r in results if r.index != 13)
    workers = {r.worker for r in results}
    assert len(workers) == 2
    assert all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert run.summary is not None
    assert run.summary.mode == "dask"


def hang_once(x: int) -> int:
    time.sleep(5 if x == 0 else 0.01)
    return x


def test_a_timed_out_attempt_is_cancelled_on_the_cluster() -> None:
    """The cancel is sent (on an asynchronous client, Future.cancel returns a
    coroutine: dropped, it was never sent)."""
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        results = list(whilst.imap(hang_once, range(3), mode="dask", timeout=1))
        gc.collect()
    assert [r.status for r in results] == [Status.TIMED_OUT, Status.OK, Status.OK]
    assert [str(w.message) for w in seen if "never awaited" in str(w.message)] == []


def hang_first(x: int) -> int:
    time.sleep(30 if x == 0 else 0.3)
    return x


def test_tasks_go_around_a_worker_a_timed_out_task_still_holds() -> None:
    """Dask cannot stop the thread of a task that timed out: tasks sent on to its
    worker would wait behind it and time out unstarted, one after another."""
    started = time.monotonic()
    results = list(whilst.imap(hang_first, range(12), mode="dask", limit=2, timeout=1.5))
    assert [r.status for r in results] == [Status.TIMED_OUT] + [Status.OK] * 11
    assert time.monotonic() - started < 20  # not waiting for the hung task


def sleep_10(x: int) -> int:
    time.sleep(10)
    return x


def test_timeouts_act_at_once_with_the_callers_synchronous_client() -> None:
    """A batch of a synchronous Client's waits without holding one of the loop's few
    threads: 8 timed out at once took 10 s, the tasks' whole time, when their waits
    held every thread the clean-up needed."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=8, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        started = time.monotonic()
        results = list(
            whilst.imap(sleep_10, range(8), mode="dask", cluster=client, limit=8, timeout=1)
        )
        assert time.monotonic() - started < 6
    assert [r.status for r in results] == [Status.TIMED_OUT] * 8


def kill_worker_at_1(x: int) -> int:
    time.sleep(0.1)
    if x == 1:
        os._exit(1)
    return x


def test_a_task_that_kills_its_worker_ends_crashed_and_the_others_ok() -> None:
    """Dask tries it on other workers (killing them too) until it gives up. Tasks
    pinned to a worker that died waited forever, even loosely pinned, and with
    them the run."""
    started = time.monotonic()
    results = list(whilst.imap(kill_worker_at_1, range(3), mode="dask"))
    assert [r.status for r in results] == [Status.OK, Status.CRASHED, Status.OK]
    assert time.monotonic() - started < 60


def test_retries_and_the_journal_work_across_the_cluster(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(square, range(20), mode="dask", limit=2, retries=1, backoff=0, journal=db)
    with sqlite3.connect(db) as ro:
        rows = dict(ro.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
        attempts = ro.execute("SELECT attempts FROM tasks WHERE idx = 13").fetchone()[0]
    assert rows == {"ok": 19, "failed": 1}
    assert attempts == 2
    run = whilst.imap(square, range(20), mode="dask", limit=2, journal=db)
    statuses = [r.status for r in run]
    assert statuses.count(Status.SKIPPED) == 19


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """``dask scheduler`` and two ``dask worker`` processes, as on real machines."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "cluster.log", "wb")  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0", "--no-show"],
            stdout=log, stderr=log,
        )
    ]  # fmt: skip
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [DASK, "worker", address, "--nworkers", "1", "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard"],
                stdout=log, stderr=log,
            )
        )  # fmt: skip
    try:
        yield address, procs
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def test_a_scheduler_and_two_workers_started_as_processes(
    cluster: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, _ = cluster
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
    results = list(whilst.imap(slow_square, range(60), mode="dask", cluster=address, limit=4))
    assert [r.value for r in results] == [x * x for x in range(60)]
    assert len({r.worker for r in results}) == 2


def test_a_worker_killed_mid_run_loses_no_result(
    cluster: tuple[str, list[subprocess.Popen[bytes]]],
) -> None:
    address, _ = cluster
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=30)
        worker_pids = list(client.run(os.getpid).values())
    killed = False

    def items() -> Iterator[int]:
        nonlocal killed
        for i in range(200):
            if i == 60 and not killed:
                os.kill(worker_pids[0], signal.SIGKILL)  # one worker dies mid-run
                killed = True
            yield i

    results = list(whilst.imap(slow_square_where, items(), mode="dask", cluster=address, limit=4))
    assert killed
    assert [r.index for r in results] == list(range(200))
    assert all(r.status is Status.OK and r.value[0] == r.index**2 for r in results)
    # Tasks of the lost worker ran again on the other: results name where they ran.
    assert [r.worker for r in results] == [r.value[1] for r in results]


def test_cluster_addresses_off_this_machine_need_tls_or_consent() -> None:
    with pytest.raises(whilst.UsageError, match="tls://"):
        whilst.map(square, [1], mode="dask", cluster="tcp://10.1.2.3:8786")
    with pytest.raises(whilst.UsageError, match="mode='dask'"):
        whilst.map(square, [1], mode="threads", cluster="tcp://127.0.0.1:8786")


def test_the_command_line_takes_mode_dask(tmp_path: Path) -> None:
    (tmp_path / "tools.py").write_text("def double(x):\n    return int(x) * 2\n")
    run = subprocess.run(
        [sys.executable, "-m", "whilst", "call", "-q", "-k", "--mode", "dask",
         "--path", str(tmp_path), "tools:double"],
        input="1\n2\n3\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [re.search(r'"value": (\d+)', line).group(1) for line in run.stdout.splitlines()] == [  # type: ignore[union-attr]
        "2", "4", "6",
    ]  # fmt: skip
