"""How ``whilst run`` starts a command (``whilst._spawn``): straight through CPython's
``fork_exec`` where its arguments are known, else through ``Popen``; each way the
command gets the same process, and its errors read as ``Popen``'s (issue 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from whilst import _spawn
from whilst._spawn import Process, spawn


@pytest.fixture(params=["fork_exec", "popen"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs both ways: the fast one (where this Python has it) and Popen."""
    if request.param == "fork_exec" and not _spawn._FAST:
        pytest.skip("this Python starts commands through Popen only")
    monkeypatch.setattr(_spawn, "_FAST", request.param == "fork_exec")
    yield request.param
    assert (request.param == "fork_exec") == _spawn._FAST  # no silent fall back


def start(argv: list[str], path: str | None = None) -> Process:
    """The command started, its stdin /dev/null (close its pipes with :func:`done`)."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        return spawn(argv, path, stdin=stdin)
    finally:
        os.close(stdin)


def done(proc: Process) -> None:
    os.close(proc.out)
    os.close(proc.err)


def run(argv: list[str], path: str | None = None) -> tuple[int, bytes, bytes]:
    """The exit status, stdout and stderr of a command run to its end."""
    proc = start(argv, path)
    out, err = b"", b""
    while chunk := os.read(proc.out, 1 << 16):
        out += chunk
    while chunk := os.read(proc.err, 1 << 16):
        err += chunk
    done(proc)
    return proc.wait(), out, err


def test_output_and_exit_status_come_back(way: str) -> None:
    code, out, err = run(["sh", "-c", "echo out; echo err >&2; exit 3"], "/bin/sh")
    assert (code, out, err) == (3, b"out\n", b"err\n")


def test_a_program_is_found_on_path_when_no_path_is_given(way: str) -> None:
    assert run(["echo", "a b", "c"]) == (0, b"a b c\n", b"")


def test_a_command_killed_by_a_signal_has_its_negative_number(way: str) -> None:
    assert run(["sh", "-c", "kill -9 $$"], "/bin/sh")[0] == -signal.SIGKILL


def test_the_command_runs_in_a_session_of_its_own(way: str) -> None:
    """Its pid is its session's and its group's, so its whole group can be killed."""
    proc = start(["sleep", "30"])
    try:
        assert os.getsid(proc.pid) == os.getpgid(proc.pid) == proc.pid != os.getsid(0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done(proc)


def test_the_command_holds_only_its_three_streams(way: str, tmp_path: Path) -> None:
    """No descriptor of ours leaks into it, not even an inheritable one: the pipes of
    other jobs would never close while it ran."""
    leak = os.open(tmp_path / "leak", os.O_CREAT | os.O_WRONLY)
    os.set_inheritable(leak, True)
    try:
        code, out, _ = run(["ls", "/proc/self/fd"])
    finally:
        os.close(leak)
    assert code == 0
    assert sorted(out.split()) == [b"0", b"1", b"2", b"3"]  # 3: the one ls lists them with


def test_signals_python_ignores_are_not_ignored_in_the_command(way: str) -> None:
    """Python ignores SIGPIPE; a command must not (``yes | head -1`` would never end)."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    _, out, _ = run(["grep", "SigIgn", "/proc/self/status"])
    ignored = int(out.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


def test_a_missing_program_is_file_not_found_naming_it(way: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        run(["no-such-program-here"])
    assert missing.value.filename == "no-such-program-here"
    gone = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError) as at_path:
        run(["gone"], gone)
    assert at_path.value.filename == gone
    assert at_path.value.strerror == os.strerror(at_path.value.errno)


def test_a_file_that_is_not_executable_is_permission_denied(way: str, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(PermissionError) as denied:
        run([str(script)])
    assert denied.value.filename == str(script)


def test_no_descriptor_is_left_open_by_commands_that_ran_or_failed(way: str) -> None:
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(20):
        run(["true"])
        with pytest.raises(FileNotFoundError):
            run(["no-such-program-here"])
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_poll_while_another_thread_waits_does_not_block(way: str) -> None:
    """``stop()`` polls a command while its job's thread waits for it: the poll must
    return at once (it then kills the group) or a command that ignores SIGTERM hangs it."""
    proc = start(["sleep", "30"])
    waited: list[int] = []
    waiter = threading.Thread(target=lambda: waited.append(proc.wait()))
    waiter.start()
    time.sleep(0.1)  # (the waiter is in waitpid)
    asked = time.monotonic()
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    assert time.monotonic() - asked < 5
    os.kill(proc.pid, signal.SIGKILL)
    waiter.join(5)
    assert waited == [-signal.SIGKILL]
    assert proc.poll() == proc.wait() == proc.wait(0) == -signal.SIGKILL
    done(proc)


@pytest.mark.parametrize(
    "refusal",
    [
        "fork_exec() takes exactly 23 arguments (22 given)",
        "fork_exec expected 22 arguments, got 23",
    ],
)
def test_an_unknown_fork_exec_falls_back_to_popen(
    monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """A Python whose fork_exec takes other arguments refuses the call (a TypeError,
    in 3.11's words or in those of 3.12 on): the command starts through Popen, and
    so do all after it."""
    if not _spawn._FAST:
        pytest.skip("this Python starts commands through Popen only")

    def refuses(*args: object) -> int:
        raise TypeError(refusal)

    monkeypatch.setattr(_spawn, "fork_exec", refuses)
    monkeypatch.setattr(_spawn, "_FAST", True)  # (set back after the test)
    assert run(["echo", "hi"]) == (0, b"hi\n", b"")
    assert _spawn._FAST is False
    assert run(["echo", "again"]) == (0, b"again\n", b"")


def test_a_bad_argument_is_a_type_error_and_the_fast_way_stays(way: str) -> None:
    """Not every TypeError means fork_exec changed: a bad argv is the caller's."""
    with pytest.raises(TypeError):
        run(["echo", 1])  # type: ignore[list-item]
    assert (way == "fork_exec") == _spawn._FAST  # (also checked by the fixture)


def test_ctrl_c_while_a_command_starts_leaves_it_neither_running_nor_unreaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyboardInterrupt after fork_exec returned, before the command is handed
    back: nobody could stop or reap it, so it is killed and reaped there."""
    if not _spawn._FAST:
        pytest.skip("this Python starts commands through Popen only")
    started: list[int] = []
    real = _spawn.fork_exec

    def fork_exec(*args: object) -> int:
        started.append(real(*args))
        return started[-1]

    def interrupted(fd: int) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(_spawn, "fork_exec", fork_exec)
    monkeypatch.setattr(_spawn, "_read_all", interrupted)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        run(["sleep", "30"])
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ChildProcessError):  # reaped already
        os.waitpid(started[0], os.WNOHANG)


def test_this_python_takes_the_fast_way() -> None:
    """On the CPython versions whose fork_exec is known, the fast way is the one used."""
    known = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 14)
    if not known or sys.platform == "win32":
        pytest.skip("not a CPython whose fork_exec is known")
    proc = start(["true"])
    assert type(proc) is Process  # (the Popen way gives its subclass)
    assert proc.wait() == 0
    done(proc)
