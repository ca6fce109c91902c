"""``whilst demo``: the seed's examples made real and measured on this machine.

Three sections, each printed as it is measured:

1. the seed's two tasks (``time.sleep`` one after another against
   ``await asyncio.sleep`` overlapped), with the "Task started / Task finished"
   lines as they really happen and a timeline;
2. the seed's "When to use which?" table, measured: API calls against a real
   local aiohttp server, CPU-heavy work, small file reads;
3. the coroutine lesson: calling an ``async def`` function runs nothing until
   the coroutine it returns is awaited.

:func:`run_demo` returns the measured numbers as a :class:`DemoReport`, so tests
check figures rather than parse text. aiohttp is imported only when the demo
runs, so ``import whilst`` stays light.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import whilst

from ._options import cpu_count, default_limit

# rich, urllib and aiohttp are imported where they are used: worker processes
# import this module to find count_primes, and their start-up is part of what
# the CPU row measures.
if TYPE_CHECKING:
    from aiohttp import web
    from rich.console import Console
    from rich.table import Table

#: Prime counting starts here: a window of numbers at this height costs time in
#: proportion to its width, which makes the CPU work easy to size.
PRIMES_FROM = 1_000_000


@dataclass(frozen=True, slots=True)
class Scale:
    """How big the demo's work is."""

    sleep: float  # the seed's time.sleep(2)
    requests: int
    latency: float  # the local server's answer delay
    cpu_items: int
    cpu_seconds: float  # one CPU task, measured in this process
    files: int
    file_size: int
    greet_delay: float  # the seed's greet(): asyncio.sleep(1)
    reports: Path | None = None  # --report DIR: a timeline page per scenario

    def watch(self, name: str) -> dict[str, Any]:
        """The options that write scenario ``name``'s timeline, with --report DIR."""
        return {} if self.reports is None else {"report": self.reports / f"{name}.html"}


FULL = Scale(2.0, 100, 0.05, 8, 0.25, 1000, 4096, 1.0)
QUICK = Scale(0.5, 24, 0.05, 8, 0.12, 200, 4096, 0.25)


@dataclass(frozen=True, slots=True)
class Event:
    """One line the seed's task printed: when (seconds since the run's start), which, what."""

    at: float
    task: int
    what: str


@dataclass(frozen=True, slots=True)
class TwoTasks:
    """Section 1: the seed's two tasks in sync and async mode."""

    sleep: float
    sync_wall: float
    async_wall: float
    sync_events: list[Event]
    async_events: list[Event]

    @property
    def speedup(self) -> float:
        """How many times faster async finished than sync."""
        return self.sync_wall / self.async_wall


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the "When to use which?" table, measured.

    Attributes:
        key: a short name tests use (``network``, ``cpu``, ``files``, ``simple``).
        scenario: the seed's words for the kind of work.
        prefer: what the seed says to prefer.
        times: wall seconds by mode, sync first; empty for a note-only row.
        note: what the numbers mean.
    """

    key: str
    scenario: str
    prefer: str
    times: dict[str, float]
    note: str

    @property
    def winner(self) -> str:
        """The fastest mode measured (``sync`` for a note-only row)."""
        return min(self.times, key=self.times.__getitem__) if self.times else "sync"

    def speedup(self, mode: str | None = None) -> float:
        """How many times faster ``mode`` (the winner by default) ran than sync."""
        if not self.times:
            return 1.0
        return self.times["sync"] / self.times[mode or self.winner]


@dataclass(frozen=True, slots=True)
class Lesson:
    """Section 3: what calling and awaiting a coroutine function did."""

    coroutine_repr: str
    state_after_call: str
    ran_before_await: bool
    ran_after_await: bool
    value: str
    forgotten_state: str


@dataclass(frozen=True, slots=True)
class DemoReport:
    """Everything :func:`run_demo` measured."""

    quick: bool
    two_tasks: TwoTasks
    rows: list[Row]
    lesson: Lesson
    wall: float = 0.0

    def row(self, key: str) -> Row:
        """The table row named ``key``."""
        return next(r for r in self.rows if r.key == key)


def run_demo(
    quick: bool = False, console: Console | None = None, reports: Path | None = None
) -> DemoReport:
    """Measure the seed's examples on this machine and print them to ``console``.

    Args:
        quick: scale durations and sizes down so the demo ends in seconds.
        console: where to print; stdout by default.
        reports: a directory to write one timeline page per scenario into.

    Returns:
        The measured numbers.
    """
    if console is None:
        from rich.console import Console

        console = Console()
    scale = dataclasses.replace(QUICK if quick else FULL, reports=reports)
    started = time.perf_counter()
    console.rule("whilst demo: synchronous vs asynchronous, measured here")
    _say(console, f"{cpu_count()} CPUs; {'quick run, work scaled down' if quick else 'full run'}.")
    two = _two_tasks(scale, console)
    rows = _when_to_use(scale, console)
    lesson = _coroutine_lesson(scale, console)
    wall = time.perf_counter() - started
    if reports is not None:
        pages = sorted(reports.glob("*.html"))
        _say(console, f"Timelines of each scenario, {len(pages)} pages in {reports}:")
        for page in pages:
            _say(console, f"  {page}")
    console.rule(f"demo finished in {wall:.1f} s")
    return DemoReport(quick, two, rows, lesson, wall)


# -- helpers -----------------------------------------------------------------


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)  # literal text: "[1, 2]" is no markup


def _timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _best_of(n: int, fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    return min(_timed(fn, *args, **kwargs) for _ in range(n))


def _x(factor: float) -> str:
    return f"{factor:.1f}x" if factor < 10 else f"{factor:.0f}x"


def _secs(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


# -- 1. the seed's two tasks ---------------------------------------------------


class _Log:
    """Prints the seed's task lines as they happen, stamped from the run's start."""

    def __init__(self, console: Console, mode: str) -> None:
        self.console = console
        self.mode = mode
        self.events: list[Event] = []
        self.start = time.perf_counter()

    def __call__(self, task: int, what: str) -> None:
        event = Event(time.perf_counter() - self.start, task, what)
        self.events.append(event)
        _say(self.console, f"  {self.mode:<5} {event.at:+6.2f} s  task {task}: {what}")


def _two_tasks(scale: Scale, console: Console) -> TwoTasks:
    s = scale.sleep
    console.rule("1. Two tasks: one after another, then on an event loop")
    _say(console, f'Each task prints "Task started", waits {s:g} s, prints "Task finished".')
    _say(console, f"sync:  whilst.map(task, [1, 2], mode='sync')   task: time.sleep({s:g})")
    sync_log = _Log(console, "sync")

    def task(n: int) -> None:
        sync_log(n, "Task started")
        time.sleep(s)
        sync_log(n, "Task finished")

    whilst.map(task, [1, 2], mode="sync", **scale.watch("two-tasks-sync"))
    sync_wall = time.perf_counter() - sync_log.start
    _say(
        console,
        f"async: whilst.map(atask, [1, 2], mode='async')  atask: await asyncio.sleep({s:g})",
    )
    async_log = _Log(console, "async")

    async def atask(n: int) -> None:
        async_log(n, "Task started")
        await asyncio.sleep(s)
        async_log(n, "Task finished")

    whilst.map(atask, [1, 2], mode="async", **scale.watch("two-tasks-async"))
    async_wall = time.perf_counter() - async_log.start
    two = TwoTasks(s, sync_wall, async_wall, sync_log.events, async_log.events)
    console.print(_timeline(two))
    _say(
        console,
        f"async took {async_wall:.2f} s instead of {sync_wall:.2f} s: {_x(two.speedup)} faster, "
        "on one thread: while one task waits, the event loop runs the other.",
    )
    return two


def _timeline(two: TwoTasks, width: int = 40) -> Table:
    from rich.table import Table

    total = max(two.sync_wall, two.async_wall)
    table = Table(title="Where the time went", title_justify="left")
    table.add_column("mode")
    table.add_column("task")
    table.add_column(f"0 s {'time':─^{width - 12}} {total:.1f} s", no_wrap=True)
    table.add_column("wall", justify="right")
    for mode, events, wall in (
        ("sync", two.sync_events, two.sync_wall),
        ("async", two.async_events, two.async_wall),
    ):
        for task in (1, 2):
            start, end = (e.at for e in events if e.task == task)
            bar = _bar(start, end, total, width)
            table.add_row(
                mode if task == 1 else "", str(task), bar, f"{wall:.2f} s" if task == 1 else ""
            )
    return table


def _bar(start: float, end: float, total: float, width: int) -> str:
    a = round(start / total * width)
    b = max(a + 1, min(width, round(end / total * width)))
    return " " * a + "█" * (b - a) + " " * (width - b)


# -- 2. when to use which ------------------------------------------------------


def _when_to_use(scale: Scale, console: Console) -> list[Row]:
    console.rule('2. "When to use which?", measured')
    rows = [
        _simple_row(),
        _cpu_row(scale, console),
        _network_row(scale, console),
        _files_row(scale, console),
    ]
    console.print(_rows_table(rows))
    for row in rows:
        _say(console, f"• {row.scenario}: {row.note}")
    return rows


def _rows_table(rows: list[Row]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="When to use which? Wall time; speed-up over sync", title_justify="left")
    table.add_column("scenario / the usual advice")
    table.add_column("measured here", no_wrap=True)
    table.add_column("winner", no_wrap=True)
    table.add_column("speed-up", justify="right", no_wrap=True)
    for row in rows:
        scenario = Text(row.scenario, style="bold")
        scenario.append(f"\n{row.prefer}", style="italic")
        measured = "\n".join(
            f"{mode:<9} {_secs(t):>7}" + (f" {_x(row.speedup(mode)):>5}" if mode != "sync" else "")
            for mode, t in row.times.items()
        )
        speedup = _x(row.speedup()) if row.times else "baseline"
        table.add_row(scenario, measured or "not measured", row.winner, speedup)
        table.add_section()
    return table


def _simple_row() -> Row:
    return Row(
        "simple",
        "Simple, blocking scripts",
        "Synchronous",
        {},
        "nothing to measure: sync is the simplest code to read and debug, and the baseline "
        "every other mode is measured against.",
    )


def count_primes(bounds: tuple[int, int]) -> int:
    """Count the primes in ``[lo, hi)`` by trial division: pure Python, CPU-bound.

    ``lo`` must be above 2 (only odd numbers are tried).
    """
    lo, hi = bounds
    count = 0
    for n in range(lo | 1, hi, 2):
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def _prime_windows(seconds: float, n: int) -> list[tuple[int, int]]:
    """``n`` adjacent windows of numbers, each about ``seconds`` of counting here."""
    probe = 5000
    cost = _best_of(3, count_primes, (PRIMES_FROM, PRIMES_FROM + probe))
    width = max(probe, int(probe * seconds / cost))
    return [(PRIMES_FROM + i * width, PRIMES_FROM + (i + 1) * width) for i in range(n)]


def _cpu_row(scale: Scale, console: Console) -> Row:
    windows = _prime_windows(scale.cpu_seconds, scale.cpu_items)
    lo, hi = windows[0][0], windows[-1][1]
    _say(console, f"CPU-heavy: counting primes in {len(windows)} windows of {lo:,}..{hi:,} ...")
    times: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    # Best of two rounds, the modes taking turns: a CPU race on a small machine is
    # easily upset by other load, and taking turns spreads a burst of it over all.
    for _ in range(2):
        for mode in ("sync", "threads", "processes"):
            start = time.perf_counter()
            counts[mode] = whilst.map(
                count_primes, windows, mode=mode, **scale.watch(f"cpu-{mode}")
            )
            seconds = time.perf_counter() - start
            times[mode] = min(times.get(mode, seconds), seconds)
    if not counts["sync"] == counts["threads"] == counts["processes"]:
        raise RuntimeError(f"whilst bug: the modes counted different primes: {counts}")
    return Row(
        "cpu",
        "CPU-heavy processing",
        "Synchronous (or multiprocessing)",
        times,
        f"{len(windows)} tasks of about {scale.cpu_seconds:g} s of pure-Python prime counting "
        f"({sum(counts['sync']):,} primes). Threads take turns holding the GIL, so they are no "
        f"faster than sync; processes run on {default_limit('processes')} "
        "CPUs at once. Best of two runs: the first also starts the worker processes, which "
        "whilst then keeps warm.",
    )


class _LocalServer:
    """A real aiohttp server on 127.0.0.1 (a free port) that answers after ``latency``
    seconds, run on its own event loop in a background thread."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.served = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> _LocalServer:
        import aiohttp.web  # noqa: F401 - import here: on the server's loop it would block it

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="whilst-demo-server", daemon=True
        )
        self._thread.start()
        try:
            self.url = self._call(self._start())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/"

    async def _answer(self, request: web.Request) -> web.Response:
        from aiohttp import web

        self.served += 1
        await asyncio.sleep(self.latency)
        return web.Response(text="ok")

    def _stop(self) -> None:
        try:
            if self._runner is not None:
                self._call(self._runner.cleanup())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()


async def _fetch_all_async(urls: list[str], watch: dict[str, Any]) -> list[bytes]:
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def fetch(url: str) -> bytes:
            async with session.get(url) as response:
                return await response.read()

        return await whilst.amap(fetch, urls, mode="async", **watch)


def _network_row(scale: Scale, console: Console) -> Row:
    n, ms = scale.requests, scale.latency * 1000
    _say(console, f"Network/API I/O: {n} GET requests to a local aiohttp server ({ms:.0f} ms) ...")
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy

    def fetch(url: str) -> bytes:
        with opener.open(url, timeout=30) as response:
            body: bytes = response.read()
            return body

    with _LocalServer(scale.latency) as server:
        urls = [server.url] * n
        times = {
            "sync": _timed(whilst.map, fetch, urls, mode="sync", **scale.watch("network-sync")),
            "threads": _timed(
                whilst.map, fetch, urls, mode="threads", **scale.watch("network-threads")
            ),
            "async": _timed(asyncio.run, _fetch_all_async(urls, scale.watch("network-async"))),
        }
        served = server.served
    if served != 3 * n:
        raise RuntimeError(f"the local server answered {served} requests, not {3 * n}")
    return Row(
        "network",
        "Network/API I/O",
        "Asynchronous",
        times,
        f"{n} GET requests to a real aiohttp server on 127.0.0.1 that answers after {ms:.0f} ms. "
        f"sync: urllib, one after another; threads: urllib in {default_limit('threads')} threads "
        "(whilst's default, CPUs + 4); async: one aiohttp session, up to "
        f"{default_limit('async')} requests in flight on one thread. Waiting overlaps, so "
        "concurrency wins, and async overlaps the most for the least.",
    )


def _read_file(path: Path) -> int:
    return len(path.read_bytes())


def _files_row(scale: Scale, console: Console) -> Row:
    n, size = scale.files, scale.file_size
    _say(console, f"File I/O: reading {n} files of {size:,} bytes ...")
    with tempfile.TemporaryDirectory(prefix="whilst-demo-") as tmp:
        paths = [Path(tmp, f"file-{i:05}.bin") for i in range(n)]
        for i, path in enumerate(paths):
            path.write_bytes(bytes([i % 256]) * size)
        times = {
            mode: _best_of(
                3, whilst.map, _read_file, paths, mode=mode, **scale.watch(f"files-{mode}")
            )
            for mode in ("sync", "threads")
        }
    return Row(
        "files",
        "File I/O",
        "Asynchronous",
        times,
        f"{n} small files from a temporary directory, best of 3. asyncio has no truly "
        "asynchronous file I/O: async file libraries such as aiofiles run the reads in "
        "threads too, so threads are the honest comparison. Freshly written files sit in "
        "the page cache, where a read takes microseconds, so the gain is small (or a loss: "
        "handing work to threads costs time too). Slow disks and network file systems gain more.",
    )


# -- 3. the coroutine lesson ---------------------------------------------------


async def greet(say: Callable[[str], None], delay: float) -> str:
    """The seed's coroutine: print "Hello", wait ``delay`` seconds, print "World"."""
    say("Hello")
    await asyncio.sleep(delay)
    say("World")
    return "greeted"


def _coroutine_lesson(scale: Scale, console: Console) -> Lesson:
    console.rule("3. A coroutine does nothing until it is awaited")
    said: list[str] = []
    start = time.perf_counter()

    def say(word: str) -> None:
        said.append(word)
        _say(console, f"  {time.perf_counter() - start:+6.2f} s  {word}")

    coro = greet(say, scale.greet_delay)
    _say(console, f"coro = greet()     returned {coro!r}")
    state = inspect.getcoroutinestate(coro)
    ran_before = bool(said)
    _say(console, f"state {state}; printed anything? {'yes' if ran_before else 'no'}: not run yet")

    async def main() -> str:
        return await coro

    _say(console, "await coro         now the body runs:")
    start = time.perf_counter()
    value = asyncio.run(main())
    ran_after = said == ["Hello", "World"]
    _say(console, f"state {inspect.getcoroutinestate(coro)}; it returned {value!r}")

    forgotten = greet(say, scale.greet_delay)
    forgotten.close()  # never awaited: close it, or Python warns "... was never awaited"
    forgotten_state = inspect.getcoroutinestate(forgotten)
    _say(
        console,
        "A coroutine that is never awaited never runs, and Python warns \"coroutine 'greet' was "
        'never awaited" when it is garbage-collected. The demo just called greet() once more '
        f"without awaiting it and closed it: state {forgotten_state}, nothing printed.",
    )
    return Lesson(repr(coro), state, ran_before, ran_after, value, forgotten_state)
