"""The program a ``processes`` mode worker runs, as its own interpreter.

It is loaded by file path, not as part of the ``whilst`` package, and imports
only what it needs (not even typing), so a worker is ready in about 20 ms, not
the 150 ms that importing whilst (asyncio, cloudpickle...) would cost; a
function pickled by value pulls in cloudpickle by itself when it is unpickled.

Protocol: frames of an 8-byte big-endian length and a pickle, over three pipes.
The parent sends ``(FN, 0, (sys.path, pickled function, working directory,
environment, timed))`` (a warm worker takes the new run's) then
``(RUN, tag, items)``; the worker answers each RUN with ``(tag, (start, ends,
values, errors))``: the columns of :class:`whilst._modes._base.Outcomes`, with
each error as ``(exception or None, "Type: message", traceback text)``. The
exception is None when it would not survive the trip back.

On the third pipe the parent may ask for a batch back (``tag``): a thread of the
worker takes the items of that batch it has not started and answers ``(tag,
n)``: the last ``n`` items (-1: all of them) are the parent's to run elsewhere,
and the batch's answer covers the ones before them.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
import types
from array import array

TYPE_CHECKING = False  # (typing itself would add a third to a worker's start-up)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

FN, RUN = "fn", "run"
HEADER = struct.Struct("!Q")
PROTOCOL = 5  # pickle's highest; pickle itself is imported where it is used (not by threads)
#: Whether this interpreter has a GIL (free-threaded builds may run without one),
#: which makes list() of an iterator take its items all at once.
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


def dumps(obj: Any) -> bytes:
    """Plain pickle when it can (fast), cloudpickle for lambdas and closures."""
    import pickle

    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(obj, PROTOCOL)  # type: ignore[no-any-return]


def write_frame(fd: int, data: bytes) -> None:
    """Write one whole frame to a blocking file descriptor."""
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> bytes | None:
    """Read one whole frame from a blocking file descriptor; None at end of file."""
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    data = _read_exact(fd, HEADER.unpack(header)[0])
    if data is None:
        return None
    return bytes(data)


def _read_exact(fd: int, n: int) -> bytearray | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def as_raised(exc: BaseException) -> BaseException:
    """What the task's function raised: a StopIteration that crossed a coroutine on
    its way out (whilst's, or the task's own) became a RuntimeError, by PEP 479,
    with the original as its cause. Every mode gives the original."""
    cause = exc.__cause__
    pep479 = exc.args == ("coroutine raised StopIteration",)
    return cause if type(exc) is RuntimeError and type(cause) is StopIteration and pep479 else exc


def _wire(exc: BaseException) -> tuple[BaseException | None, str, str]:
    """An exception as it travels back: itself when it survives pickling, and its text."""
    import pickle
    import traceback

    frames = exc.__traceback__  # from the task's own first frame, not this module's
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    kept: BaseException | None = exc
    try:
        pickle.loads(dumps(exc))  # an exception with a custom __init__ may not round-trip
    except Exception:
        kept = None
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # its __str__ raises
        text = f"{type(exc).__name__}: (its message could not be shown)"
    return (kept, text, tb)


_loaded: dict[bytes, Any] = {}  # a cluster worker's functions, loaded once each


def load_function(payload: tuple[list[str], bytes]) -> Any:
    """On a Dask or Ray worker: the run's function as processes mode sends it (by
    name, or by value from ``__main__``), with the caller's ``sys.path`` added so
    that a module of the caller's can be found."""
    import pickle

    path, data = payload
    fn = _loaded.get(data)
    if fn is None:
        sys.path.extend(p for p in path if p not in sys.path)
        fn = _loaded[data] = pickle.loads(data)
    return fn


def _await(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def run_batch(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    fail: Callable[[BaseException], Any] = _wire,
    await_: Callable[[Any], Any] = _await,
    timed: bool = True,
) -> tuple[float, array[float], list[Any], dict[int, Any]]:
    """Run ``fn`` on each item, one after another: the columns of an Outcomes.

    ``timed``: each item's end read from the clock; else (no one will look at a
    task's own times) only the batch's, for every item. A clock read costs as
    much as a tiny task: 100,000 of them took 4 ms of each worker's 9.

    Shared by worker processes and threads mode (which keeps errors as they are).
    """
    values: list[Any] = []
    ends = array("d")
    errors: dict[int, Any] = {}
    now, keep, end, coroutine = time.time, values.append, ends.append, types.CoroutineType
    start = now()
    rest = iter(items)
    while True:  # one try around the whole loop, re-entered after a failure: no per-item setup
        try:  # (a for loop: extend(map()) would take a StopIteration fn raises for the end)
            for item in rest:
                value = fn(item)
                if type(value) is coroutine:  # a lambda returning a coroutine
                    value = await_(value)
                keep(value)
                if timed:
                    end(now())
            break
        except BaseException as exc:  # the task's error is its result
            errors[len(values)] = fail(as_raised(exc))
            keep(None)
            if timed:
                end(now())
    if not timed:
        ends = array("d", [now()]) * len(values)
    return start, ends, values, errors


def awaitable(value: Any) -> bool:
    """Whether what a plain function returned is to be awaited: a coroutine, or any
    awaitable (an asyncio Future, aiohttp's ``session.get(url)``)."""
    return type(value) is types.CoroutineType or hasattr(type(value), "__await__")


async def arun_batch(
    call: Callable[[Any], Any],
    items: Iterable[Any],
    fail: Callable[[BaseException], Any] = _wire,
    errors: dict[int, Any] | None = None,
    start: float | None = None,
) -> tuple[float, array[float], list[Any], dict[int, Any]]:
    """:func:`run_batch` on the running event loop: ``call`` of each item in turn,
    a coroutine it returns awaited. Items already in ``errors`` are not called
    (their call raised elsewhere). A cancellation of the running task (a timeout,
    the run's stop) goes on; one a coroutine raised of itself is its error.

    Shared by worker processes serving a coroutine function and auto mode once
    its function proved to return coroutines."""
    import asyncio

    values: list[Any] = []
    ends = array("d")
    errors = dict(errors or {})
    now = time.time
    start = now() if start is None else start
    for i, item in enumerate(items):
        value = None
        if i not in errors:
            try:
                value = call(item)
                if awaitable(value):
                    value = await value
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                value, errors[i] = None, fail(exc)
            except BaseException as exc:  # the task's error is its result
                value, errors[i] = None, fail(as_raised(exc))
        values.append(value)
        ends.append(now())
    return start, ends, values, errors


def _encode(tag: int, outcomes: tuple[float, array[float], list[Any], dict[int, Any]]) -> bytes:
    try:
        return dumps((tag, outcomes))
    except Exception:  # some value cannot be pickled: fail just that task
        _, _, values, errors = outcomes
        for i, value in enumerate(values):
            try:
                dumps(value)
            except Exception as exc:
                what = (
                    f"TypeError: the task returned a value of type {type(value).__name__} "
                    f"that cannot be sent back from a worker process: {exc}"
                )
                values[i], errors[i] = None, (None, what, "")
        return dumps((tag, outcomes))


def _load(payload: bytes) -> Any:
    """The run's function, or one that fails every task saying why it could not load."""
    import pickle

    try:
        return pickle.loads(payload)
    except Exception as exc:
        message = (
            f"the worker process could not load the function ({type(exc).__name__}: {exc}); "
            "define it in a module the workers can import, or use mode='threads'"
        )

        def cannot_load(item: Any) -> Any:
            raise RuntimeError(message)

        return cannot_load


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's async __call__
    )


async def _serve_async(read_fd: int, send: Callable[[bytes], None], fn: Any) -> bytes | None:
    """Serve a coroutine function: every item runs as a task on this worker's loop,
    so many I/O-bound tasks overlap inside each process. Returns the next message
    that is not a RUN (a new function), or None at end of input."""
    import asyncio
    import pickle

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    def readable() -> None:
        data = read_frame(read_fd)
        if data is None:
            loop.remove_reader(read_fd)
        inbox.put_nowait(data)

    async def run(tag: int, items: list[Any]) -> None:
        send(_encode(tag, await arun_batch(fn, items)))

    loop.add_reader(read_fd, readable)
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
        loop.remove_reader(read_fd)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class _Batches:
    """The batches a worker runs, as the thread that gives items back sees them."""

    def __init__(self, write_fd: int) -> None:
        import threading

        self.write_fd = write_fd
        self.lock = threading.Lock()  # one frame at a time to the parent; the fields below
        self.tag = -1  # the batch started last (tags grow: a later one has not started)
        self.rest: Iterator[Any] = iter(())  # its items not started yet
        self.skip: set[int] = set()  # batches given back whole before they started

    def send(self, data: bytes) -> None:
        with self.lock:
            write_frame(self.write_fd, data)

    def start(self, tag: int, items: list[Any]) -> Iterator[Any]:
        """The items of batch ``tag`` to run: none if it was all given back."""
        with self.lock:
            self.tag = tag
            self.rest = iter(() if tag in self.skip else items)
            self.skip.discard(tag)
            return self.rest

    def give_back(self, control_fd: int) -> None:
        """Answer each ask for a batch's items not started: ``(tag, n)``, the last
        ``n`` of them are the parent's (-1: all, the batch had not started)."""
        import pickle

        while (data := read_frame(control_fd)) is not None:
            tag = pickle.loads(data)
            with self.lock:  # the answer goes out before the batch's own
                if tag == self.tag:
                    # list() drains the iterator in C, holding the GIL: the worker gets
                    # every item before the ones taken, or none of them (so not without).
                    n = len(list(self.rest)) if GIL else 0
                elif tag > self.tag:  # queued behind the batch running: none of it runs
                    self.skip.add(tag)
                    n = -1
                else:
                    n = 0  # done already
                try:
                    write_frame(self.write_fd, dumps((tag, n)))
                except BrokenPipeError:  # the parent is gone: see below
                    break
        # End of file: the parent is gone, even by kill -9 (the kernel closed its
        # end). Stop now, and what this worker's task started with it, as the
        # parent would. (Not PR_SET_PDEATHSIG: that fires when the *thread* that
        # started the worker ends, and warm workers outlive the run's threads.)
        os.killpg(os.getpgrp(), signal.SIGKILL)


def serve(read_fd: int, write_fd: int, control_fd: int = -1) -> None:
    import pickle
    import threading

    batches = _Batches(write_fd)
    if control_fd >= 0:
        threading.Thread(target=batches.give_back, args=(control_fd,), daemon=True).start()
    fn: Any = None
    timed = True
    data: bytes | None = None
    while True:
        if data is None and (data := read_frame(read_fd)) is None:
            return  # the parent is gone or done with us
        op, tag, payload = pickle.loads(data)
        data = None
        if op == FN:
            path, pickled, cwd, environ, timed = payload
            sys.path[:] = path
            try:  # noqa: SIM105 - contextlib would add to a worker's start-up
                os.chdir(cwd)
            except OSError:  # (gone since: stay where it is)
                pass
            if os.environ != environ:
                os.environ.clear()
                os.environ.update(environ)
            fn = _load(pickled)
            if _is_async(fn):
                import asyncio

                if (data := asyncio.run(_serve_async(read_fd, batches.send, fn))) is None:
                    return
        else:
            ran = run_batch(fn, batches.start(tag, payload), timed=timed)
            batches.send(_encode(tag, ran))


def main(read_fd: int, write_fd: int, parent: int, control_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for fd in (read_fd, write_fd, control_fd):
        # Not for a command a task runs: one left running would hold the pipes open,
        # and the parent would not see this worker's end until it ended too.
        os.set_inheritable(fd, False)
    if os.getppid() != parent:
        return  # the parent died already
    try:  # noqa: SIM105 - contextlib would add to a worker's start-up
        serve(read_fd, write_fd, control_fd)
    except BrokenPipeError:  # the parent died (kill -9) as a result went out: no one to tell
        pass
