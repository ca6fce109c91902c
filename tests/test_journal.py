"""The journal: a run that dies half way loses nothing and redoes nothing
(reliability.md, "Journal and resume", and 28)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import enum
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import whilst
from whilst import Status


def counted(path: Path) -> Counter[str]:
    """How many times each task ran, from the counter file tasks append to."""
    if not path.exists():
        return Counter()
    return Counter(path.read_text().split())


def make_task(counter: Path, failing: set[int] = frozenset()) -> Any:  # type: ignore[assignment]
    def task(x: int) -> dict[str, int]:
        with open(counter, "a") as f:  # O_APPEND: one line per run of a task
            f.write(f"{x}\n")
        if x in failing:
            raise ValueError(f"no {x}")
        return {"square": x * x}

    task.__qualname__ = "task"
    return task


def test_a_rerun_runs_only_what_failed_and_returns_every_value(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"
    failing = set(range(0, 100, 10))
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(make_task(counter, failing), range(100), journal=db)
    assert len(caught.value.failed) == 10
    assert os.stat(db).st_mode & 0o777 == 0o600

    values = whilst.map(make_task(counter), range(100), journal=db)
    assert values == [{"square": x * x} for x in range(100)]
    runs = counted(counter)
    assert {k for k, n in runs.items() if n == 2} == {str(x) for x in failing}
    assert sum(runs.values()) == 110

    run = whilst.imap(make_task(counter), range(100), journal=db)
    results = list(run)
    assert all(r.status is Status.SKIPPED and r.ok for r in results)
    assert run.summary is not None
    assert run.summary.counts == {"skipped": 100}
    assert (run.summary.ran, run.summary.skipped) == (0, 100)
    assert sum(counted(counter).values()) == 110  # nothing ran a third time

    run = whilst.imap(make_task(counter), range(105), journal=db)
    assert [r.status for r in run][100:] == [Status.OK] * 5
    assert run.summary is not None
    assert (run.summary.ran, run.summary.skipped) == (5, 100)
    assert str(run.summary).startswith("5 ran (5 ok), 100 skipped (done in an earlier run")


def test_resume_unfinished_keeps_failures_as_failures(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(make_task(counter, {3, 7}), range(10), journal=db)
    run = whilst.imap(make_task(counter), range(10), journal=db, resume="unfinished")
    results = list(run)
    assert sum(counted(counter).values()) == 10  # nothing ran again
    assert [r.index for r in results if r.status is Status.FAILED] == [3, 7]
    assert str(results[3].error) == "in an earlier run, ValueError: no 3"
    assert type(results[3].error).__name__ == "EarlierFailure"  # its text, from the journal
    s = run.summary  # given back, not run: no task time of tasks this run never ran
    assert s is not None
    assert (s.ran, s.skipped, s.failed, s.earlier) == (0, 8, 2, {"failed": 2})
    assert str(s).startswith(
        "0 ran (none), 8 skipped (done in an earlier run, from the journal), 2 failed in an "
        "earlier run (from the journal); wall time"
    )
    assert "task time" not in str(s)


def test_resume_none_starts_afresh(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"
    whilst.map(make_task(counter), range(5), journal=db)
    whilst.map(make_task(counter), range(5), journal=db, resume="none")
    assert set(counted(counter).values()) == {2}


def test_identity_is_the_item_not_its_position(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"
    whilst.map(make_task(counter), [10, 20, 30], journal=db)
    values = whilst.map(make_task(counter), [5, 30, 20, 10], journal=db)  # reordered, one new
    assert values == [{"square": x * x} for x in (5, 30, 20, 10)]
    assert counted(counter) == Counter({"10": 1, "20": 1, "30": 1, "5": 1})


def test_task_id_chooses_the_identity(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"
    whilst.map(make_task(counter), [1, 2, 3], journal=db, task_id=lambda x: x % 2)
    # 1 and 3 share an identity: the second is skipped with the first's value.
    assert sum(counted(counter).values()) == 3  # all ran in the first run
    values = whilst.map(make_task(counter), [3, 4], journal=db, task_id=lambda x: x % 2)
    assert sum(counted(counter).values()) == 3
    assert values[1] == {"square": 4}


def test_a_journal_of_another_function_is_refused_unless_forced(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"
    whilst.map(make_task(counter), range(3), journal=db)

    def other(x: int) -> int:
        return x

    with pytest.raises(whilst.UsageError, match=r"records a run of .*task.*not .*other.*force"):
        whilst.map(other, range(3), journal=db)
    with pytest.raises(whilst.UsageError, match="pass force=True to start it afresh, dropping"):
        whilst.map(other, range(3), journal=db, resume="none")  # ("resume it anyway": no)
    assert whilst.map(other, range(4), journal=db, force=True)[3] == 3


def test_lambdas_are_told_apart_by_their_code(tmp_path: Path) -> None:
    """Every lambda of a module is named <lambda>: a journal of one gave its values
    to another, without a word. The same code resumes; other code is refused."""
    db = tmp_path / "run.db"
    assert whilst.map(lambda x: x * 2, range(3), journal=db) == [0, 2, 4]
    assert whilst.map(lambda x: x * 2, range(4), journal=db) == [0, 2, 4, 6]
    with pytest.raises(whilst.UsageError, match=r"records a run of .*<lambda>#\w+, not "):
        whilst.map(lambda x: x + 100, range(3), journal=db)
    # The same in every process: a set's order follows its strings' hashes
    code = (
        "from whilst._journal import function_name as f; print(f(lambda x: x in {'a', 'b', 'c'}))"
    )
    names = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2", "3", "4")
    }  # fmt: skip
    assert len(names) == 1


def test_partials_are_known_by_the_function_they_wrap(tmp_path: Path) -> None:
    # Every partial was functools:partial: a journal of one gave its values to another.
    db = tmp_path / "run.db"
    assert whilst.map(functools.partial(pow, 2), range(3), journal=db) == [1, 2, 4]
    assert whilst.map(functools.partial(pow, 2), range(4), journal=db) == [1, 2, 4, 8]
    with pytest.raises(whilst.UsageError, match=r"records a run of builtins:pow \(partial\)"):
        whilst.map(functools.partial(max, 2), range(3), journal=db)


def test_a_journal_in_use_is_refused_naming_the_pid(tmp_path: Path) -> None:
    from whilst._journal import JournalWriter

    db = tmp_path / "run.db"
    holder = JournalWriter(db, function="x:task", options={})
    try:
        with pytest.raises(whilst.UsageError, match=f"in use by pid {os.getpid()}"):
            whilst.map(make_task(tmp_path / "count"), range(3), journal=db)
    finally:
        holder.close()
    assert not (tmp_path / "count").exists()  # no task ran


def test_a_run_right_after_a_break_out_of_aimap_gets_its_journal(tmp_path: Path) -> None:
    """``break`` out of ``async for`` stops the run over a few turns of the loop: a
    run started at once on the same journal waits for it, rather than being told
    its own process holds it. One still going on the loop is refused."""
    db = tmp_path / "run.db"

    async def nap(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    async def main() -> list[int]:
        async for _ in whilst.aimap(nap, range(20), journal=db, limit=2):
            break
        async with whilst.aimap(nap, range(20), journal=db, limit=2) as going:
            await anext(going)
            with pytest.raises(whilst.UsageError, match=f"in use by pid {os.getpid()}"):
                await whilst.amap(nap, range(4), journal=db)
        return await whilst.amap(nap, range(4), journal=db)

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [0, 1, 2, 3]


def test_a_file_that_is_not_a_journal_gives_one_clear_sentence(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("hello, this is not SQLite\n")
    with pytest.raises(whilst.UsageError, match="not a whilst journal"):
        whilst.map(make_task(tmp_path / "count"), range(3), journal=db)


def test_an_sqlite_database_of_another_program_is_left_as_it_is(tmp_path: Path) -> None:
    """A user's own database given as the journal: refused, and not changed (no
    whilst tables added, not switched to WAL)."""
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as app, app:
        app.execute("CREATE TABLE t (x)")
    before = db.read_bytes()
    with pytest.raises(whilst.UsageError, match="SQLite file but not a whilst journal"):
        whilst.map(make_task(tmp_path / "count"), range(3), journal=db)
    assert db.read_bytes() == before
    assert not (tmp_path / "count").exists()  # no task ran
    proc = subprocess.run(
        [sys.executable, "-m", "whilst", "run", "-q", "--journal", str(db), "echo", ":::", "a"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (2, "")
    assert "not a whilst journal" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert db.read_bytes() == before


READ_BACK = textwrap.dedent(
    """
    import sys
    import whilst

    print([(r.index, r.value, r.status.value) for r in whilst.Journal(sys.argv[1])])
    """
)


def test_a_journal_is_read_where_its_reader_cannot_write(tmp_path: Path) -> None:
    """Someone else's journal, or one in a read-only folder, is read without being
    written: SQLite's read-only mode, not "attempt to write a readonly database"."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="whilst-ro-"))  # readable by others, unlike tmp_path
    try:
        db = shared / "run.db"
        whilst.map(len, ["a", "bb"], journal=db)
        db.chmod(0o644)
        shared.chmod(0o555)
        command = [sys.executable, "-c", READ_BACK, str(db)]
        if os.geteuid() == 0:  # root writes anywhere: read it as nobody
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv (util-linux) to read as another user")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        probe = [*command[:-3], "-c", "import whilst"]
        if subprocess.run(probe, capture_output=True, env=env, timeout=60).returncode != 0:
            pytest.skip("another user cannot import whilst from where it is installed")
        read = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert read.returncode == 0, read.stderr
        assert read.stdout.strip() == "[(0, 1, 'ok'), (1, 2, 'ok')]"
        # records still in the write-ahead log (a killed run's), with no -shm file
        # beside them: not read as "no records", but one sentence naming the way out
        shared.chmod(0o755)
        (shared / "run.db-wal").write_bytes(b"x" * 4096)
        shared.chmod(0o555)
        read = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert read.returncode == 1
        assert "copy both files to a folder you can write" in read.stderr
    finally:
        shared.chmod(0o755)
        shutil.rmtree(shared)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_a_read_only_journal_gives_one_clear_sentence(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    whilst.map(make_task(tmp_path / "count"), range(3), journal=db)
    db.chmod(0o400)
    with pytest.raises(whilst.UsageError, match="cannot be written"):
        whilst.map(make_task(tmp_path / "count"), range(3), journal=db)


def test_bad_journal_options(tmp_path: Path) -> None:
    with pytest.raises(whilst.UsageError, match="unknown resume 'some'"):
        whilst.map(abs, [1], journal=tmp_path / "j.db", resume="some")
    with pytest.raises(whilst.UsageError, match="need journal="):
        whilst.map(abs, [1], resume="unfinished")
    with pytest.raises(whilst.UsageError, match="need journal="):
        whilst.map(abs, [1], durable=True)


def test_durable_journals_sync_every_commit(tmp_path: Path) -> None:
    from whilst._journal import JournalWriter

    writer = JournalWriter(tmp_path / "run.db", function="m:f", options={}, durable=True)
    try:
        assert writer._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        writer.close()
    assert whilst.map(abs, [-1, -2], journal=tmp_path / "run2.db", durable=True) == [1, 2]


def test_pickled_values_are_restored_only_from_a_private_file(tmp_path: Path) -> None:
    counter, db = tmp_path / "count", tmp_path / "run.db"

    def task(x: int) -> set[int]:
        with open(counter, "a") as f:
            f.write(f"{x}\n")
        return {x}  # a set is not JSON: pickled

    whilst.map(task, range(3), journal=db)
    assert whilst.map(task, range(3), journal=db) == [{0}, {1}, {2}]
    assert sum(counted(counter).values()) == 3
    db.chmod(0o644)  # someone else could have written it now: never unpickle
    [kept] = [r.value for r in whilst.Journal(db) if r.index == 0]
    assert "not loaded from a file others could have written" in repr(kept)  # not None
    with pytest.warns(UserWarning, match=r"not private to you.*run again.*chmod 600") as told:
        assert whilst.map(task, range(3), journal=db) == [{0}, {1}, {2}]
    assert len(told) == 1  # once a run, not a task
    assert sum(counted(counter).values()) == 6  # ran again rather than trusting it
    [unkept] = [r.value for r in whilst.Journal(db) if r.index == 0]
    assert "not kept (not JSON)" in repr(unkept)  # (no pickles in a file not private)


def test_journal_reads_back_every_record(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(make_task(tmp_path / "count", {1}), range(3), journal=db)
    records = list(whilst.Journal(db))
    assert [r.status for r in records] == [Status.OK, Status.FAILED, Status.OK]
    assert records[2].value == {"square": 4}
    assert "no 1" in str(records[1].error)


CRASH = textwrap.dedent(
    """
    import sys, time, whilst

    def task(x):
        with open(sys.argv[2], "a") as f:
            f.write(f"{x}\\n")
        time.sleep(0.01 + (x % 5) * 0.01)
        return x

    whilst.map(task, range(400), mode="threads", limit=8, journal=sys.argv[1])
    """
)


@pytest.mark.parametrize("at", [150, 300])
def test_kill_9_mid_run_then_resume_runs_nothing_recorded_ok_twice(tmp_path: Path, at: int) -> None:
    db, counter = tmp_path / "run.db", tmp_path / "count"
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(db), str(counter)])
    ok_before: set[str] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.02)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
                    n = ro.execute("SELECT count(*) FROM tasks WHERE status = 'ok'").fetchone()[0]
            except sqlite3.Error:
                continue
            if n >= at:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with sqlite3.connect(db) as ro:
            assert ro.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            ok_before = {
                item for (item,) in ro.execute("SELECT item FROM tasks WHERE status = 'ok'")
            }
    finally:
        proc.kill()
    assert len(ok_before) >= at
    subprocess.run([sys.executable, "-c", CRASH, str(db), str(counter)], check=True, timeout=120)
    runs = counted(counter)
    assert set(runs) == {str(x) for x in range(400)}  # every item ran
    assert all(runs[item] == 1 for item in ok_before)  # nothing journaled ok ran again
    with sqlite3.connect(db) as ro:
        assert ro.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = ro.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
    assert rows == [("ok", 400)]


def test_whilst_report_summarises_and_exports_a_journal(tmp_path: Path) -> None:
    import csv
    import json

    from click.testing import CliRunner

    from whilst._cli import cli

    db = tmp_path / "run.db"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(make_task(tmp_path / "count", {2}), range(4), journal=db)
    runner = CliRunner()
    summary = runner.invoke(cli, ["report", str(db)])
    assert summary.exit_code == 0, summary.output
    assert "ok" in summary.output
    assert "ValueError" in summary.output
    lines = runner.invoke(cli, ["report", str(db), "--format", "jsonl"]).output.splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok", "ok", "failed", "ok"]
    rows = list(
        csv.DictReader(
            runner.invoke(cli, ["report", str(db), "--format", "csv"]).output.splitlines()
        )
    )
    assert [row["index"] for row in rows] == ["0", "1", "2", "3"]


def test_whilst_report_exports_strict_json_and_plain_job_text(tmp_path: Path) -> None:
    """JSON lines that other tools read: no NaN (JSON has none), a ``whilst run``
    job as its arguments and its value as fields, bytes as text."""
    import json

    from click.testing import CliRunner

    from whilst._cli import cli

    runner, floats, jobs = CliRunner(), tmp_path / "floats.db", tmp_path / "jobs.db"
    whilst.map(float, ["nan", "-inf", "1.5"], journal=floats)
    lines = runner.invoke(cli, ["report", str(floats), "--format", "jsonl"]).output.splitlines()
    rows = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) for line in lines
    ]
    assert [row["value"] for row in rows] == ["nan", "-inf", 1.5]
    ran = subprocess.run(
        [sys.executable, "-m", "whilst", "run", "-q", "--journal", str(jobs), "echo", ":::", "a b"],
        capture_output=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    (line,) = runner.invoke(cli, ["report", str(jobs), "--format", "jsonl"]).output.splitlines()
    row = json.loads(line)
    assert row["item"] == "'a b'"  # one argument, as a shell reads it
    assert (row["value"]["command"], row["value"]["stdout"]) == ("echo 'a b'", "a b\n")


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


def test_a_summary_neither_unpickles_values_nor_reads_markup_in_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    from click.testing import CliRunner

    from whilst._cli import cli

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "run.db"
    whilst.map(str.upper, ["[red]x[/red]", "y"], journal=db)
    with sqlite3.connect(db) as rw:  # a crafted pickle, as if planted in the file
        rw.execute(
            "UPDATE tasks SET value = ?, value_format = 'pickle', end = start + 5 WHERE item = ?",
            (pickle.dumps(_Boom()), "'y'"),
        )
    out = CliRunner().invoke(cli, ["report", str(db), "--slowest", "2"]).output
    assert "'[red]x[/red]'" in out  # shown as written, not as markup
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [None, b"not sqlite at all", b""])
def test_whilst_report_on_a_non_journal_exits_2_with_one_line(
    tmp_path: Path, content: bytes | None
) -> None:
    from click.testing import CliRunner

    from whilst._cli import cli

    db = tmp_path / "x.db"
    if content is not None:
        db.write_bytes(content)
    result = CliRunner().invoke(cli, ["report", str(db)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "journal" in result.output.splitlines()[-1]


def test_a_run_that_fails_to_start_releases_its_journal(tmp_path: Path) -> None:
    import threading

    db = tmp_path / "run.db"
    lock = threading.Lock()

    def task(x: int) -> int:
        with lock:  # a lock cannot be sent to a worker process
            return x

    with pytest.raises(whilst.UsageTypeError, match="cannot be pickled"):
        whilst.map(task, range(3), mode="processes", journal=db)
    assert whilst.map(task, range(3), mode="threads", journal=db) == [0, 1, 2]


HANG = textwrap.dedent(
    """
    import sys, time, whilst

    def task(x):
        with open(sys.argv[2], "a") as f:
            f.write(f"{x}\\n")
        if sys.argv[3] == "hang" and x >= 2:
            time.sleep(60)
        return x

    whilst.map(task, range(6), mode="threads", limit=3, retries=1, journal=sys.argv[1])
    """
)


def test_tasks_running_when_the_runner_dies_are_interrupted_and_run_again(tmp_path: Path) -> None:
    db, counter = tmp_path / "run.db", tmp_path / "count"
    proc = subprocess.Popen([sys.executable, "-c", HANG, str(db), str(counter), "hang"])
    try:
        deadline = time.monotonic() + 30
        running = 0
        while running < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            with contextlib.suppress(sqlite3.Error), sqlite3.connect(db) as ro:
                running = ro.execute(
                    "SELECT count(*) FROM tasks WHERE status = 'running'"
                ).fetchone()[0]
        assert running == 3  # tasks 2, 3, 4 hang; 0 and 1 are ok
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from whilst._journal import JournalWriter

    JournalWriter(db, function="__main__:task", options={}).close()  # what a resume does first
    with sqlite3.connect(db) as ro:
        statuses = dict(ro.execute("SELECT item, status FROM tasks"))
    assert statuses == {
        "0": "ok",
        "1": "ok",
        "2": "interrupted",
        "3": "interrupted",
        "4": "interrupted",
    }
    subprocess.run(
        [sys.executable, "-c", HANG, str(db), str(counter), "run"], check=True, timeout=60
    )
    runs = counted(counter)
    assert runs == Counter({"0": 1, "1": 1, "2": 2, "3": 2, "4": 2, "5": 1})
    records = {r.index: r for r in whilst.Journal(db)}
    assert all(r.status is Status.OK for r in records.values())
    assert [records[i].attempts for i in (2, 3, 4)] == [1, 1, 1]  # no retry used up


def test_kill_9_at_random_moments_never_corrupts_the_journal(tmp_path: Path) -> None:
    import random

    db, counter = tmp_path / "run.db", tmp_path / "count"
    rng = random.Random(7)
    ok_so_far: set[str] = set()
    runs_when_ok: dict[str, int] = {}
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", CRASH, str(db), str(counter)])
        time.sleep(rng.uniform(0.3, 1.5))  # start-up, opening, mid-run or a commit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not db.exists():
            continue
        with sqlite3.connect(db) as ro:
            assert ro.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            ok_now = {item for (item,) in ro.execute("SELECT item FROM tasks WHERE status = 'ok'")}
        assert ok_so_far <= ok_now  # nothing reported finished went missing
        runs = counted(counter)
        for item in ok_now - ok_so_far:
            runs_when_ok[item] = runs[item]
        ok_so_far = ok_now
    subprocess.run([sys.executable, "-c", CRASH, str(db), str(counter)], check=True, timeout=120)
    runs = counted(counter)
    assert runs_when_ok  # some kills landed mid-run
    assert all(runs[item] == n for item, n in runs_when_ok.items())  # never run again once ok
    with sqlite3.connect(db) as ro:
        assert ro.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert ro.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall() == [
            ("ok", 400)
        ]


def test_no_result_is_handed_out_before_its_record_is_committed(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    async def task(x: int) -> int:
        return x

    with whilst.imap(task, range(3000), journal=db, ordered=False) as run:
        for r in run:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
                row = ro.execute(
                    "SELECT status FROM tasks WHERE idx = ? AND status = 'ok'", (r.index,)
                ).fetchone()
            assert row == ("ok",), r


def test_imap_with_a_journal_it_cannot_open_raises_rather_than_hangs(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("not a journal")
    with pytest.raises(whilst.UsageError, match="not a whilst journal"):
        for _ in whilst.imap(abs, [1], journal=db):
            pass


def test_values_come_back_as_they_were(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    def task(x: int) -> Any:
        return [(1, 2), {1: "a"}, [1, "b"], 3.5][x]

    first = whilst.map(task, range(4), journal=db)
    assert whilst.map(task, range(4), journal=db) == first == [(1, 2), {1: "a"}, [1, "b"], 3.5]
    assert [r.status for r in whilst.imap(task, range(4), journal=db)] == [Status.SKIPPED] * 4


def test_a_failed_copy_never_replaces_an_ok_record(tmp_path: Path) -> None:
    db, counter = tmp_path / "run.db", tmp_path / "count"
    jobs = [("http://a", 0), ("http://a", 1)]

    def task(job: tuple[str, int]) -> int:
        with open(counter, "a") as f:
            f.write(f"{job[1]}\n")
        if job[1]:
            raise ConnectionError(job[0])
        return job[1]

    with pytest.raises(whilst.TasksFailed):
        whilst.map(task, jobs, journal=db, task_id=lambda job: job[0])
    assert whilst.map(task, jobs, journal=db, task_id=lambda job: job[0]) == [0, 0]
    assert sum(counted(counter).values()) == 2  # nothing ran again


def test_after_a_deadline_items_done_earlier_still_come_back_skipped(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    async def task(x: int) -> int:
        await asyncio.sleep(3 if x == -1 else 0)
        return x

    whilst.map(task, range(5), journal=db)
    results = list(whilst.imap(task, [-1, *range(5)], journal=db, limit=1, deadline=0.3))
    assert [r.status for r in results] == [Status.CANCELLED] + [Status.SKIPPED] * 5
    assert [r.value for r in results[1:]] == list(range(5))


def _every_other(counter: Path) -> Any:
    def task(x: int) -> int:
        with open(counter, "a") as f:
            f.write(f"{x}\n")
        return x * 10

    task.__qualname__ = "every_other"
    return task


@pytest.mark.parametrize("mode", ["sync", "async", "threads"])
def test_done_items_scattered_through_the_input_are_skipped_in_batches_too(
    tmp_path: Path, mode: str
) -> None:
    db, counter = tmp_path / "run.db", tmp_path / "count"
    task = _every_other(counter)
    if mode == "async":
        sync_task = task

        async def task(x: int) -> int:  # type: ignore[no-redef]
            return sync_task(x)  # type: ignore[no-any-return]

        task.__qualname__ = "every_other"
    whilst.map(task, range(0, 3000, 2), mode=mode, journal=db)  # the even ones
    assert whilst.map(task, range(3000), mode=mode, journal=db) == [x * 10 for x in range(3000)]
    assert counted(counter) == Counter(str(x) for x in range(3000))  # each ran once
    results = list(whilst.imap(task, range(3000), mode=mode, journal=db))
    assert all(r.status is Status.SKIPPED for r in results)
    assert [r.value for r in results] == [x * 10 for x in range(3000)]


SIGINT_RUN = textwrap.dedent(
    """
    import asyncio, sys, whilst

    async def task(x):
        try:
            await asyncio.sleep(float(sys.argv[2]))
        finally:
            with open(sys.argv[3], "a") as f:
                f.write(f"{x}\\n")
        return x

    print(whilst.map(task, range(20), limit=8, grace=0.5, journal=sys.argv[1]), flush=True)
    """
)


def test_only_tasks_running_for_a_commit_interval_are_marked_running(tmp_path: Path) -> None:
    """Thousands of tiny tasks in flight (batches handed to workers) are written once,
    when they end, not marked ``running`` at every commit first; a task running
    for ``COMMIT_EVERY`` is marked, once."""
    from whilst._journal import COMMIT_EVERY, Journaled, JournalWriter
    from whilst._output import Collect

    db = tmp_path / "run.db"
    writer = JournalWriter(db, function="m:f", options={})
    journal = Journaled(writer, Collect(), on_error=lambda exc: None)
    marks: list[int] = []  # tasks marked at each commit
    commit = writer.commit

    def counted_commit(running: Any = (), mark: str = "running") -> None:
        marks.append(len(running := list(running)))
        commit(running, mark)

    writer.commit = counted_commit  # type: ignore[method-assign]
    for i in range(5000):
        assert journal.admit(i, i) is None
    journal.commit()
    journal.commit()
    time.sleep(COMMIT_EVERY * 1.5)
    journal.commit()  # every task has now run for COMMIT_EVERY
    journal.commit()
    with sqlite3.connect(db) as ro:
        running = ro.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()
    journal.close()
    assert marks == [0, 0, 5000, 0, 5000, 0]  # the close marks them interrupted, then ends
    assert running == (5000,)


def test_ctrl_c_journals_running_tasks_interrupted_and_a_resume_runs_them(tmp_path: Path) -> None:
    """reliability.md 9: nothing new starts, the running tasks are cancelled (their
    finally blocks run), journaled interrupted, the program ends by SIGINT within the
    grace + 1 s (``whilst`` on the command line exits 130: test_cli.py)."""
    db, ended = tmp_path / "run.db", tmp_path / "ended"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_RUN, str(db), "5", str(ended)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT, err  # KeyboardInterrupt: the shell says 130
    assert time.monotonic() - signalled < 0.5 + 1 + 0.5  # grace + 1 s (+ slack to reap)
    assert sorted(counted(ended)) == [str(x) for x in range(8)]  # their finally blocks ran
    with sqlite3.connect(db) as ro:
        assert ro.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(ro.execute("SELECT item, status FROM tasks"))
    assert rows == {str(x): "interrupted" for x in range(8)}
    read = list(whilst.Journal(db))
    assert {r.status for r in read} == {Status.CANCELLED}  # (no such Status: cancelled)
    # Each was cut short as the grace ended, and says so (a task whose run died says
    # "interrupted: its run was stopped while it ran").
    assert str(read[0].error) == "TaskCancelled: the run was interrupted: the task was cancelled"
    # where their time went: each ran one attempt from its start to the stop
    assert {r.attempts for r in read} == {1}
    assert all(r.duration >= 0.5 for r in read), [r.duration for r in read]
    done = subprocess.run(
        [sys.executable, "-c", SIGINT_RUN, str(db), "0", str(ended)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == str(list(range(20)))
    assert counted(ended) == Counter(
        {**{str(x): 2 for x in range(8)}, **{str(x): 1 for x in range(8, 20)}}
    )


KEY_OF = textwrap.dedent(
    """
    import collections
    from whilst._journal import item_key

    Point = collections.namedtuple("Point", "name tags")
    print(item_key({"tags": {"b", "a", "c"}, "n": frozenset({"x", "yy", "zzz"})}))
    print(item_key(Point("p", {"red", "green", "blue"})))  # a tuple subclass, a set inside
    """
)


def test_default_identity_of_an_item_with_sets_is_the_same_in_every_process() -> None:
    keys = {
        subprocess.run(
            [sys.executable, "-c", KEY_OF],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(4)
    }
    assert len(keys) == 1


Pair = collections.namedtuple("Pair", "x y")


def test_items_plain_json_cannot_tell_apart_keep_records_of_their_own(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    items: list[Any] = [{1: "x"}, {"1": "x"}, (1, 2), [1, 2], {1, 2}, frozenset({1, 2})]
    items += [[(1, 2)], [[1, 2]], {"t": [1, 2]}, ((1, 2),), {"d": {"a": 1}}, {"a": 1, "b": [1]}]
    items += [collections.OrderedDict(a=1), {"a": 1}, Pair(1, 2)]  # subclasses are named
    first = whilst.map(repr, items, journal=db)
    assert whilst.map(repr, items, journal=db) == first == [repr(i) for i in items]
    assert [r.status for r in whilst.Journal(db)] == [Status.OK] * len(items)


def as_written_by_schema(db: Path, items: list[Any], version: int) -> None:
    """Rewrite a journal of ``items`` (one record each, in order) as an older
    schema wrote it: that schema's keys, and its number."""
    from whilst._journal import item_key

    with contextlib.closing(sqlite3.connect(db)) as con, con:
        keys = [row[0] for row in con.execute("SELECT key FROM tasks ORDER BY idx")]
        for key, item in zip(keys, items, strict=True):
            con.execute("UPDATE tasks SET key = ? WHERE key = ?", (item_key(item, version), key))
        con.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(version),))


def test_a_schema_1_journal_keeps_its_keys_so_a_resume_finds_its_records(tmp_path: Path) -> None:
    """Journals written before items were typed hashed plain JSON: their records
    are found again (not run twice), and new runs of theirs go on the same way."""
    from whilst._journal import item_key

    db = tmp_path / "run.db"
    ran: list[Any] = []

    def task(x: Any) -> str:
        ran.append(x)
        return repr(x)

    items: list[Any] = [[1, 2], {"a": {3}}, "short"]
    whilst.map(task, items, journal=db)
    as_written_by_schema(db, items, 1)
    assert item_key({"a": {3}}, 1) != item_key({"a": {3}})  # typed keys differ, hence the care
    ran.clear()
    assert whilst.map(task, [*items, (5,)], journal=db) == [repr(i) for i in [*items, (5,)]]
    assert ran == [(5,)]
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == ("1",)
        assert con.execute("SELECT key FROM tasks WHERE idx = 3").fetchone() == (item_key((5,), 1),)


def test_an_item_holding_a_set_of_strings_keeps_its_key_across_hash_seeds(
    tmp_path: Path,
) -> None:
    """An item that is not JSON (a date in it) is known by its pickle, in which a
    set of strings would be in the order of that process's hash seed."""
    db = tmp_path / "run.db"
    script = tmp_path / "run.py"
    script.write_text(
        "import datetime, sys, whilst\n"
        "item = (datetime.date(2020, 1, 1), frozenset({'red', 'green', 'blue', 'cyan'}))\n"
        "print([r.status.value for r in whilst.imap(len, [item], journal=sys.argv[1])])\n"
    )
    statuses = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, str(script), str(db)], capture_output=True, text=True, env=env
        )
        assert run.returncode == 0, run.stderr
        statuses.append(run.stdout.strip())
    assert statuses == ["['ok']", "['skipped']", "['skipped']"]


def test_a_schema_2_journal_keeps_its_keys_so_a_resume_finds_its_records(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    items: list[Any] = [(datetime.date(2020, 1, 1), {"a", "b"}), 7]
    whilst.map(repr, items, journal=db)
    as_written_by_schema(db, items, 2)
    statuses = [r.status for r in whilst.imap(repr, items, journal=db)]
    assert statuses == [Status.SKIPPED, Status.SKIPPED]


def test_items_and_errors_that_are_not_valid_unicode_are_journaled(tmp_path: Path) -> None:
    """A file name with a byte that is not UTF-8 reaches Python as a lone surrogate:
    SQLite refuses such text, and the run must not lose every record for it."""
    db = tmp_path / "run.db"
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    items = ["ok", odd, odd * 40, b"\xff"]

    def task(x: Any) -> int:
        if x == odd:
            raise FileNotFoundError(2, "No such file", x)
        return len(x)

    results = list(whilst.imap(task, items, journal=db))
    assert [r.status for r in results] == [Status.OK, Status.FAILED, Status.OK, Status.OK]
    read = list(whilst.Journal(db))
    assert [r.status for r in read] == [Status.OK, Status.FAILED, Status.OK, Status.OK]
    assert "caf\\udce9" in str(read[1].error)
    assert [r.status for r in whilst.imap(task, items, journal=db)] == [
        Status.SKIPPED,
        Status.FAILED,
        Status.SKIPPED,
        Status.SKIPPED,
    ]


def test_an_item_with_no_stable_identity_fails_asking_for_task_id(tmp_path: Path) -> None:
    import threading

    def task(x: Any) -> int:
        return 1

    lock = threading.Lock()  # cannot be pickled, and its repr names an address
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(task, [lock, 2], mode="threads", journal=tmp_path / "run.db")
    failed = caught.value.failed
    assert [r.index for r in failed] == [0]
    assert "task_id=" in str(failed[0].error)
    assert caught.value.results[1].value == 1
    name = {id(lock): "the lock"}
    values = whilst.map(
        task,
        [lock, 2],
        mode="threads",
        journal=tmp_path / "run.db",
        task_id=lambda x: name.get(id(x), x),
    )
    assert values == [1, 1]


LOCKER = (
    "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(60)"
)


@pytest.mark.parametrize(
    ("mode", "policy"), [("async", {}), ("async", {"retries": 1}), ("threads", {"retries": 1})]
)
def test_a_journal_that_breaks_mid_run_ends_the_run_with_its_error_and_nothing_more(
    tmp_path: Path, mode: str, policy: dict[str, Any]
) -> None:
    """reliability.md 8, and a hang a review found: an ordered imap whose journal
    cannot be written any more raises promptly, starts no new task, and hands
    out no result whose record was not committed."""
    db = tmp_path / "run.db"
    started: list[int] = []

    def work(x: int) -> int:
        started.append(x)
        time.sleep(2 if x == 0 else 0.002)  # item 0 holds the ordered window back
        return x

    async def awork(x: int) -> int:
        started.append(x)
        await asyncio.sleep(2 if x == 0 else 0.002)
        return x

    locker = subprocess.Popen(  # takes the write lock when told to
        [sys.executable, "-c", "import sys; sys.stdin.readline(); " + LOCKER, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert locker.stdin is not None
    assert locker.stdout is not None

    def lock() -> None:
        locker.stdin.write("go\n")  # type: ignore[union-attr]
        locker.stdin.flush()  # type: ignore[union-attr]

    got: list[whilst.Result] = []
    timer = threading.Timer(0.5, lock)
    began = time.monotonic()
    timer.start()
    fn = awork if mode == "async" else work
    try:
        with pytest.raises(whilst.WhilstError, match="could not be written"):
            got.extend(whilst.imap(fn, range(100_000), mode=mode, limit=2, journal=db, **policy))
        assert time.monotonic() - began < 30
        assert len(started) < 10_000  # nothing new started once the journal broke
        locker.kill()
        locker.wait()
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as ro:
            ok = {i for (i,) in ro.execute("SELECT idx FROM tasks WHERE status = 'ok'")}
        assert {r.index for r in got if r.ok} <= ok  # nothing handed out unrecorded
    finally:
        timer.cancel()
        locker.kill()
        locker.communicate()  # and close its pipes


def test_sync_mode_commits_as_it_goes(tmp_path: Path) -> None:
    """The commit timer cannot fire while sync tasks hold the loop: results
    are committed by time as they come, so a kill -9 loses at most a moment."""
    db = tmp_path / "run.db"
    code = (
        "import sys, time, whilst\n"
        "whilst.map(lambda x: time.sleep(0.02), range(500), mode='sync', journal=sys.argv[1])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)])
    time.sleep(2.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as ro:
        done = ro.execute("SELECT count(*) FROM tasks WHERE status = 'ok'").fetchone()[0]
    assert done >= 40  # about 100 ran in 2.5 s (start-up aside); at most 0.2 s unrecorded


def test_resuming_many_done_items_keeps_imap_within_its_window(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    whilst.map(abs, range(20_000), mode="threads", journal=db)
    with whilst.imap(abs, iter(range(20_001)), mode="threads", limit=2, journal=db) as run:
        stream = run._feed.stream
        first = next(run)
        assert first.status is Status.SKIPPED
        assert stream.held <= stream.window  # not 20,000 skipped results at once
        rest = list(run)
    assert [r.status for r in rest][-1] is Status.OK
    assert len(rest) == 20_000


def test_tasks_that_never_started_leave_no_row(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    async def task(x: int) -> int:
        await asyncio.sleep(0.05)
        if x == 5:
            raise ValueError(x)
        return x

    with pytest.raises(whilst.TasksFailed):
        whilst.map(
            task, range(40), limit=4, key=lambda x: "host", per_key=1, halt="now,fail=1", journal=db
        )
    with sqlite3.connect(db) as ro:
        rows = ro.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
    assert dict(rows) == {"ok": 5, "failed": 1}


class Level(enum.IntEnum):
    LOW = 1


def test_a_resume_gives_back_values_of_their_own_type(tmp_path: Path) -> None:
    """A Counter equals the dict JSON gives back, and an IntEnum the int: equal is
    not the same, so only values of JSON's own types, all the way down, are JSON."""
    db = tmp_path / "run.db"
    made = [
        collections.Counter("hello"),
        collections.defaultdict(int, a=1),
        collections.OrderedDict(a=1),
        Level.LOW,
        [Level.LOW],
        {"a": [1, {"b": None}]},
    ]

    def task(x: int) -> Any:
        return made[x]

    whilst.map(task, range(len(made)), mode="threads", journal=db)
    results = list(whilst.imap(task, range(len(made)), mode="threads", journal=db))
    assert [r.status for r in results] == [Status.SKIPPED] * len(made)
    assert [r.value for r in results] == made
    assert [type(r.value) for r in results] == [type(v) for v in made]
    assert type(results[4].value[0]) is Level
    with sqlite3.connect(db) as ro:
        formats = [f for (f,) in ro.execute("SELECT value_format FROM tasks ORDER BY idx")]
    assert formats == ["pickle"] * 5 + ["json"]


class Renamed:
    """A value's class, renamed (the test removes it) after its run."""


def test_a_value_whose_pickle_no_longer_loads_runs_again_and_reads_as_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    from whilst._cli import cli

    db, counter, renamed = tmp_path / "run.db", tmp_path / "count", Renamed

    def task(x: int) -> Any:
        with open(counter, "a") as f:
            f.write(f"{x}\n")
        return renamed() if x == 0 else x

    whilst.map(task, range(2), journal=db)
    monkeypatch.delitem(globals(), "Renamed")  # as if renamed or moved since
    first, second = whilst.Journal(db)
    assert second.value == 1
    assert "unavailable" in repr(first.value)
    assert "Renamed" in repr(first.value)  # why: the class it names is gone
    out = CliRunner().invoke(cli, ["report", str(db), "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    assert "Renamed" in json.loads(out.output.splitlines()[0])["value"]
    results = list(whilst.imap(task, range(2), journal=db))
    assert [r.status for r in results] == [Status.OK, Status.SKIPPED]
    assert counted(counter) == Counter({"0": 2, "1": 1})  # only the lost value ran again


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_an_error_whose_str_raises_is_journaled_and_the_run_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    def task(x: int) -> int:
        if x == 0:
            raise Unprintable
        return x

    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(task, range(3), mode="threads", journal=db)
    assert [r.status for r in caught.value.results] == [Status.FAILED, Status.OK, Status.OK]
    read = list(whilst.Journal(db))
    assert [r.status for r in read] == [Status.FAILED, Status.OK, Status.OK]
    assert str(read[0].error).startswith("Unprintable: ")


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_value_too_deep_to_keep_is_recorded_unkept_and_the_run_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    deep = nested(1200)

    def task(x: int) -> Any:
        return deep if x == 0 else x

    assert whilst.map(task, range(2), mode="threads", journal=db) == [deep, 1]
    with sqlite3.connect(db) as ro:
        formats = [f for (f,) in ro.execute("SELECT value_format FROM tasks ORDER BY idx")]
    assert formats[0].startswith("unkept: cannot be pickled (RecursionError")
    assert formats[1] == "json"


def test_items_too_big_or_deep_for_their_text_get_a_key_or_say_why_not(tmp_path: Path) -> None:
    from whilst._journal import item_key

    db, counter = tmp_path / "run.db", tmp_path / "count"
    huge = 10**5000

    def task(x: Any) -> int:
        with open(counter, "a") as f:
            f.write(f"{x if type(x) is int and x < 100 else 'big'}\n")
        return 1

    assert item_key(12) == "i:12"  # as journals have them
    assert item_key(huge) != item_key(huge + 1)
    assert whilst.map(task, [huge, huge + 1, 3], mode="threads", journal=db) == [1, 1, 1]
    assert whilst.map(task, [huge, huge + 1, 3], mode="threads", journal=db) == [1, 1, 1]
    assert counted(counter) == Counter({"big": 2, "3": 1})  # nothing ran twice
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(task, [nested(1200), 4], mode="threads", journal=db)
    (failed,) = caught.value.failed
    assert failed.attempts == 0
    notes = "\n".join(getattr(failed.error, "__notes__", []))
    assert "journal key of item 0" in notes
    assert "raised by task_id=" not in notes  # none was given
    assert "task_id=" in str(failed.error)  # how to give it one


def test_a_task_id_giving_none_or_an_address_fails_only_that_item(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    rows = [{"id": 1, "v": 10}, {"v": 20}, {"v": 30}]

    def task(row: dict[str, int]) -> int:
        return row["v"]

    for _ in range(2):  # and again, resuming: never another row's value
        with pytest.raises(whilst.TasksFailed) as caught:
            whilst.map(task, rows, mode="threads", journal=db, task_id=lambda r: r.get("id"))
        results = caught.value.results
        assert [r.value for r in results] == [10, None, None]
        assert [r.index for r in caught.value.failed] == [1, 2]
        assert "task_id= returned None" in str(results[1].error)
    with pytest.raises(whilst.TasksFailed) as caught:
        whilst.map(task, rows, journal=tmp_path / "2.db", task_id=lambda r: object())
    assert len(caught.value.failed) == 3
    assert "memory address" in str(caught.value.failed[0].error)
