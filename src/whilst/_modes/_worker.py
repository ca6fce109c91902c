"""The program a ``processes`` mode worker runs (started as its own interpreter).

Protocol, over two pipes framed by :class:`multiprocessing.connection.Connection`:
the parent sends pickled ``(op, tag, payload)`` tuples; the worker answers each
``RUN`` with ``(tag, outcomes)``, one outcome per item, in order:
``(True, value, start, end)`` or ``(False, (exception, traceback text), start, end)``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

FN, RUN = "fn", "run"
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class RemoteError(Exception):
    """Stands in for a task's exception that could not be pickled back."""


def dumps(obj: Any) -> bytes:
    """Plain pickle when it can (fast), cloudpickle for lambdas and closures."""
    try:
        return pickle.dumps(obj, _PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]


def _failure(exc: BaseException, start: float) -> tuple[bool, Any, float, float]:
    tb = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(dumps(exc))  # an exception with a custom __init__ may not round-trip
    except Exception:
        exc = RemoteError(f"{type(exc).__name__}: {exc}")
    return (False, (exc, tb), start, time.time())


def _run_one(fn: Any, item: Any) -> tuple[bool, Any, float, float]:
    start = time.time()
    try:
        value = fn(item)
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except BaseException as exc:  # the task's error is its result
        return _failure(exc, start)
    return (True, value, start, time.time())


def _encode(tag: int, outcomes: list[tuple[bool, Any, float, float]]) -> bytes:
    try:
        return dumps((tag, outcomes))
    except Exception:  # some value cannot be pickled: fail just that task
        fixed = []
        for outcome in outcomes:
            try:
                dumps(outcome)
            except Exception as exc:
                err = TypeError(
                    f"the task returned a value of type {type(outcome[1]).__name__} that "
                    f"cannot be sent back from a worker process: {exc}"
                )
                outcome = (False, (err, ""), outcome[2], outcome[3])
            fixed.append(outcome)
        return dumps((tag, fixed))


async def _serve_async(conn: Connection, out: Connection, fn: Any) -> Any:
    """Serve a coroutine function: every item runs as a task on this worker's loop,
    so many I/O-bound tasks overlap inside each process. Returns the next message
    that is not a RUN (a new function), or None at end of input."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv_bytes())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(None)

    async def run(tag: int, items: list[Any]) -> None:
        outcomes = []
        for item in items:
            start = time.time()
            try:
                value = await fn(item)
            except BaseException as exc:
                outcomes.append(_failure(exc, start))
            else:
                outcomes.append((True, value, start, time.time()))
        out.send_bytes(_encode(tag, outcomes))

    loop.add_reader(conn.fileno(), readable)
    try:
        while (data := await inbox.get()) is not None:
            op, tag, payload = pickle.loads(data)
            if op != RUN:
                return data
            task = loop.create_task(run(tag, payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return None
    finally:
        loop.remove_reader(conn.fileno())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _load(payload: bytes) -> Any:
    """The run's function, or one that fails every task saying why it could not load."""
    try:
        return cloudpickle.loads(payload)
    except Exception as exc:
        error = RemoteError(
            f"the worker process could not load the function ({type(exc).__name__}: {exc}); "
            "define it in a module the workers can import, or use mode='threads'"
        )

        def cannot_load(item: Any) -> Any:
            raise error

        return cannot_load


def serve(conn: Connection, out: Connection) -> None:
    fn: Any = None
    data: bytes | None = None
    while True:
        if data is None:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone or done with us
        op, tag, payload = pickle.loads(data)
        data = None
        if op == FN:
            sys.path[:] = payload[0]
            fn = _load(payload[1])
            if inspect.iscoroutinefunction(fn):
                data = asyncio.run(_serve_async(conn, out, fn))
                if data is None:
                    return
        else:
            out.send_bytes(_encode(tag, [_run_one(fn, item) for item in payload]))


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the parent dies, even by kill -9."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(read_fd: int, write_fd: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    if os.getppid() != parent:
        return
    serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
