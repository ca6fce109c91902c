"""``processes``: functions in worker processes, for CPU-heavy work on every core.

Each worker is a fresh interpreter (``python -c`` of :mod:`whilst._modes._worker`)
reached over two pipes, not a ``multiprocessing`` pool:

- the scheduler knows which task each worker runs, so a dead worker fails
  exactly its own tasks instead of breaking the pool for everyone;
- no ``fork`` of a parent that has threads (the scheduler's loop may run in
  one), and no re-import of the user's ``__main__``: the function travels by
  value with cloudpickle, so lambdas, closures and scripts without an
  ``if __name__ == "__main__"`` guard all work;
- workers are kept warm between runs in the same process, so start-up (about
  50 ms, in parallel) is paid once.

Tiny tasks travel in batches (the scheduler sizes them); a coroutine function
runs on an event loop inside each worker, many tasks at once per worker.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import io
import itertools
import os
import pickle
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar

from .._errors import UsageTypeError, WorkerCrashed
from .._options import cpu_count
from . import _worker
from ._base import Mode, Outcomes, unwire
from ._tolerant import read_answer

# Load the worker by path under a name of its own: importing the whilst package
# in every worker would triple its start-up time.
_BOOT = (
    "import sys, importlib.util as u; "
    "s = u.spec_from_file_location('_whilst_worker', sys.argv[1]); m = u.module_from_spec(s); "
    "sys.modules[s.name] = m; s.loader.exec_module(m); "
    "m.main(*map(int, sys.argv[2:6]))"
)
_WORKER_FILE = str(Path(_worker.__file__).resolve())
_tags = itertools.count()
_ALONE = -1  # the number of the worker that reruns what a crash caught, one at a time
_fn_ids = itertools.count()


def by_value(obj: Any) -> bytes:
    """``obj`` pickled for a worker process: by plain pickle (fast), unless that
    fails or names something in ``__main__`` (a script's function, lambda or
    class, or an item or a ``functools.partial`` that refers to one; in a
    ``multiprocessing`` child, ``__mp_main__``), which a worker cannot import:
    cloudpickle sends that by value (as Dask does)."""
    try:
        data = pickle.dumps(obj, _worker.PROTOCOL)
    except Exception:
        pass
    else:
        if b"__main__" not in data:
            if b"__mp_main__" not in data:
                return data
            _by_value_in_mp_child()
    out = io.BytesIO()
    _pickler()(out, _worker.PROTOCOL).dump(obj)
    return out.getvalue()


@functools.cache
def _pickler() -> type:
    """cloudpickle's pickler, but keeping each code object's file name, which it
    sets to ``<dynamic-code>`` (for payloads alike wherever the code was written):
    a worker's traceback then names the script and shows its lines."""
    import cloudpickle

    base = cloudpickle.Pickler.dispatch_table

    def code_reduce(code: types.CodeType) -> Any:
        rebuild, args = base[types.CodeType](code)
        dynamic = "<dynamic-code>"  # (compared as a str only: bytes == str warns under -b)
        kept = tuple(code.co_filename if type(a) is str and a == dynamic else a for a in args)
        return rebuild, kept

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table: ClassVar[Any] = collections.ChainMap({types.CodeType: code_reduce}, base)

    return Pickler


@functools.cache
def _by_value_in_mp_child() -> None:
    """In a spawned ``multiprocessing`` child the script is ``__mp_main__``, which
    cloudpickle would send by name: have it send that module's things by value."""
    import cloudpickle

    module = sys.modules.get("__mp_main__")
    if module is not None:
        cloudpickle.register_pickle_by_value(module)


class _Worker:
    """One worker process and its three pipes."""

    def __init__(self) -> None:
        to_child, from_parent = os.pipe()
        from_child, to_parent = os.pipe()
        control_child, control = os.pipe()  # asks for a batch's items back
        ends = (to_child, to_parent, os.getpid(), control_child)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _WORKER_FILE, *map(str, ends)],
                pass_fds=(to_child, to_parent, control_child),
                stdin=subprocess.DEVNULL,
                process_group=0,  # its own group: killing it kills what its tasks started
            )
        finally:
            os.close(to_child)
            os.close(to_parent)
            os.close(control_child)
        self.send_fd, self.recv_fd, self.control_fd = from_parent, from_child, control
        # Both ends are used from the loop, which must never block on a full pipe
        # (a worker blocked writing results while we block writing items would
        # deadlock), so writes that do not fit wait in outbox for the pipe to drain.
        os.set_blocking(from_child, False)
        os.set_blocking(from_parent, False)
        os.set_blocking(control, False)
        self.inbox = bytearray()  # bytes read from the worker, not yet a whole message
        self.outbox = bytearray()  # bytes for the worker the pipe has not taken yet
        self.pending: dict[int, asyncio.Future[list[Any]]] = {}
        self.empty: set[int] = set()  # pending tags of empty runs (has it loaded the function?)
        # Batches asked back, by tag: the answer's future and the batch's items list.
        self.asked: dict[int, tuple[asyncio.Future[list[Any]], list[Any]]] = {}
        self.fn_id = -1  # the function it was sent
        self.ready_fn = -1  # the function it has loaded (it answered a run after it)
        self.label = f"pid-{self.proc.pid}"
        self.dead = False
        # Readable once the process has exited (Linux): its end is noticed even
        # while something its task started without exec holds its pipes open.
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self.pidfd = -1

    def kill(self) -> None:
        """Kill the worker and every process its tasks left in its group (a command
        it ran, a pool it made): stopping a task means stopping all of it."""
        self.dead = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.release()

    def release(self) -> None:
        """Close this process's ends of the pipes."""
        for fd in (self.send_fd, self.recv_fd, self.control_fd, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Pool:
    """Idle workers kept warm between runs of this process."""

    def __init__(self) -> None:
        self.idle: list[_Worker] = []

    def get(self) -> _Worker:
        while self.idle:
            worker = self.idle.pop()
            if worker.proc.poll() is None:
                return worker
            worker.kill()
        return _Worker()

    def put(self, worker: _Worker) -> None:
        if len(self.idle) < max(cpu_count(), 8):
            self.idle.append(worker)
        else:
            worker.kill()

    def clear(self) -> None:
        while self.idle:
            self.idle.pop().kill()

    def forget(self) -> None:
        """In a child forked from this process: the workers are the parent's. Close
        this copy of their pipes and leave them be (no wait, no kill): the child's
        runs start workers of their own, and its exit stops none of the parent's."""
        while self.idle:
            self.idle.pop().release()


_pool = _Pool()
atexit.register(_pool.clear)
os.register_at_fork(after_in_child=_pool.forget)


class ProcessesMode(Mode):
    """One worker per slot for plain functions; for coroutine functions, one
    worker per CPU shared by the slots (each worker runs many at once)."""

    name = "processes"
    batching = True
    take_back_asks = True
    timeout_note = "its worker process was killed and replaced"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auto_batch = not self.is_async
        self._nworkers = self.limit if not self.is_async else min(self.limit, cpu_count())
        self._workers: dict[int, _Worker] = {}  # by worker number
        # Batches of the scheduler's in flight, by id of their items list: their
        # worker and tag, until their items not started are asked back (once).
        self._running: dict[int, tuple[_Worker, int]] = {}
        self._alone_lock = asyncio.Lock()
        self._fn_id = next(_fn_ids)
        # Pickled now, as the run is made (imap's call, not its first next()): a
        # function that cannot go to a worker is bad input, refused before any task.
        try:
            self._payload = by_value(self.fn)
        except Exception as exc:
            raise UsageTypeError(
                f"mode='processes' must send the function to worker processes, but it cannot "
                f"be pickled ({type(exc).__name__}: {exc}); define it at module level without "
                "references to open files, locks or sockets, or use mode='threads'"
            ) from None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A worker stays warm between runs: it takes this run's sys.path, working
        # directory and environment, as a thread would see them.
        payload, self._payload = self._payload, b""  # (held once: in the message below)
        setting = (list(sys.path), payload, os.getcwd(), dict(os.environ), self.timed)
        self._fn_message = pickle.dumps((_worker.FN, 0, setting))

    def _attach(self, number: int) -> _Worker:
        worker = self._workers.get(number)
        if worker is not None and not worker.dead:
            return worker
        worker = _pool.get()
        self._loop.add_reader(worker.recv_fd, self._readable, worker)
        if worker.pidfd >= 0:
            self._loop.add_reader(worker.pidfd, self._exited, worker)
        self._workers[number] = worker
        if worker.fn_id != self._fn_id:
            self._send(worker, self._fn_message)
            worker.fn_id = self._fn_id
        return worker

    def _send(self, worker: _Worker, message: bytes) -> None:
        pending = bool(worker.outbox)
        worker.outbox += _worker.HEADER.pack(len(message))
        worker.outbox += message
        if not pending:
            self._writable(worker)

    def _writable(self, worker: _Worker) -> None:
        outbox = worker.outbox
        try:
            while outbox:
                del outbox[: os.write(worker.send_fd, outbox)]
        except BlockingIOError:
            self._loop.add_writer(worker.send_fd, self._writable, worker)
            return
        except OSError:  # the worker is gone; its reader will tell
            outbox.clear()
        self._loop.remove_writer(worker.send_fd)

    def _readable(self, worker: _Worker) -> None:
        # Read what is there (the pipe is non-blocking) and cut whole frames out of it.
        fd, inbox = worker.recv_fd, worker.inbox
        gone = True  # end of file: the worker has exited
        try:
            while chunk := os.read(fd, 1 << 20):
                inbox += chunk
        except BlockingIOError:
            gone = False
        except OSError:
            pass
        self._deliver(worker)
        if gone:
            self._lost(worker)

    def _exited(self, worker: _Worker) -> None:
        """The worker's process has ended: take what it sent, then its loss."""
        if not worker.dead:
            self._readable(worker)
        if not worker.dead:
            self._lost(worker)

    def _unwatch(self, worker: _Worker) -> None:
        self._loop.remove_reader(worker.recv_fd)
        self._loop.remove_writer(worker.send_fd)
        if worker.pidfd >= 0:
            self._loop.remove_reader(worker.pidfd)

    def _deliver(self, worker: _Worker) -> None:
        inbox = worker.inbox
        header = _worker.HEADER
        while len(inbox) >= header.size:
            (size,) = header.unpack_from(inbox)
            start = header.size
            if len(inbox) < start + size:
                return
            with memoryview(inbox) as view:
                try:
                    tag, outcomes = pickle.loads(view[start : start + size])
                except Exception:  # something in it cannot be rebuilt here
                    tag, outcomes = read_answer(bytes(view[start : start + size]))
            del inbox[: start + size]
            if type(outcomes) is int:  # how many items of a batch asked back it gave back
                self._gave_back(worker, tag, outcomes)
                continue
            fut = worker.pending.pop(tag, None)
            worker.empty.discard(tag)
            if fut is not None and not fut.done():
                fut.set_result(outcomes)

    @staticmethod
    def _gave_back(worker: _Worker, tag: int, n: int) -> None:
        """The worker will not run the last ``n`` items of batch ``tag`` (-1: any):
        they leave its items list (whose answer, come or to come, covers the rest)."""
        fut, items = worker.asked.pop(tag, (None, []))
        taken = items[len(items) - n :] if n > 0 else items[:] if n < 0 else []
        del items[len(items) - len(taken) :]
        if fut is not None and not fut.done():
            fut.set_result(taken)

    def _lost(self, worker: _Worker) -> None:
        """The worker died: fail what it was running; the next batch gets a new one."""
        self._unwatch(worker)
        try:
            code = worker.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        worker.kill()
        self._fail_pending(worker, code, caught=False)

    def _kill(self, worker: _Worker) -> None:
        """Kill a worker to stop the attempt it runs; the next attempt gets a new one.
        Tasks of other slots running on it (coroutine functions share workers) were
        only caught: they run again without using a retry."""
        self._unwatch(worker)
        worker.kill()
        self._fail_pending(worker, worker.proc.returncode, caught=True)

    def _fail_pending(self, worker: _Worker, code: int | None, *, caught: bool) -> None:
        alone = len(worker.pending.keys() - worker.empty) <= 1  # (not counting load checks)
        for fut in worker.pending.values():
            if not fut.done():
                exc = WorkerCrashed(code)
                exc.caught, exc.alone = caught, alone
                fut.set_exception(exc)
        worker.pending.clear()
        worker.empty.clear()
        for tag in list(worker.asked):  # a dead worker gives nothing back: its batch fails
            self._gave_back(worker, tag, 0)

    async def prepare(self, slot: int) -> None:
        worker = self._attach(slot % self._nworkers)
        if worker.ready_fn != self._fn_id:
            try:
                await self.run_batch(slot, [])  # answered once it has loaded the function
            except WorkerCrashed as exc:
                exc.worker = exc.worker or worker.label  # (the task's result names it)
                raise
            worker.ready_fn = self._fn_id

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        try:
            return await self._run_on(self._attach(slot % self._nworkers), items, mine=True)
        except WorkerCrashed as exc:
            if exc.alone or exc.caught or len(items) != 1:  # (the scheduler splits batches)
                raise
        # The worker died running other work too (coroutines of other slots, or
        # this slot's next batch), so any of it may have killed it: run this
        # again on a worker that runs nothing else, one such rerun at a time.
        # Only what kills a worker alone ends crashed; the others get results.
        # (The wait for that worker counts toward the attempt's timeout.)
        async with self._alone_lock:
            alone = self._attach(_ALONE)
            try:
                outcomes = await self._run_on(alone, items)
            except WorkerCrashed as exc:
                exc.worker = alone.label  # it killed a worker of its own: the culprit
                raise
            return outcomes._replace(workers=[alone.label])

    async def _run_on(self, worker: _Worker, items: list[Any], mine: bool = False) -> Outcomes:
        """Run ``items`` on ``worker``; ``mine``: the scheduler's own list, which
        :meth:`take_back` may ask back."""
        tag = next(_tags)
        try:
            message = by_value((_worker.RUN, tag, items))
        except Exception:
            return await self._run_picklable(worker, items)
        fut = self._loop.create_future()
        worker.pending[tag] = fut
        if not items:
            worker.empty.add(tag)
        mine = mine and len(items) > 1 and not self.is_async
        if mine:
            self._running[id(items)] = (worker, tag)
        self._send(worker, message)
        try:
            start, ends, values, wired = await fut
        except asyncio.CancelledError:
            if worker.pending.pop(tag, None) is not None:
                self._kill(worker)  # the only way to stop what it runs
            raise
        finally:
            if mine:
                self._running.pop(id(items), None)
        return Outcomes(start, ends, values, unwire(wired), timed=self.timed)

    def unstarted(self, items: list[Any]) -> int:
        # Not known here without asking: all but the one it runs, until asked once.
        return len(items) - 1 if id(items) in self._running else 0

    async def take_back(self, items: list[Any]) -> list[Any]:
        running = self._running.pop(id(items), None)
        if running is None or running[0].dead:
            return []
        worker, tag = running
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        worker.asked[tag] = (fut, items)
        message = pickle.dumps(tag)
        try:
            os.write(worker.control_fd, _worker.HEADER.pack(len(message)) + message)
        except OSError:  # (a full pipe: a worker that has not read earlier asks)
            worker.asked.pop(tag, None)
            return []
        return await fut

    async def _run_picklable(self, worker: _Worker, items: list[Any]) -> Outcomes:
        """Some item cannot be pickled: fail just those (taking no time), run the rest."""
        errors: dict[int, BaseException] = {}
        for i, item in enumerate(items):
            try:
                by_value(item)
            except Exception as exc:
                errors[i] = UsageTypeError(
                    f"mode='processes' must send each item to a worker, but an item of type "
                    f"{type(item).__name__} cannot be pickled ({exc}); pass plain data instead"
                )
        good = [i for i in range(len(items)) if i not in errors]
        ran = await self._run_on(worker, [items[i] for i in good]) if good else None
        end = start = ran.start if ran is not None else time.time()
        ends, values = [0.0] * len(items), [None] * len(items)
        done = dict(zip(good, range(len(good)), strict=True))
        for i in range(len(items)):
            if (k := done.get(i)) is not None and ran is not None:
                end, values[i] = ran.ends[k], ran.values[k]
                if k in ran.errors:
                    errors[i] = ran.errors[k]
            ends[i] = end
        return Outcomes(start, ends, values, errors, timed=self.timed)

    def worker(self, slot: int) -> str:
        return self._attach(slot % self._nworkers).label

    async def close(self, *, abort: bool = False) -> None:
        for worker in self._workers.values():
            if worker.dead:
                continue
            self._unwatch(worker)
            if abort or worker.pending or worker.outbox:
                worker.kill()
            else:
                _pool.put(worker)
        self._workers.clear()
        if abort:
            _pool.clear()  # Ctrl-C: leave no worker process behind
