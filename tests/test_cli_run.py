"""``whilst run``: GNU parallel is the oracle; every input is one literal argument;
timeouts, halts and signals leave no process behind (issue 6; reliability.md
11-13, 21, 25)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest

from whilst._options import cpu_count

from conftest import cli, line_by_line

WHILST = [sys.executable, "-m", "whilst"]
PARALLEL = shutil.which("parallel")
CPUS = cpu_count()


def whilst_run(*args: str, stdin: bytes = b"", cwd: Path | None = None, timeout: float = 60):
    return cli(*WHILST, "run", *args, input=stdin, cwd=cwd, timeout=timeout)


def _sleepers() -> list[psutil.Process]:
    """Live ``sleep 30`` processes: only a command whilst failed to kill leaves one."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == ["sleep", "30"] and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


@pytest.fixture(autouse=True)
def _no_command_outlives_its_test() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 2
    while _sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleepers() == []


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "names").write_text("dir/a.txt\nb.tar.gz\n/x/y/z.c\nplain\nsp ace.md\n")
    (tmp_path / "pairs").write_text("1,2\n3,4\n5,6\n")
    return tmp_path


# Templates, inputs and options, each run by GNU parallel and by whilst run -k.
ORACLE = [
    ["echo", ":::", "a", "b", "c"],
    ["echo", "{}", ":::", "a b", "c"],
    ["echo", "x{}y", ":::", "a"],
    ["echo", ":::", "a", "b", ":::", "1", "2"],
    ["echo", "{2}", "{1}", ":::", "a", "b", ":::", "1", "2"],
    ["echo", "{.}", "{/}", "{//}", "{/.}", "::::", "names"],
    ["echo", "{#}", "{}", ":::", "a", "b", "c"],
    ["-j1", "echo", "{%}", ":::", "a", "b"],
    ["echo", "{1.}", "{2/}", ":::", "a.x", ":::", "d/e.f"],
    ["echo", "{3}", ":::", "a", ":::", "b"],
    ["echo", "{1/}", "{2.}", ":::", "./q", "sp ace.txt"],  # no {2}: nothing, not ''
    ["--colsep", ",", "echo", "{2}-{1}", "::::", "pairs"],
    ["--colsep", ",", "echo", "::::", "pairs"],
    ["--colsep", ",", "echo", "[{1}]-[{2}]", ":::", " a , b ", "\ta\v,\tb c\t"],  # trimmed
    ["--tag", "echo", "hi", ":::", "a", "b", ":::", "1", "2"],
    ["echo {} | tr a-z A-Z", ":::", "ab", "cd"],
    ["echo", "::::", "names", "::::", "pairs"],
    ["printf", "[%s]", ":::", "; touch pwned", "$(echo hi)", "a'b\"c", "-rf", "--"],
    ["echo", ":::", "--help", "--version", "-n"],  # the shell's echo, not /bin/echo
    # :::+ and ::::+ link a source to the one before, value by value, to the shortest
    ["echo", ":::", "a", "b", ":::+", "1", "2"],
    ["echo", ":::", "a", "b", ":::+", "1", "2", "3", ":::+", "x", "y", "z", "w"],
    ["echo", "{2}-{1}-{3}", ":::", "a", "b", "c", ":::+", "1", "2", ":::", "x", "y"],
    ["echo", ":::", "a", "b", ":::", "1", "2", ":::+", "x", "y"],
    ["echo", ":::+", "a", "b", ":::", "1", "2"],  # first: an ordinary source
    ["echo", "::::", "names", "::::+", "pairs", "names"],  # each file after ::::+ linked
    ["--colsep", ",", "echo", "{3}", ":::", "a,b", ":::+", "c,d"],
    # {-1} the last column; as Perl indexes, of 2 columns {-3} is the second, {-5} none
    ["echo", "{-1}", "{-2.}", "[{-3/}]", "[{-5}]", "x{-1}y", ":::", "a.x", "d/b.y", ":::", "1"],
    ["--colsep", ",", "echo", "{-1}", "{-2}", "::::", "pairs"],
    ["--dry-run", "--tag", "echo", ":::", "a", "b c"],
    ["--dry-run", "--tag", "echo {1} {2}", ":::", "a", ":::", "x y"],
    # braces that are no replacement string stay as they are
    ["echo '{foo} {a,b} {-} {-x} {+1} {=} {1..3} {1,-1}' ${HOME+x} x{}y", ":::", "a"],
    ["echo {} | awk '{print $2}'", ":::", "a b"],
    ['f() { echo "[$1]"; }; f {}', ":::", "a b"],
    ["true", ":::", "--help"],  # the shell's true prints nothing
    ["true", "--{}", ":::", "help"],  # ... wherever --help comes from
    # names at the edges: hidden files, trailing and doubled slashes, dots alone
    [
        "echo",
        "[{.}]",
        "[{/}]",
        "[{//}]",
        "[{/.}]",
        ":::",
        ".hidden",
        "e/",
        "a/b/",
        "/x",
        "dir/.hidden",
        ".",
        "..",
        "/",
        "x//y",
        "a/.b.c",
    ],
]


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed (.ci/system-deps)")
@pytest.mark.parametrize("args", ORACLE, ids=lambda a: " ".join(a)[:40])
def test_whilst_run_prints_exactly_what_gnu_parallel_prints(files: Path, args: list[str]) -> None:
    assert PARALLEL is not None
    theirs = subprocess.run(
        [PARALLEL, "-k", *args], capture_output=True, cwd=files, timeout=60, check=True
    )
    ours = whilst_run("-k", "-q", *args, cwd=files)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert not (files / "pwned").exists()


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed (.ci/system-deps)")
@pytest.mark.parametrize("null", [False, True])
def test_inputs_from_stdin_as_gnu_parallel(null: bool) -> None:
    assert PARALLEL is not None
    data = b"x y\0z\0" if null else b"x y\nz\n"
    flags = ["-0"] if null else []
    theirs = subprocess.run(
        [PARALLEL, "-k", *flags, "echo"], input=data, capture_output=True, check=True
    )
    ours = whilst_run("-k", "-q", *flags, "echo", stdin=data)
    assert ours.stdout == theirs.stdout


NASTY = [
    "; touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "a'b\"c",
    "line\nbreak",
    "-rf",
    "--",
    "  spaced  ",
    "*",
    "~",
    "\\",
]


@pytest.mark.parametrize(
    ("template", "shell"),
    [
        (["printf '%s\\0'"], True),  # shell mode: the template is shell text
        (["printf '%s\\0' {}"], True),
        (["printf", "%s\\0"], False),  # --no-shell: the template's words are the argv
        (["printf", "%s\\0", "{}"], False),
        (["{}"], True),
        (["{}"], False),
    ],
)
def test_every_input_reaches_the_command_as_one_literal_argument(
    tmp_path: Path, template: list[str], shell: bool
) -> None:
    """reliability.md 25: in shell and argv mode, and a template that starts with {}."""
    if template == ["{}"]:
        # the input is the command: it is run (as one word), never interpreted
        result = whilst_run(
            "-q", *(["--no-shell"] if not shell else []), "{}", ":::", "touch pwned", cwd=tmp_path
        )
        assert result.returncode == 1
        assert not (tmp_path / "pwned").exists()
        return
    raw = b"\xff\xfebytes"  # not UTF-8: through a file, as it is
    (tmp_path / "inputs").write_bytes(
        b"\n".join([*(a.encode() for a in NASTY if "\n" not in a), raw]) + b"\n"
    )
    args = ["-k", "-q", *(["--no-shell"] if not shell else []), *template]
    result = whilst_run(*args, ":::", *NASTY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in NASTY]
    from_file = whilst_run(*args, "::::", "inputs", cwd=tmp_path)
    assert from_file.stdout.split(b"\0")[-2] == raw
    assert not (tmp_path / "pwned").exists()


def test_the_last_line_says_how_jobs_failed_and_names_the_first() -> None:
    run = whilst_run("-q", "-k", "--timeout", "0.5", "sleep {}", ":::", "0", "5")
    assert run.returncode == 1
    last = run.stderr.decode().splitlines()[-1]
    assert last.startswith("whilst: 1 of 2 timed out (first: sleep 5, timed out: command ran")
    run = whilst_run("-q", "--timeout", "0.5", "sleep {}; exit 3", ":::", "0.01", "5")
    last = run.stderr.decode().splitlines()[-1]
    assert last.startswith("whilst: 2 of 2 failed (1 failed, 1 timed out; first: sleep 0.01")
    assert "exit code 3" in last


def test_exit_status_output_grouping_and_results_file(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    script = "for i in 1 2 3; do echo {}-$i; sleep 0.01; done; echo err-{} >&2; exit {}"
    run = whilst_run("-j", "3", "--results", str(results), script, ":::", "0", "1", "2")
    assert run.returncode == 1
    lines = run.stdout.decode().splitlines()
    for job in ("0", "1", "2"):  # each job's output whole, never interleaved
        at = lines.index(f"{job}-1")
        assert lines[at : at + 3] == [f"{job}-1", f"{job}-2", f"{job}-3"]
    assert "2 of 3 failed" in run.stderr.decode()
    records = {r["args"][0]: r for r in map(json.loads, results.read_text().splitlines())}
    assert records["0"]["exit_code"] == 0
    assert records["0"]["status"] == "ok"
    assert records["2"]["exit_code"] == 2
    assert records["2"]["status"] == "failed"
    assert records["1"]["stdout"] == "1-1\n1-2\n1-3\n"
    assert records["1"]["stderr"] == "err-1\n"
    assert records["1"]["duration"] > 0


def test_output_written_just_before_exit_is_kept_whole(tmp_path: Path) -> None:
    # Commands that write and exit at once: their pipes poll as data and hang-up
    # together, and every byte of both must still be read, more than a pipe holds too.
    results = tmp_path / "results.jsonl"
    script = "printf %s-err {} >&2; yes {} | head -c 100000"
    jobs = map(str, range(60))
    run = whilst_run("-q", "-j", "8", "--results", str(results), script, ":::", *jobs)
    assert run.returncode == 0
    records = list(map(json.loads, results.read_text().splitlines()))
    assert sorted(int(r["args"][0]) for r in records) == list(range(60))
    for r in records:
        job = r["args"][0]
        assert r["stdout"] == (f"{job}\n" * 100000)[:100000]
        assert r["stderr"] == f"{job}-err"


def test_line_buffer_streams_lines_as_they_come() -> None:
    template = "echo start {}; sleep 0.3; echo end {}"
    run = whilst_run("--line-buffer", "--tag", template, ":::", "a", "b")
    lines = run.stdout.decode().splitlines()
    assert sorted(lines[:2]) == ["a\tstart a", "b\tstart b"]  # both began before either ended
    assert sorted(lines[2:]) == ["a\tend a", "b\tend b"]


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path: Path) -> None:
    run = whilst_run("--dry-run", "touch {}", ":::", "a b", "c'd", cwd=tmp_path)
    assert run.stdout.decode().splitlines() == ["touch 'a b'", "touch 'c'\"'\"'d'"]
    assert list(tmp_path.iterdir()) == []


def _descendants_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


def test_a_timeout_kills_the_whole_process_group_and_never_hangs_on_the_pipe(
    tmp_path: Path,
) -> None:
    """reliability.md 13: sh -c 'sleep 30 & sleep 30' with its output captured."""
    pids = tmp_path / "pids"
    results = tmp_path / "r.jsonl"
    started = time.monotonic()
    run = whilst_run(
        "--timeout",
        "0.5",
        "--results",
        str(results),
        f"sh -c 'sleep 30 & echo $! >> {pids}; sleep 30 & echo $! >> {pids}; wait'",
        ":::",
        "x",
    )
    assert time.monotonic() - started < 10
    assert run.returncode == 1
    record = json.loads(results.read_text())
    assert record["status"] == "timed_out"
    assert record["duration"] < 2
    assert record["error"].startswith("CommandTimedOut: command ran past its timeout of 0.5 s")
    time.sleep(0.3)
    assert _descendants_gone([int(p) for p in pids.read_text().split()])


def test_retries_count_extra_attempts(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    run = whilst_run("--retries", "2", "-q", f"echo x >> {counter}; exit 1", ":::", "a")
    assert run.returncode == 1
    assert counter.read_text().count("x") == 3  # 1 + 2 retries


@pytest.mark.parametrize(("failing", "halted"), [(9, False), (10, True)])
def test_halt_fail_percent_counts_against_all_the_arguments(
    tmp_path: Path, failing: int, halted: bool
) -> None:
    # reliability 21: fail=10% of 100 jobs triggers on the 10th failure, not the 9th
    # (the ::: arguments are all known, so the share is of all 100 jobs).
    results = tmp_path / "r.jsonl"
    run = whilst_run(
        "-j", "1", "--halt", "now,fail=10%", "--results", str(results), "-q",
        f"test {{}} -gt {failing}", ":::", *map(str, range(1, 101)),
    )  # fmt: skip
    assert run.returncode == 1
    statuses = Counter(json.loads(line)["status"] for line in results.read_text().splitlines())
    if halted:
        assert statuses == {"failed": 10, "cancelled": 90}
    else:
        assert statuses == {"failed": 9, "ok": 91}


def test_halt_now_kills_the_running_jobs(tmp_path: Path) -> None:
    """reliability.md 21: halt now,fail=1 with 4 running jobs, one exits 7."""
    pids, db = tmp_path / "pids", tmp_path / "run.db"
    started = time.monotonic()
    run = whilst_run(
        "-j",
        "4",
        "--halt",
        "now,fail=1",
        "--journal",
        str(db),
        "-q",
        f"echo $$ >> {pids}; if [ {{}} = 3 ]; then sleep 0.3; exit 7; fi; sleep 30",
        ":::",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    )
    assert time.monotonic() - started < 10
    assert run.returncode == 1
    time.sleep(0.3)
    assert _descendants_gone([int(p) for p in pids.read_text().split()])
    with sqlite3.connect(db) as ro:
        statuses = dict(ro.execute("SELECT item, status FROM tasks"))
    assert sorted(statuses.values()) == ["failed", "interrupted", "interrupted", "interrupted"]


@pytest.mark.parametrize("signals", [1, 2])
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_stops_every_command_and_exits_as_a_shell_expects(
    tmp_path: Path, sig: signal.Signals, code: int, signals: int
) -> None:
    """reliability.md 11 and 12: even a command that ignores SIGTERM is gone, after
    the grace (one signal) or at once (a second one), and the journal is intact.
    SIGHUP too (the terminal closed): each command has a process group of its own,
    so the terminal's hangup never reaches them; they ran on, orphaned."""
    pids, db = tmp_path / "pids", tmp_path / "run.db"
    proc = subprocess.Popen(
        [
            *WHILST, "run", "-j", "3", "-q", "--grace", "0.5", "--journal", str(db),
            f"trap '' TERM; echo $$ >> {pids}; sleep 30 & sleep 30 & wait; echo {{}}",
            ":::", "1", "2", "3", "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().split()) < 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    if signals == 2:
        time.sleep(0.2)
        proc.send_signal(sig)  # a second one: at once
    signalled = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert time.monotonic() - signalled < (1.0 if signals == 2 else 0.5 + 1.0)
    last = {130: b"interrupted", 143: b"terminated", 129: b"hangup"}[code]
    assert err.splitlines()[-1] == last  # (after SIGHUP it said nothing)
    time.sleep(0.3)
    shells = [int(p) for p in pids.read_text().split()]
    assert _descendants_gone(shells)
    assert _sleepers() == []
    with sqlite3.connect(db) as ro:
        assert ro.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        statuses = [status for (status,) in ro.execute("SELECT status FROM tasks")]
    assert statuses == ["interrupted"] * 3  # job 4 never started


def test_a_signal_says_what_ended_before_it_and_results_have_every_job_it_cut(
    tmp_path: Path,
) -> None:
    done, results = tmp_path / "done", tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [*WHILST, "run", "-q", "-j", "2", "--grace", "0.2", "--results", str(results),
         f"sleep {{}} && echo {{}} >> {done}", ":::", "0.1", "0.1", "30", "30", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not done.exists() or len(done.read_text().split()) < 2):
        time.sleep(0.05)
    time.sleep(0.2)  # (their results handed out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.decode().splitlines()[-2:] == [
        "whilst: stopped, with 4 ended (2 ok, 2 cancelled)",  # (it said "terminated" alone)
        "terminated",
    ]
    # The two jobs the signal killed have their lines (they had none); the one it
    # never started has none.
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["args"], r["status"]) for r in lines) == [
        (["0.1"], "ok"), (["0.1"], "ok"), (["30"], "cancelled"), (["30"], "cancelled")
    ]  # fmt: skip
    assert {r["error"] for r in lines if r["status"] == "cancelled"} == {
        "TaskCancelled: the run was interrupted: its command was killed with its process group"
    }
    assert all(r["duration"] > 0.1 for r in lines if r["status"] == "cancelled")


def test_a_journal_resumes_and_refuses_another_command(tmp_path: Path) -> None:
    db, counter = tmp_path / "run.db", tmp_path / "count"
    template = f"echo {{}} >> {counter}; [ {{}} != 3 ]"
    first = whilst_run("--journal", str(db), "-q", template, ":::", "1", "2", "3", "4")
    assert first.returncode == 1
    again = whilst_run("--journal", str(db), "-q", template, ":::", "1", "2", "3", "4")
    assert again.returncode == 1
    assert sorted(counter.read_text().split()) == ["1", "2", "3", "3", "4"]  # only 3 ran again
    same = whilst_run("--journal", str(db), "-q", *template.split(" "), ":::", "1", "2", "3", "4")
    assert same.returncode == 1  # the same command line, given as words: resumed
    assert sorted(counter.read_text().split()) == ["1", "2", "3", "3", "3", "4"]
    other = whilst_run("--journal", str(db), "-q", "echo {}", ":::", "1")
    assert other.returncode == 2
    assert b"records a run of whilst run" in other.stderr
    assert b"or pass --force to resume it anyway" in other.stderr  # (the CLI's way)
    assert b"Traceback" not in other.stderr


def test_the_summary_says_why_jobs_run_in_threads(tmp_path: Path) -> None:
    """Not "mode='threads' was asked for": the user asked for no mode; the report
    says so too, under the command's name (it said "Runner, threads mode")."""
    report = tmp_path / "r.html"
    run = whilst_run("-j", "3", "--report", str(report), "true", ":::", "1", "2")
    assert run.returncode == 0
    assert b"asked for" not in run.stderr
    words = " ".join(run.stderr.decode().replace("│", " ").split())  # the table's text
    assert "one of 3 threads" in words
    page = report.read_text()
    assert "<title>whilst run true</title>" in page
    assert "one of 3 threads" in page
    assert "asked for" not in page
    assert "Runner" not in page


def test_a_journal_others_can_read_still_skips_what_succeeded(tmp_path: Path) -> None:
    """A job's value (its output) is not wanted back, so one that is not kept (no
    pickles in a file that is not private) does not make it run again."""
    db, ran = tmp_path / "run.db", tmp_path / "ran"
    assert (
        whilst_run("-q", "--journal", str(db), f"echo {{}} >> {ran}", ":::", "a", "b").returncode
        == 0
    )
    db.chmod(0o640)  # (or created by touch, or by sqlite3, before the first run)
    dry = whilst_run("--dry-run", "--journal", str(db), f"echo {{}} >> {ran}", ":::", "a", "b", "c")
    assert dry.stdout.decode() == f"echo c >> {ran}\n"
    again = whilst_run("-q", "--journal", str(db), f"echo {{}} >> {ran}", ":::", "a", "b", "c")
    assert again.returncode == 0
    assert sorted(ran.read_text().split()) == ["a", "b", "c"]  # each once
    assert b"not private" not in again.stderr


def test_a_dry_run_with_a_journal_shows_only_what_a_run_would_run(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    assert whilst_run("-q", "--journal", str(db), "test {} != 2", ":::", "1", "2", "3").returncode
    before = db.read_bytes()
    dry = whilst_run("--dry-run", "--journal", str(db), "test {} != 2", ":::", "1", "2", "3", "4")
    assert (dry.returncode, dry.stdout) == (0, b"test 2 != 2\ntest 4 != 2\n")
    kept = whilst_run(
        "--dry-run", "--journal", str(db), "--resume", "unfinished", "test {} != 2", ":::", "2"
    )
    assert kept.stdout == b""  # failures stay failures
    assert db.read_bytes() == before  # only read
    other = whilst_run("--dry-run", "--journal", str(db), "rm", "-v", ":::", "1", "2")
    assert other.returncode == 2  # refused, as the run would be
    assert b"records a run of whilst run" in other.stderr
    fresh = whilst_run("--dry-run", "--journal", str(tmp_path / "new.db"), "echo", ":::", "1")
    assert fresh.stdout == b"echo 1\n"
    assert not (tmp_path / "new.db").exists()


def test_a_failure_given_back_by_resume_unfinished_says_it_came_from_an_earlier_run(
    tmp_path: Path,
) -> None:
    db = tmp_path / "run.db"
    assert whilst_run("-q", "--journal", str(db), "test {} != 2", ":::", "1", "2").returncode == 1
    again = whilst_run(
        "-q", "--journal", str(db), "--resume", "unfinished", "test {} != 2", ":::", "1", "2"
    )
    assert again.returncode == 1
    why = "in an earlier run, CommandFailed: command failed with exit code 1"
    assert again.stderr.decode().splitlines() == [
        f"whilst: job 2 (2): {why}",
        f"whilst: 1 of 2 failed (first: 2, failed: {why})",
    ]


def test_a_journal_takes_arguments_that_are_not_utf8(tmp_path: Path) -> None:
    """A file name with a byte that is not UTF-8 runs and is journaled like any other
    (its text in the journal once refused it, and the run lost every record)."""
    db = tmp_path / "run.db"
    first = whilst_run("--journal", str(db), "-q", "-k", "echo", stdin=b"a\n\xff\n")
    assert (first.returncode, first.stdout, first.stderr) == (0, b"a\n\xff\n", b"")
    again = whilst_run("--journal", str(db), "-k", "echo", stdin=b"a\n\xff\n")
    assert again.returncode == 0
    assert b"2 skipped" in again.stderr


def test_results_write_bytes_that_are_not_utf8_as_escapes(tmp_path: Path) -> None:
    """Arguments and output alike: \\xNN, as whilst report exports them (arguments
    were lone surrogates, which strict JSON readers refuse, and output bytes were
    lost as U+FFFD)."""
    results = tmp_path / "r.jsonl"
    run = whilst_run("-q", "--results", str(results), "printf '%s\\n' {}", stdin=b"a\xfeb\n")
    assert run.stdout == b"a\xfeb\n"
    [record] = map(json.loads, results.read_text().splitlines())
    assert record["args"] == ["a\\xfeb"]
    assert record["stdout"] == "a\\xfeb\n"
    assert results.read_bytes().isascii()


def test_results_give_output_that_is_not_utf8_as_its_exact_bytes_too(tmp_path: Path) -> None:
    # The text of a byte 0xfe and of a job printing the characters \xfe are the same.
    results = tmp_path / "r.jsonl"
    script = "printf 'a\\376b\\n'; printf '%s\\n' '\\xfe' >&2; : {}"
    run = whilst_run("-q", "--results", str(results), script, ":::", "x")
    assert run.returncode == 0, run.stderr
    [record] = map(json.loads, results.read_text().splitlines())
    assert record["stdout"] == "a\\xfeb\n"
    assert record["stderr"] == "\\xfe\n"
    assert base64.b64decode(record["stdout_base64"]) == b"a\xfeb\n"
    assert "stderr_base64" not in record  # it was UTF-8: its text is exact


def test_results_of_line_buffer_jobs_have_no_output_but_null(tmp_path: Path) -> None:
    # Streamed as it came, the output is not kept: "" read as a job that printed nothing.
    results = tmp_path / "r.jsonl"
    run = whilst_run("-q", "--line-buffer", "--results", str(results), "echo out {}", ":::", "a")
    assert run.stdout == b"out a\n"
    [record] = map(json.loads, results.read_text().splitlines())
    assert (record["stdout"], record["stderr"], record["exit_code"]) == (None, None, 0)


def test_a_nul_in_an_input_line_fails_its_job_naming_dash_0() -> None:
    run = whilst_run("-q", "echo", stdin=b"a\0b\nc\n")
    assert run.returncode == 1
    assert run.stdout == b"c\n"
    assert b"its input has a NUL byte" in run.stderr  # (it said "embedded null byte")
    assert b"give -0" in run.stderr
    assert whilst_run("-q", "-k", "-0", "echo", stdin=b"a\0b\0").stdout == b"a\nb\n"


def test_a_trace_writes_bytes_that_are_not_utf8_as_escapes(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    run = whilst_run("-q", "--trace", str(trace), "echo", ":::", "a\udcfeb")
    assert run.returncode == 0, run.stderr
    [event] = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert "a\\xfeb" in event["name"]  # as --results writes it (it was a traceback)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--frobnicate", "echo", ":::", "a"], "No such option"),
        (["echo", "::::", "missing.txt"], "does not exist"),
        (["-j", "x", "echo", ":::", "a"], "'x' is not a number of jobs"),
        (["-j", "0%", "echo", ":::", "a"], "'0%' is not a number of jobs"),
        (["-j", "2x", "echo", ":::", "a"], "+N or -N (the CPU count plus or minus N)"),
        (["-j", "1.5", "echo", ":::", "a"], "is not a number of jobs"),
        (["echo", ":::", "a", "::::+"], "::::+ needs a file after it"),
        (["--halt", "sometimes", "echo", ":::", "a"], "halt"),
        (["--results", "/no/such/dir/r.jsonl", "echo", ":::", "a"], "does not exist"),
        (["--report", "/no/such/dir/r.html", "echo", ":::", "a"], "does not exist"),
        (["-k", "--line-buffer", "echo", ":::", "a"], "not supported"),
        (["--force", "echo", ":::", "a"], "with --journal"),
        (["--timeout", "nan", "echo", ":::", "a"], "'nan' is not a number of seconds"),
        (["--results", "-", "echo", ":::", "a"], "would be a file named '-'"),
        (["--journal", "-", "echo", ":::", "a"], "would be a file named '-'"),
        (["--grace", "nan", "echo", ":::", "a"], "'nan' is not a number of seconds"),
        (["--no-shell", "echo {}", ":::", "a"], "give them apart, whilst run --no-shell echo"),
        (["--colsep", "|", "echo", ":::", "a"], "say --colsep '\\|'"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    run = whilst_run(*args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.decode().splitlines()
    assert line.startswith("whilst: ")
    assert words in line


@pytest.mark.parametrize(
    ("template", "words"),
    [
        (["mv {} {= s/\\.jpg/.png/ =}"], "{= s/\\.jpg/.png/ =} is a Perl expression"),
        (["mv", "{}", "{=1", "s/jpg/png/", "=}"], "{=1 s/jpg/png/ =} is a Perl expression"),
        (["mv {} {1= s/jpg/png/ =}"], "{1= s/jpg/png/ =} is a Perl expression"),
        (["--no-shell", "mv", "{}", "{= s/jpg/png/ =}"], "is a Perl expression"),
        (["mv {} {0}"], "{0} is not a replacement string"),  # GNU parallel: {}
        (["mv {} {0.}.png"], "{0.} is not a replacement string"),
        (["mv {} {-0}"], "{-0} is not a replacement string"),  # GNU parallel: nothing
    ],
)
def test_gnu_parallel_syntax_whilst_lacks_is_refused_before_anything_runs(
    tmp_path: Path, template: list[str], words: str
) -> None:
    """A Perl expression or a column 0 was kept as text or made empty: the file
    was renamed to '{= s/\\.jpg/.png/ =}'. Now one sentence that names what to
    use, exit 2, and nothing run (nor printed by --dry-run)."""
    (tmp_path / "x.jpg").write_text("")
    for dry_run in ([], ["--dry-run"]):
        run = whilst_run(*dry_run, *template, ":::", "x.jpg", cwd=tmp_path)
        assert (run.returncode, run.stdout) == (2, b""), run.stderr
        [error] = run.stderr.decode().splitlines()
        assert words in error
        assert "{1}" in error
        assert "{-1}" in error
    assert os.listdir(tmp_path) == ["x.jpg"]


def test_linked_sources_count_their_jobs_before_they_run() -> None:
    """--halt fail=P% and the progress bar count against this total."""
    from whilst._shell import Counted, jobs, split_words

    _, sources = split_words(["echo", ":::", "a", "b", "c", ":::+", "1", "2", ":::", "x", "y"])
    todo = jobs(sources, sys.stdin.buffer)
    assert isinstance(todo, Counted)
    assert len(todo) == 4
    assert [job.args for job in todo] == [
        ("a", "1", "x"), ("a", "1", "y"), ("b", "2", "x"), ("b", "2", "y")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("jobs", "slots"),
    [
        ("+2", CPUS + 2),
        ("+0", CPUS),
        ("-1", max(1, CPUS - 1)),
        ("-1000", 1),  # at least 1 (GNU parallel: "Cannot run any jobs")
        ("150%", math.ceil(CPUS * 1.5)),
        ("0.5%", 1),  # rounded up
        ("3", 3),
    ],
)
def test_jobs_relative_to_the_cpu_count(jobs: str, slots: int) -> None:
    """-j +N, -N and P% as GNU parallel's (+2 was read as 2, -1 and 50% refused).
    Slots are handed out first come first served, so the jobs' slots ({%}) are all
    of 1..slots, and none above, whatever the timing."""
    run = whilst_run("-q", "-j", jobs, "echo {%}", ":::", *map(str, range(slots + 3)))
    assert run.returncode == 0, run.stderr
    assert {int(slot) for slot in run.stdout.split()} == set(range(1, slots + 1))


def _parallel_cpus() -> int | None:
    if PARALLEL is None:
        return None
    out = subprocess.run([PARALLEL, "--number-of-threads"], capture_output=True, timeout=60)
    return int(out.stdout) if out.returncode == 0 else None


@pytest.mark.skipif(_parallel_cpus() != CPUS, reason="no GNU parallel, or it counts CPUs apart")
@pytest.mark.parametrize("jobs", ["+2", "150%", "34%"])
def test_jobs_relative_to_the_cpu_count_as_gnu_parallel(jobs: str) -> None:
    """Both run as many jobs at once: each slot of GNU parallel's ({%}) is used
    while the jobs sleep."""
    assert PARALLEL is not None
    args = [jobs, "sleep 0.3; echo {%}", ":::", *map(str, range(2 * CPUS + 4))]
    theirs = subprocess.run([PARALLEL, "-j", *args], capture_output=True, timeout=60, check=True)
    ours = whilst_run("-q", "-j", *args)
    assert ours.returncode == 0, ours.stderr
    assert set(ours.stdout.split()) == set(theirs.stdout.split())


def test_an_unknown_halt_rule_names_every_rule_accepted() -> None:
    """It named 6 of the 9 (not now,success=P% nor soon,success=...)."""
    from whilst._policy import parse_halt

    run = whilst_run("--halt", "sometimes", "true", ":::", "a")
    assert run.returncode == 2
    named = set(re.findall(r"'([a-z]+(?:,[a-z]+=[NP]%?)?)'", run.stderr.decode()))
    accepted = {"never"} | {
        f"{when},{what}={amount}"
        for when in ("soon", "now")
        for what in ("fail", "success")
        for amount in ("N", "P%")
    }
    assert named == accepted | {"sometimes"}
    for rule in accepted:
        parse_halt(rule.replace("=N", "=2").replace("=P%", "=50%"))


def test_j_0_runs_as_many_at_once_as_open_files_allow(tmp_path: Path) -> None:
    """GNU parallel's -j 0: as many as possible (it was a usage error)."""
    results = tmp_path / "r.jsonl"
    run = whilst_run("-j", "0", "--results", str(results), "sleep 1 #", ":::", *"abcdefghijklmnop")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    starts = sorted(r["start"] for r in lines)
    ends = sorted(r["start"] + r["duration"] for r in lines)
    assert len(lines) == 16
    assert starts[-1] < ends[0]  # all 16 ran at once


@pytest.mark.parametrize("args", [[], [":::"], [":::", "a", ":::"]])
def test_an_empty_input_exits_0_with_a_note(args: list[str]) -> None:
    """Stdin, or a ::: with no values (a glob that matched nothing, with nullglob):
    as GNU parallel, nothing runs and all is well (::: alone was a usage error)."""
    run = whilst_run("echo", *args, stdin=b"")
    assert (run.returncode, run.stdout) == (0, b"")
    assert b"no input" in run.stderr


def test_review_regressions(tmp_path: Path) -> None:
    """--colsep is a regex; each :::: file is a source; a script with no #! runs;
    a grandchild that leaves the job's group does not hold the run; --halt
    now,success=1 exits 0; a bad --colsep or a directory is one sentence."""
    (tmp_path / "tabs").write_text("a\tb\n")
    assert whilst_run("-q", "--colsep", "\\t", "echo", "{2}", "{1}", "::::", "tabs",
                      cwd=tmp_path).stdout == b"b a\n"  # fmt: skip
    (tmp_path / "g1").write_text("x\ny\n")
    (tmp_path / "g2").write_text("1\n2\n")
    both = whilst_run("-q", "-k", "echo", "::::", "g1", "g2", cwd=tmp_path)
    assert both.stdout == b"x 1\nx 2\ny 1\ny 2\n"
    script = tmp_path / "nosb.sh"
    script.write_text("echo hi from $1\n")
    script.chmod(0o755)
    assert whilst_run("-q", "./nosb.sh", ":::", "a", cwd=tmp_path).stdout == b"hi from a\n"
    started = time.monotonic()
    held = whilst_run("-q", "setsid sleep 3 & echo {}", ":::", "done")
    assert held.stdout == b"done\n"
    assert time.monotonic() - started < 2.5
    halt = whilst_run("-q", "--halt", "now,success=1", "sleep {}", ":::", "0.1", "5", "5")
    assert halt.returncode == 0
    for args in (["--colsep", "", "echo", ":::", "a"], ["echo", "::::", str(tmp_path)]):
        bad = whilst_run(*args)
        assert bad.returncode == 2
        assert b"Traceback" not in bad.stderr
    subprocess.run(["pkill", "-f", "^sleep 3$"], check=False)


def test_values_are_quoted_for_posix_shells_only() -> None:
    from whilst._shell import posix_shell

    env = dict(os.environ)
    try:
        for shell, expected in (("/usr/bin/fish", "/bin/sh"), ("/bin/bash", "/bin/bash"),
                                ("/bin/tcsh", "/bin/sh")):  # fmt: skip
            os.environ["SHELL"] = shell
            assert posix_shell() == expected
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_a_job_starts_as_its_line_comes_on_a_stream() -> None:
    """`tail -f | whilst run`: lines from a pipe run as they come, not in batches."""
    proc = subprocess.Popen(
        [*WHILST, "run", "-q", "-j", "1", "echo {}; date +%s.%N"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(b"one\n")
    proc.stdin.flush()
    sent = time.time()
    assert proc.stdout.readline() == b"one\n"
    ran_at = float(proc.stdout.readline())
    assert ran_at - sent < 2  # it did not wait for more lines
    proc.stdin.write(b"two\n")
    proc.stdin.close()
    assert proc.stdout.readline() == b"two\n"
    proc.wait(30)
    proc.stdout.close()
    assert proc.returncode == 0


def test_each_job_of_a_stream_is_printed_as_it_ends() -> None:
    """`tail -f | whilst run` at the default -j: each line goes in only once the job
    before it printed, so a job whose output waited for more lines would hang."""

    def printed(n: str, stdout: IO[bytes]) -> None:
        assert stdout.readline() == f"done {n}\n".encode()

    line_by_line(["run", "-q", "echo done {}"], ["1", "2", "3", "4", "5"], printed)


@pytest.mark.parametrize("command", [["run", "-q", "echo"], ["call", "-q", "json:dumps"]])
def test_ctrl_c_while_a_stream_is_still_open_exits_130(command: list[str]) -> None:
    """Two signals at once (as `timeout -s INT` sends to the process and its group):
    the thread reading the pipe is blocked in a read at exit, and Python used to
    abort taking the lock of sys.stdin's reader ("Fatal Python error", SIGABRT)."""
    proc = subprocess.Popen(
        [*WHILST, *command],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(b"a\n")
    proc.stdin.flush()
    assert proc.stdout.readline()  # it runs, and waits for more lines
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    assert proc.stderr is not None
    err = proc.stderr.read()  # (stdin left open: the reader stays blocked)
    assert proc.wait(30) == 130, err
    assert time.monotonic() - signalled < 4  # nothing ran: no grace (5 s) to wait
    assert b"Fatal" not in err
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()


def test_a_halt_ends_a_run_whose_stream_goes_on() -> None:
    """`tail -f | whilst run --halt now,fail=1`: the failure ends the run, which
    used to wait for the next line (or forever) before it could end."""
    proc = subprocess.Popen(
        [*WHILST, "run", "-q", "--halt", "now,fail=1", "test {} = ok"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stderr is not None
    proc.stdin.write(b"ok\nbad\n")
    proc.stdin.flush()  # and left open
    try:
        assert proc.wait(20) == 1
        assert b"1 of 2 failed" in proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()
        proc.stderr.close()


def test_no_shell_says_why_a_program_cannot_run_and_finds_a_moved_one(tmp_path: Path) -> None:
    """--no-shell reports the real reason (not executable is not "not found"), and a
    program moved to another PATH directory during the run is found there."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "nonexec").write_text("#!/bin/sh\necho no\n")
    prog = first / "prog"
    prog.write_text("#!/bin/sh\necho ran $1\n")
    prog.chmod(0o755)
    mover = first / "mover"
    mover.write_text(f"#!/bin/sh\nmv {prog} {second / 'prog'}\n")
    mover.chmod(0o755)
    env = {**os.environ, "PATH": f"{first}:{second}:{os.environ['PATH']}"}

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*WHILST, "run", *args], capture_output=True, env=env, timeout=60)

    denied = run("-q", "--no-shell", "nonexec", ":::", "x")
    assert denied.returncode == 1
    assert b"cannot run nonexec: Permission denied" in denied.stderr
    moved = run("-q", "-j", "1", "-k", "--no-shell", "{}", "x", ":::", "prog", "mover", "prog")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout == b"ran x\nran x\n"


def test_a_timeout_holds_after_the_command_closes_its_pipes(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    started = time.monotonic()
    run = whilst_run(
        "--timeout", "0.5", "--results", str(results), "exec >&- 2>&-; sleep 3; :", ":::", "x"
    )
    assert time.monotonic() - started < 2.5
    assert run.returncode == 1
    assert json.loads(results.read_text())["status"] == "timed_out"


def test_a_job_ends_when_its_command_exits_though_what_it_left_writes_on() -> None:
    # The background loop holds the job's stdout and never stays quiet for long.
    started = time.monotonic()
    run = whilst_run("-q", "(while :; do echo bg; sleep 0.01; done) & echo started{}", ":::", "a")
    assert time.monotonic() - started < 10  # (it never ended: the pipes never went quiet)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().splitlines()[0] == "starteda"


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="pipes of 1 MiB: Linux")
def test_what_was_in_the_pipes_when_the_command_exited_is_read_whole() -> None:
    # Its stdout pipe holds 1 MiB, full when it exits; something it left running
    # holds the pipe open; and a slow reader of whilst's stdout (--line-buffer)
    # keeps whilst from reading it all in the moment after the exit.
    writer = (
        "import fcntl, os; fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 1 << 20); "
        "os.write(1, b''.join(b'%07d\\n' % i for i in range(120000)))"
    )
    command = f"sleep 30 & {shlex.quote(sys.executable)} -c {shlex.quote(writer)}; : {{}}"
    proc = subprocess.Popen(
        [*WHILST, "run", "-q", "--line-buffer", command, ":::", "a"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    with proc:
        got = b""
        while chunk := proc.stdout.read1(8192):
            got += chunk
            time.sleep(0.005)
    assert proc.returncode == 0
    assert got == b"".join(b"%07d\n" % i for i in range(120000))


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed (.ci/system-deps)")
@pytest.mark.parametrize("flags", [[], ["--tag"], ["--line-buffer"], ["--line-buffer", "--tag"]])
def test_a_last_line_with_no_newline_is_printed_as_gnu_parallel_does(flags: list[str]) -> None:
    args = ["-j1", *flags, 'printf "x{}\nyy{}"', ":::", "1", "2"]
    assert PARALLEL is not None
    theirs = subprocess.run([PARALLEL, *args], capture_output=True, timeout=60, check=True)
    assert whilst_run("-q", *args).stdout == theirs.stdout
    tag = {i: b"%d\t" % i if "--tag" in flags else b"" for i in (1, 2)}
    assert theirs.stdout == b"".join(b"%sx%d\n%syy%d" % (tag[i], i, tag[i], i) for i in (1, 2))


def test_line_buffer_reads_a_long_line_in_linear_time() -> None:
    # 40 MB with no newline took 18 s when each piece was joined to all before it.
    started = time.monotonic()
    run = whilst_run("-q", "--line-buffer", "head -c 40000000 /dev/zero; : {}", ":::", "a")
    assert run.stdout == bytes(40_000_000)
    assert time.monotonic() - started < 8


def test_line_buffer_keeps_a_last_partial_line_while_something_holds_the_pipe() -> None:
    run = whilst_run("--line-buffer", "--tag", "echo hi; setsid sleep 3 & printf part", ":::", "x")
    assert run.stdout.decode().splitlines() == ["x\thi", "x\tpart"]
    subprocess.run(["pkill", "-f", "^sleep 3$"], check=False)


def test_halt_on_success_exits_0_after_earlier_failures() -> None:
    """GNU parallel: --halt now,success=1 exits 0 once a job succeeded; 1 if none did."""
    met = whilst_run("-q", "-j1", "--halt", "now,success=1", "exit {}", ":::", "1", "1", "0", "1")
    assert met.returncode == 0, met.stderr
    last = met.stderr.decode().splitlines()[-1]  # one line: the failures, the cancelled, why
    assert last.startswith("whilst: 2 of 4 failed (first: exit 1, failed: ")
    assert last.endswith("; 1 cancelled (the halt rule now,success=1 was met)")
    never = whilst_run("-q", "-j1", "--halt", "now,success=1", "exit {}", ":::", "1", "1")
    assert never.returncode == 1


def test_jobs_are_as_many_at_once_as_the_open_file_limit_leaves_room_for() -> None:
    command = shlex.join([*WHILST, "run", "-q", "-j", "60"])
    run = subprocess.run(
        ["sh", "-c", f"ulimit -n 100 && {command} 'sleep 0.1; echo {{}}'"],
        input="".join(f"{i}\n" for i in range(60)).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(map(int, run.stdout.split())) == list(range(60))
    assert b"leaves room for 11 jobs at once, not 60" in run.stderr
    command = shlex.join([*WHILST, "run", "-q", "echo", ":::", "a"])
    low = subprocess.run(
        ["sh", "-c", f"ulimit -n 16 && {command}"], capture_output=True, timeout=60
    )
    assert low.returncode == 2  # every job would fail with "Too many open files"
    assert b"is 16, too low to run a job" in low.stderr
    assert low.stdout == b""
    enough = subprocess.run(
        ["sh", "-c", f"ulimit -n 22 && {command}"], capture_output=True, timeout=60
    )
    assert (enough.returncode, enough.stdout) == (0, b"a\n")  # one job at a time


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-"])
def test_a_closed_stdin_stdout_or_stderr_is_as_dev_null(closed: str) -> None:
    command = shlex.join([*WHILST, "run", "-q", "echo", ":::", "a"])
    run = subprocess.run(
        ["sh", "-c", f"{command} {closed}"], capture_output=True, timeout=60, check=False
    )
    assert (run.returncode, run.stderr) == (0, b"")  # no traceback
    assert run.stdout == (b"" if closed == ">&-" else b"a\n")


def test_output_that_cannot_be_written_is_one_sentence(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        run = subprocess.run(
            [*WHILST, "run", "-q", "echo", ":::", "a"], stdout=full, stderr=subprocess.PIPE
        )
    assert run.returncode == 1
    assert run.stderr.decode().strip() == "whilst: No space left on device"


def test_stdin_is_read_only_so_far_ahead_of_the_jobs() -> None:
    # `seq 10000000 | whilst run ...` must not hold every line in memory: the
    # reader stops once READ_AHEAD lines wait, so a writer feeding it blocks.
    import threading

    from whilst._shell import READ_AHEAD

    proc = subprocess.Popen(
        [*WHILST, "run", "-j", "1", "sleep", "30"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    written = 0

    def write() -> None:
        nonlocal written
        block = b"1\n" * 1000
        try:
            for _ in range(2000):  # 2,000,000 lines in all
                proc.stdin.write(block)  # type: ignore[union-attr]
                written += 1000
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(6)
        # What waits to be taken, and what the pipe and the reader's buffer hold.
        assert written < 2 * READ_AHEAD + 100_000, written
        assert writer.is_alive()  # blocked: not all of it was read
    finally:
        proc.kill()
        proc.wait()
        writer.join(10)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()


@pytest.mark.parametrize("dry", [[], ["--dry-run"], ["--line-buffer"]])
def test_a_reader_that_goes_away_ends_the_run_as_sigpipe_would(dry: list[str]) -> None:
    """`whilst run ... | head -1`: exit 141, as GNU parallel's (a shell's status of
    a program SIGPIPE ended), with nothing on stderr (with --line-buffer, each job
    failed writing its lines, and the run went on to exit 1)."""
    many = map(str, range(20_000 if dry == ["--dry-run"] else 500))
    proc = subprocess.Popen(
        [*WHILST, "run", "-q", "-j", "2", *dry, "echo {}; sleep 0.01", ":::", *many],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # as head -1 does
    assert proc.wait(timeout=60) == 141
    with proc.stderr:
        assert proc.stderr.read() == b""


def test_a_job_the_deadline_stopped_says_its_command_was_killed(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    run = whilst_run("-q", "--deadline", "0.4", "--results", str(results), "sleep", ":::", "30")
    assert run.returncode == 1
    assert run.stderr.decode().splitlines()[-1] == (
        "whilst: 1 of 1 cancelled (the run's deadline of 0.4 s passed)"
    )
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["status"] == "cancelled"
    assert record["error"].endswith("its command was killed with its process group")
    assert (record["command"], record["attempts"]) == ("sleep 30", 1)  # it ran
    assert _sleepers() == []  # as it says


def test_input_a_stop_left_unread_is_a_failure_and_said_so() -> None:
    """Lines from stdin after the deadline never ran: the exit status was 0 and,
    with -q, nothing said so (the same deadline over ::: arguments exits 1)."""
    proc = subprocess.Popen(
        [*WHILST, "run", "-q", "--deadline", "0.5", "exit {}"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"0\n")
    proc.stdin.flush()
    try:
        assert proc.wait(timeout=30) == 1  # with stdin still open, past the deadline
    finally:
        proc.stdin.close()
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert err.splitlines()[-1] == (
        "whilst: the rest of the input was not read (the run's deadline of 0.5 s passed)"
    )
    halted = whilst_run("-q", "-j", "1", "--halt", "soon,fail=1", "exit {}", stdin=b"0\n1\n0\n0\n")
    assert halted.returncode == 1
    assert halted.stderr.decode().splitlines()[-1] == (
        "whilst: the rest of the input was not read (the halt rule soon,fail=1 was met)"
    )


def test_a_job_the_run_stopped_before_it_started_has_no_command(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    run = whilst_run(
        "-q", "-j", "1", "--halt", "now,fail=1", "--results", str(results),
        "exit {}; echo {%}", ":::", "1", "0",
    )  # fmt: skip
    assert run.returncode == 1
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["status"], r["command"], r["attempts"]) for r in records] == [
        ("failed", "exit 1; echo 1", 1),
        ("cancelled", None, 0),  # never ran
    ]
