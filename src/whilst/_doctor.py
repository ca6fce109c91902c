"""``whilst doctor``: run an asyncio program and measure the seed's pitfalls in it.

A watchdog thread looks at each running event loop every ``interval`` seconds:
it posts a heartbeat callback to the loop, and when the heartbeat has not run
for ``threshold`` seconds the loop is blocked, so it samples the loop thread's
stack to find the line that blocks it (and reads the thread's CPU time to tell
a CPU loop from a wait). A block lasts from when the loop's turn that ran it
began (read off the loop's own frame as the block is seen: nothing from before
that turn counts, nor from before the loop began) until the heartbeat runs. The
same samples, taken while the loop is busy, show where the loop thread spends
its CPU. A coroutine never awaited is reported
where it was dropped (its warning comes as the last reference goes: for the
usual mistake, a bare ``greet()``, that is the line that created it), and a
task whose exception was never retrieved where ``asyncio.create_task`` was
called (tasks that ``gather`` and the like make are not traced). Nothing is done per
callback: the cost is a few samples a second.
Python's own coroutine origin tracking would give exact origins for every
coroutine, at about 5% of a loop-heavy program: ``origins=True`` turns it on.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import linecache
import math
import os
import sys
import sysconfig
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

#: Directories whose code is not the user's: the standard library, installed
#: packages and whilst itself. A finding points at the innermost frame elsewhere.
_NOT_YOURS = tuple(
    {
        os.path.realpath(p)
        for p in (
            sysconfig.get_paths()["stdlib"],
            sysconfig.get_paths()["platstdlib"],
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
            os.path.dirname(__file__),
        )
    }
)

FIXES = {
    "sleep": "use `await asyncio.sleep(...)`: time.sleep stops every other task",
    "http": "use an async HTTP client (aiohttp, httpx.AsyncClient), or run the calls in "
    "whilst's threads mode",
    "file": "read files off the loop: `await asyncio.to_thread(...)`, or whilst's threads mode",
    "subprocess": "use `asyncio.create_subprocess_exec`, or `whilst run` for many commands",
    "cpu": "CPU-heavy work blocks the loop: run it in whilst's processes mode (or a "
    "ProcessPoolExecutor via loop.run_in_executor)",
    "other": "move this blocking call off the event loop: `await asyncio.to_thread(...)`, or "
    "whilst's threads mode",
    "never_awaited": "await it (`await coro()`), or schedule it: `asyncio.create_task(coro())`",
    "lost_exception": "await the task (or `asyncio.gather` it) so its error is seen, or add a "
    "done callback that checks `task.exception()`",
    "cpu_bound": "the loop thread is busy computing: move that work to whilst's processes mode",
}


UVLOOP_NOTE = (
    "uvloop was in use, and its loops could not be watched (uvloop was imported before the "
    "doctor started): start the doctor first, or run with the standard asyncio loop"
)


@dataclass
class Finding:
    """One distinct problem: where (file, line, function), what, how often, and the fix."""

    kind: str  # blocking_call, cpu_bound, never_awaited, lost_exception
    file: str
    line: int
    function: str
    count: int = 0
    seconds: float = 0.0
    fix: str = ""
    call: str = ""  # the source line, or what it is
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Watched:
    """A loop being watched, from its thread."""

    loop: asyncio.AbstractEventLoop
    thread: int  # threading ident
    native: int  # the OS thread id, for its CPU time
    started: float = field(default_factory=time.monotonic)
    beat_sent: float | None = None  # when the pending heartbeat was posted
    beat_back: float = 0.0  # when the last one ran
    last_idle: float = 0.0  # when the loop thread was last seen waiting for work
    beat_back_before: float = 0.0  # when the heartbeat before the last one ran
    base_frame: Any = None  # a loop run in C (uvloop): the Python frame it waits in
    block: collections.Counter[tuple[str, int, str, str]] = field(
        default_factory=collections.Counter
    )
    block_cpu: float = 0.0  # the thread's CPU seconds when the block was seen
    block_began: float | None = None  # when the loop's turn that ran the block began
    depth: int = 0  # the thread's coroutine origin tracking depth before it was watched


class Doctor:
    """Watches every asyncio loop that runs while it is on (a context manager)."""

    def __init__(
        self,
        threshold: float = 0.1,
        interval: float = 0.04,
        live: Callable[[Finding], None] | None = None,
        origins: bool = False,
    ) -> None:
        self.threshold, self.interval, self.live = threshold, interval, live
        self.origins = origins
        self._created: weakref.WeakKeyDictionary[asyncio.Task[Any], tuple[str, int, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._findings: dict[tuple[str, str, int], Finding] = {}
        self._loops: dict[int, _Watched] = {}  # by id(loop)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self._samples = 0
        self._cpu: dict[int, float] = {}  # native thread id: CPU seconds at its start
        self._loop_cpu = 0.0  # CPU seconds of loop threads while watched
        self._loop_wall = 0.0
        self.started = self.ended = 0.0

    # -- switching on and off -----------------------------------------------

    def __enter__(self) -> Doctor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.started = time.monotonic()
        self._depth = sys.get_coroutine_origin_tracking_depth()
        if self.origins:
            sys.set_coroutine_origin_tracking_depth(max(self._depth, 1))
        self._warn = warnings._warn_unawaited_coroutine  # type: ignore[attr-defined]
        warnings._warn_unawaited_coroutine = self._unawaited  # type: ignore[attr-defined]
        self._run_forever = asyncio.BaseEventLoop.run_forever
        self._handler = asyncio.BaseEventLoop.default_exception_handler
        self._create_task = asyncio.create_task
        doctor = self

        def create_task(coro: Any, **kwargs: Any) -> Any:  # asyncio.create_task, traced
            task = doctor._create_task(coro, **kwargs)
            caller = sys._getframe(1)
            doctor._created[task] = (
                caller.f_code.co_filename,
                caller.f_lineno,
                caller.f_code.co_name,
            )
            return task

        def run_forever(loop: asyncio.BaseEventLoop) -> None:
            watched = doctor._watch(loop)
            try:
                doctor._run_forever(loop)
            finally:
                doctor._unwatch(watched)
                sys.set_coroutine_origin_tracking_depth(watched.depth)

        self._set_running = asyncio.events._set_running_loop
        other_loops: dict[int, _Watched] = {}  # by thread: a loop not of asyncio's own

        def set_running_loop(loop: Any) -> None:  # uvloop's loops say so here
            doctor._set_running(loop)
            if isinstance(loop, asyncio.BaseEventLoop):
                return  # watched by run_forever
            thread = threading.get_ident()
            if loop is not None and thread not in other_loops:
                watched = other_loops[thread] = doctor._watch(loop)
                watched.base_frame = sys._getframe(1)  # where it waits, from Python's view
                if loop.get_exception_handler() is None:  # hear its lost task exceptions

                    def handler(loop: Any, context: dict[str, Any]) -> None:
                        doctor._exception(context)
                        loop.default_exception_handler(context)

                    loop.set_exception_handler(handler)
            elif loop is None and thread in other_loops:
                doctor._unwatch(watched := other_loops.pop(thread))
                sys.set_coroutine_origin_tracking_depth(watched.depth)

        def default_exception_handler(loop: asyncio.BaseEventLoop, context: dict[str, Any]) -> None:
            doctor._exception(context)
            doctor._handler(loop, context)

        patched: Any = asyncio.BaseEventLoop
        patched.run_forever = run_forever
        patched.default_exception_handler = default_exception_handler
        asyncio.create_task = asyncio.tasks.create_task = create_task
        asyncio.events._set_running_loop = asyncio._set_running_loop = set_running_loop
        try:  # watch() entered inside a running loop: watch that one too
            self._inside: _Watched | None = self._watch(asyncio.get_running_loop())
        except RuntimeError:
            self._inside = None
        self._thread = threading.Thread(target=self._watchdog, name="whilst-doctor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        patched: Any = asyncio.BaseEventLoop
        patched.run_forever = self._run_forever
        patched.default_exception_handler = self._handler
        asyncio.create_task = asyncio.tasks.create_task = self._create_task
        asyncio.events._set_running_loop = asyncio._set_running_loop = self._set_running
        warnings._warn_unawaited_coroutine = self._warn  # type: ignore[attr-defined]
        sys.set_coroutine_origin_tracking_depth(self._depth)
        for watched in list(self._loops.values()):
            self._unwatch(watched)
        self.uvloop_unwatched = "uvloop" in sys.modules and not self._loop_wall
        self.ended = time.monotonic()

    # -- what it finds -------------------------------------------------------

    @property
    def cpu_share(self) -> float:
        """The share of the loop threads' time spent on the CPU (or waiting for one)."""
        return self._loop_cpu / self._loop_wall if self._loop_wall > 0 else 0.0

    def findings(self) -> list[Finding]:
        """Every distinct problem, the costliest first; with the CPU-bound finding
        when the loop threads spent most of their time computing."""
        found = list(self._findings.values())
        # Busy half the time, for a quarter of a second at least: a program that
        # is over in a moment is not CPU-bound, whatever its share.
        if self.cpu_share >= 0.5 and self._loop_cpu >= 0.25 and self._busy:
            (file, line, function), n = self._busy.most_common(1)[0]
            top = ", ".join(
                f"{f}:{ln} {fn} ({k * 100 // max(self._samples, 1)}%)"
                for (f, ln, fn), k in self._busy.most_common(5)
            )
            found.append(Finding(
                "cpu_bound", file, line, function, n, self._loop_cpu, FIXES["cpu_bound"],
                _source(file, line), f"the loop thread was on the CPU (or waiting for one) "
                f"{self.cpu_share:.0%} of the time; where: {top}",
            ))  # fmt: skip
        return sorted(found, key=lambda f: (-f.seconds, -f.count))

    def _add(
        self,
        kind: str,
        where: tuple[str, int, str],
        seconds: float,
        *,
        call: str = "",
        detail: str = "",
        fix_key: str = "",
    ) -> None:
        file, line, function = where
        with self._lock:
            finding = self._findings.get((kind, file, line))
            if finding is None:
                fix = FIXES.get(fix_key or kind, "")
                finding = self._findings[(kind, file, line)] = Finding(
                    kind, file, line, function, fix=fix, call=call, detail=detail
                )
            finding.count += 1
            finding.seconds += seconds
        if self.live is not None:
            self.live(finding)

    def _unawaited(self, coro: Any) -> None:
        origin = getattr(coro, "cr_origin", None)
        # Where it was created (with origins=True), else where it was dropped.
        where = origin[0] if origin else _yours(_stack(sys._getframe(1))) or ("?", 0, "?")
        name = getattr(coro, "__qualname__", "coroutine")
        detail = f"coroutine {name!r} was never awaited"
        if not origin:  # (a coroutine kept a while is dropped far from where it was made)
            detail += "; this is where it was dropped: --origins shows where it was made"
        self._add("never_awaited", where, 0.0, call=_source(where[0], where[1]),
                  detail=detail)  # fmt: skip
        # Python's own warning, still pointing at the user's line (as the original
        # hook does, called from the same place).
        message = f"coroutine {name!r} was never awaited"
        if origin:
            frames = "".join(f'  File "{f}", line {n}, in {fn}\n' for f, n, fn in reversed(origin))
            message += f"\nCoroutine created at (most recent call last)\n{frames}".rstrip("\n")
        warnings.warn(message, RuntimeWarning, stacklevel=2, source=coro)

    def _exception(self, context: dict[str, Any]) -> None:
        task = context.get("future")
        error = context.get("exception")
        if not isinstance(task, asyncio.Task) or "never retrieved" not in context.get(
            "message", ""
        ):
            return
        origin = getattr(task.get_coro(), "cr_origin", None)
        if origin:
            where = origin[0]
        elif task in self._created:
            where = self._created[task]
        else:
            where = _yours(_frames_of(error.__traceback__) if error else iter(())) or ("?", 0, "?")
        self._add("lost_exception", where, 0.0, call=_source(where[0], where[1]),
                  detail=f"{type(error).__name__}: {error}")  # fmt: skip

    # -- the watchdog --------------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop) -> _Watched:
        """Watch ``loop``: called in its own thread (origin tracking is per thread)."""
        watched = _Watched(loop, threading.get_ident(), threading.get_native_id())
        watched.depth = sys.get_coroutine_origin_tracking_depth()
        if self.origins:
            sys.set_coroutine_origin_tracking_depth(max(watched.depth, 1))
        self._cpu[watched.native] = _thread_cpu(watched.native)
        with self._lock:
            self._loops[id(loop)] = watched
        return watched

    def _unwatch(self, watched: _Watched) -> None:
        with self._lock:
            if self._loops.pop(id(watched.loop), None) is None:
                return
        self._end_block(watched, time.monotonic())
        cpu = _thread_cpu(watched.native) - self._cpu.pop(watched.native, 0.0)
        self._loop_cpu += max(cpu, 0.0)
        self._loop_wall += time.monotonic() - watched.started

    def _watchdog(self) -> None:
        while not self._stop.wait(self.interval):
            frames = sys._current_frames()
            with self._lock:
                watched_loops = list(self._loops.values())
            now = time.monotonic()
            for watched in watched_loops:
                frame = frames.get(watched.thread)
                if frame is None:
                    continue
                waiting = _waiting(frame) or frame is watched.base_frame
                if waiting:
                    watched.last_idle = now
                else:
                    self._samples += 1
                    where = _yours(_stack(frame), below_loop=False)
                    if where is not None:  # (None: the loop's own work between tasks)
                        self._busy[where] += 1
                # A heartbeat always in flight: the loop is blocked when the last one
                # is still pending and the loop was last seen turning (idle, or
                # running a heartbeat, or starting) a threshold ago.
                sent = watched.beat_sent
                turned = max(watched.last_idle, watched.beat_back, watched.started)
                if sent is None:
                    watched.beat_sent = now
                    try:
                        watched.loop.call_soon_threadsafe(self._beat, watched, now)
                    except RuntimeError:  # the loop closed meanwhile
                        continue
                elif now - turned >= self.threshold and not waiting:
                    began = _turn_began(frame, watched.loop)
                    if began == math.inf:
                        continue  # the loop is between turns: these frames came after a block
                    stack = list(_stack(frame))
                    where = _yours(iter(stack), below_loop=False) or _yours(iter(stack))
                    assert where is not None
                    cpu = _thread_cpu(watched.native) if not watched.block else 0.0
                    with self._lock:
                        if watched.beat_sent != sent:  # the heartbeat came back meanwhile:
                            continue  # that block is over (the frames were seen before)
                        if not watched.block:
                            watched.block_cpu, watched.block_began = cpu, began
                        watched.block[(*where, _kind(stack))] += 1

    def _beat(self, watched: _Watched, sent: float) -> None:
        """Runs on the loop: the heartbeat came back; if it was late, a block ended."""
        self._end_block(watched, time.monotonic(), sent)

    def _end_block(self, watched: _Watched, now: float, sent: float | None = None) -> None:
        with self._lock:  # (the watchdog adds to a block only while its heartbeat is out)
            sent = watched.beat_sent if sent is None else sent
            watched.beat_back_before = watched.beat_back
            watched.beat_sent, watched.beat_back = None, now
            block, watched.block = watched.block, collections.Counter()
            step_began, watched.block_began = watched.block_began, None
        if not block or sent is None:
            return
        if step_began is not None:  # read off the loop's own frame: when its turn began
            began = max(step_began, watched.beat_back_before, watched.started)
            if now - began < self.threshold:  # seen in a turn that began after the block
                return
        else:  # (a loop run in C) after the loop was last seen idle, or running a
            # heartbeat, or starting, and before the pending heartbeat was posted
            began = min(sent, max(watched.last_idle, watched.beat_back_before, watched.started,
                                  sent - self.threshold))  # fmt: skip
        lag = now - began
        cpu = _thread_cpu(watched.native) - watched.block_cpu
        total = sum(block.values())
        # Several blocking calls in a row, no await between: each gets its share.
        for (file, line, function, kind), n in block.most_common():
            seconds = lag * n / total
            # Half the time sampled: a wait computes next to nothing, and a CPU loop
            # shares the interpreter lock with this watchdog (the seed's measured
            # 1.5 s of CPU in 2.2-2.8 s of samples, and fell below 70% at times).
            if kind == "other" and cpu >= 0.5 * total * self.interval:
                kind = "cpu"
            what = "a CPU loop: " if kind == "cpu" else ""
            detail = f"{what}the event loop did not run for {lag:.3f} s"
            self._add("blocking_call", (file, line, function), seconds,
                      call=_source(file, line), fix_key=kind, detail=detail)  # fmt: skip


_RUN_ONCE = asyncio.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]


def _turn_began(frame: Any, loop: asyncio.AbstractEventLoop) -> float | None:
    """When the loop's current turn began running its callbacks (``end_time`` in
    ``BaseEventLoop._run_once``, read off the loop thread's stack); ``inf`` between
    turns; None for a loop that turns in C, or keeps a time of its own."""
    if type(loop).time is not asyncio.BaseEventLoop.time or "end_time" not in _RUN_ONCE.co_varnames:
        return None
    while frame is not None and frame.f_code is not _RUN_ONCE:
        frame = frame.f_back
    if frame is None:
        return None
    end_time = frame.f_locals.get("end_time")
    if not isinstance(end_time, float):
        return math.inf
    return end_time - getattr(loop, "_clock_resolution", 0.0)


def _waiting(frame: Any) -> bool:
    """Whether the loop thread is idle: waiting in its selector for I/O or a timer."""
    code = frame.f_code
    return code.co_name in ("select", "poll", "epoll", "_run_once") and (
        "selectors" in code.co_filename or "base_events" in code.co_filename
    )


def _stack(frame: Any) -> Iterator[tuple[str, int, str]]:
    """(file, line, function) from the innermost frame out."""
    while frame is not None:
        yield frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back


def _frames_of(tb: Any) -> Iterator[tuple[str, int, str]]:
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    return iter(frames[::-1])


def _yours(
    stack: Iterator[tuple[str, int, str]], below_loop: bool = True
) -> tuple[str, int, str] | None:
    """The innermost frame in the user's code (else the innermost of all). With
    ``below_loop`` False, only one that the event loop runs: None when the loop
    is doing its own work (the user's frames are those that started the loop)."""
    first = None
    for file, line, function in stack:
        if first is None:
            first = (file, line, function)
        if _is_yours(file):
            return file, line, function
        if not below_loop and function in ("_run_once", "run_forever") and "asyncio" in file:
            return None
    return first or ("?", 0, "?")


@functools.lru_cache(maxsize=4096)
def _is_yours(file: str) -> bool:
    return not file.startswith("<") and not os.path.realpath(file).startswith(_NOT_YOURS)


def _kind(stack: list[tuple[str, int, str]]) -> str:
    """What blocks, from the modules on the stack and the user's line."""
    files = " ".join(f for f, _, _ in stack)
    where = _yours(iter(stack)) or ("?", 0, "?")
    text = _source(where[0], where[1])
    if "time.sleep" in text or ("sleep(" in text and "asyncio" not in text):
        return "sleep"
    if any(m in files for m in ("requests", "urllib", "http/client", "urllib3", "socket.py")):
        return "http"
    if "subprocess" in files:
        return "subprocess"
    if "open(" in text or ".read" in text or "_pyio" in files or "pathlib" in files:
        return "file"
    return "other"


def _source(file: str, line: int) -> str:
    return linecache.getline(file, line).strip()


def _thread_cpu(native: int) -> float:
    """Seconds a thread of this process has computed: on a CPU, or ready to run and
    waiting for one (Linux's schedstat, in nanoseconds; CPU time in clock ticks
    where the kernel keeps no schedstat; 0 elsewhere). The wait counts: a CPU loop
    on a machine busy with other programs gets a CPU half the time, and is still
    a CPU loop, not a wait for I/O."""
    try:
        with open(f"/proc/self/task/{native}/schedstat", "rb") as f:
            on_cpu, ready, _ = f.read().split()
        if int(on_cpu):  # (all zeros: a kernel that keeps no schedstat)
            return (int(on_cpu) + int(ready)) / 1e9
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{native}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


def report(doctor: Doctor, program: str, exit_status: int | None) -> dict[str, Any]:
    """The findings as one JSON-able object."""
    notes = []
    if getattr(doctor, "uvloop_unwatched", False):
        notes.append(UVLOOP_NOTE)
    return {
        "program": program,
        "exit_status": exit_status,
        "notes": notes,
        "seconds": round(doctor.ended - doctor.started, 3),
        "loop_cpu_share": round(doctor.cpu_share, 3),
        "findings": [f.to_json() for f in doctor.findings()],
    }


def print_report(doctor: Doctor, program: str, file: Any = None) -> None:
    """The findings as a readable rich report (on stderr unless ``file``)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(file=file, stderr=file is None)
    found = doctor.findings()
    console.rule(f"whilst doctor: {escape(program)}")
    if not found:
        console.print("[green]no problems found[/]")
    names = {
        "blocking_call": "[bold red]blocks the event loop[/]",
        "cpu_bound": "[bold red]CPU-bound event loop[/]",
        "never_awaited": "[bold yellow]coroutine never awaited[/]",
        "lost_exception": "[bold yellow]task exception never retrieved[/]",
    }
    for f in found:
        times = f"{f.count} time{'s' if f.count != 1 else ''}"
        spent = f", {f.seconds:.3f} s in all" if f.seconds else ""
        console.print(
            f"{names[f.kind]}  {escape(os.path.relpath(f.file))}:{f.line} in "
            f"{escape(f.function)}()  [dim]{times}{spent}[/]"
        )
        if f.call:
            console.print(f"    [cyan]{escape(f.call)}[/]")
        if f.detail:
            console.print(f"    {escape(f.detail)}")
        console.print(f"    [green]fix:[/] {escape(f.fix)}")
    if doctor._loop_wall > 0:
        console.print(
            f"[dim]the event loop threads spent {doctor.cpu_share:.0%} of their time on the CPU "
            "(or waiting for one)[/]"
        )
    else:
        console.print("[dim]no asyncio event loop ran[/]")
    if getattr(doctor, "uvloop_unwatched", False):
        console.print(f"[yellow]{escape(UVLOOP_NOTE)}[/]")
