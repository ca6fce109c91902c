"""Starting a command and waiting for it, at less cost than ``subprocess.Popen``.

``whilst run`` starts one process per job, from several threads at once, and on
a small machine the Python work around each start competes with the jobs
themselves. ``Popen`` spends about 60 µs of it (under the GIL) on options
whilst never uses; :func:`spawn` calls the primitive ``Popen`` itself uses,
``_posixsubprocess.fork_exec`` (vfork and exec, the GIL released meanwhile),
with the same arguments ``Popen`` would give it, and reads the child's exec
error the same way. 2,000 jobs of ``true`` at -j 8: 1.32 s became 1.24 s, with
0.14 s less CPU (measured).

That primitive is CPython's own, with the same arguments in 3.11 to 3.14 (but
the last, ``allow_vfork``, gone in 3.14): elsewhere (another version or
interpreter, or one whose ``fork_exec`` wants other arguments after all) the
command starts through ``Popen``, as before; both give a :class:`Process`.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

if sys.platform != "win32":
    import fcntl
    from _posixsubprocess import fork_exec

_FAST = (
    sys.platform != "win32"
    and sys.implementation.name == "cpython"
    and (3, 11) <= sys.version_info[:2] <= (3, 14)
)
_VFORK_ARG = sys.version_info < (3, 14)  # 3.14 dropped fork_exec's last argument, allow_vfork
_COUNT_ERRORS = ("fork_exec() takes exactly", "fork_exec expected")  # 3.11; 3.12 on


class Process:
    """A started command: its pid, and its exit status once it ended (a signal
    that ended it as a negative number, as ``Popen.returncode``). Safe to wait
    for from several threads."""

    out: int  # the read ends of its stdout and stderr pipes
    err: int

    def __init__(self, pid: int, argv: list[str]) -> None:
        self.pid = pid
        self._argv = argv
        self._code: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        """The exit status if it has ended (reaping it), else None."""
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, waiting at most ``timeout`` seconds for it to end
        (``subprocess.TimeoutExpired`` after that)."""
        if timeout is None:
            while (code := self._reap(0)) is None:  # (waitpid may say 0 all the same)
                pass
            return code
        end, pause = time.monotonic() + timeout, 0.0005
        while (code := self.poll()) is None:  # as Popen.wait does
            left = end - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self._argv, timeout)
            pause = min(pause * 2, left, 0.05)
            time.sleep(pause)
        return code

    def _reap(self, flags: int) -> int | None:
        # One waitpid at a time (a second one would find no child). Only a blocking
        # wait waits for the lock: a poll while another thread waits returns None,
        # so a thread stopping the command is never held up by one waiting for it.
        if not self._lock.acquire(blocking=not flags):
            return self._code
        try:
            if self._code is None:
                try:
                    pid, status = os.waitpid(self.pid, flags)
                except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): no status
                    pid, status = self.pid, 0
                if pid == self.pid and os.WIFSTOPPED(status):  # (as Popen: when traced)
                    self._code = -os.WSTOPSIG(status)
                elif pid == self.pid:
                    self._code = os.waitstatus_to_exitcode(status)
            return self._code
        finally:
            self._lock.release()


class _Started(Process):
    """A command started through ``Popen``, which waits for it too."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        super().__init__(popen.pid, popen.args)  # type: ignore[arg-type]
        self._popen = popen

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._popen.wait(timeout)


def spawn(argv: list[str], path: str | None, *, stdin: int) -> Process:
    """Start ``argv`` (the program at ``path``, or looked up on PATH) in a session
    of its own, with ``stdin`` as its stdin, its stdout and stderr into two pipes
    whose read ends are :attr:`Process.out` and :attr:`Process.err`, no other file
    descriptor, and its signals as they were before Python changed them (as
    ``Popen`` does). An OSError, as from ``Popen``, when it cannot run."""
    out, out_w = os.pipe()
    try:
        err, err_w = os.pipe()
    except BaseException:
        os.close(out)
        os.close(out_w)
        raise
    try:
        process = _fork_exec(argv, path, stdin, out_w, err_w) if _FAST else None
        if process is None:
            process = _Started(
                subprocess.Popen(
                    argv,
                    executable=path,
                    stdin=stdin,
                    stdout=out_w,
                    stderr=err_w,
                    start_new_session=True,
                )
            )
    except BaseException:
        os.close(out)
        os.close(err)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    process.out, process.err = out, err
    return process


def _fork_exec(
    argv: list[str], path: str | None, stdin: int, stdout: int, stderr: int
) -> Process | None:
    """The command started as ``Popen`` would; None (and Popen from now on) if this
    Python's ``fork_exec`` wants other arguments."""
    global _FAST
    executable = argv[0] if path is None else path
    sys.audit("subprocess.Popen", executable, argv, None, None)
    program = os.fsencode(executable)
    if b"/" in program:  # a path, not a name to look up on PATH
        candidates: tuple[bytes, ...] = (program,)
    else:  # as os.execvp searches
        candidates = tuple(os.path.join(os.fsencode(d), program) for d in os.get_exec_path())
    # The child's exec error comes back through this pipe; it closes at a successful
    # exec. Above 0-2, which the child makes its stdin, stdout and stderr.
    error_in, error_out = os.pipe()
    try:
        if error_out < 3:
            low, error_out = error_out, fcntl.fcntl(error_out, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(low)
        args: list[Any] = [
            argv, candidates, True, (error_out,), None, None,
            stdin, -1, -1, stdout, -1, stderr,
            error_in, error_out,
            True, True, -1, None, None, None, -1, None,
        ]  # fmt: skip
        if _VFORK_ARG:
            args.append(getattr(subprocess, "_USE_VFORK", True))
        try:
            process = Process(fork_exec(*args), argv)
        except TypeError as exc:
            if not str(exc).startswith(_COUNT_ERRORS):  # (not about how many arguments)
                raise
            _FAST = False
            return None
    except BaseException:
        os.close(error_in)
        os.close(error_out)
        raise
    os.close(error_out)
    try:
        report = _read_all(error_in)
    except BaseException:  # (Ctrl-C): the command must not run on, unseen
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        raise
    finally:
        os.close(error_in)
    if report:
        process.wait()  # it never ran: reap it
        raise _child_error(report, executable)
    return process


def _read_all(fd: int, most: int = 50_000) -> bytes:
    data = b""
    while (part := os.read(fd, most)) and len(data) <= most:
        data += part
    return data


def _child_error(report: bytes, executable: str) -> Exception:
    """The exception the child reported, as ``Popen`` raises it:
    ``OSError:<errno in hex>:<where>``."""
    try:
        name, number, where = report.split(b":", 2)
        kind = getattr(builtins, name.decode("ascii"), subprocess.SubprocessError)
        errno = int(number, 16)
    except ValueError:
        return subprocess.SubprocessError(f"bad exception data from child: {report!r}")
    if isinstance(kind, type) and issubclass(kind, OSError) and errno:
        filename = None if where.startswith(b"noexec") else executable
        return kind(errno, os.strerror(errno), filename)
    return subprocess.SubprocessError(where.decode(errors="replace"))
