"""Benchmarks: whilst against the hand-written and standard-library peers it replaces.

Every peer is measured in the same run, on this machine, with the repeats of
the cases of one benchmark interleaved (A, B, A, B...) so drift hits them
alike; each time is the median of its repeats and each ratio the median of the
ratios within a round. Prints one table of ratios, with the target for each row
and whether it is met, and writes the figures as JSON (``bench/results.json``
for a full run) so the README table can be refreshed.

Run ``make bench`` or ``.venv/bin/python bench/run.py [--quick] [--only NAME]``.
The machine should be otherwise idle: a timed round during which other processes
used the CPUs is redone (see ``--wait-quiet``), and the run says which figures
were still measured beside other work.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import functools
import gc
import json
import math
import multiprocessing
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil
import uvloop
from joblib import Parallel, delayed
from rich.console import Console
from rich.table import Table

import whilst

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _work import (  # noqa: E402 - needs the path set-up
    echo,
    nap,
    noop,
    retrying,
    spin,
    square,
    yield_once,
)

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
Coro = Callable[[int], Awaitable[int]]


@dataclass
class Row:
    """One line of the table: whilst's figure, the peer's, and their ratio."""

    key: str
    number: str  # the row number; "" for a sub-row
    name: str
    whilst: str
    peer: str
    ratio: float
    target: str  # "" for a reference row
    met: bool | None  # None for a reference row


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        key: str,
        number: str,
        name: str,
        whilst: str,
        peer: str,
        ratio: float,
        target: tuple[str, float] | None = None,
    ) -> None:
        """``target`` is ``("<=", 2.0)`` or ``(">=", 7.0)`` on ``ratio``; None for reference."""
        met: bool | None = None
        text = ""
        if target is not None:
            op, bound = target
            met = ratio <= bound if op == "<=" else ratio >= bound
            text = f"{'≤' if op == '<=' else '≥'} {bound:g}"
        self.rows.append(Row(key, number, name, whilst, peer, ratio, text, met))


@dataclass(frozen=True)
class Sizes:
    repeats: int
    async_n: int
    memory_n: int
    memory_repeats: int
    gather_memory_n: int
    sleep_n: int
    threads_n: int
    processes_n: int
    cpu_tasks: int
    cpu_seconds: float
    policy_n: int
    journal_n: int
    watch_n: int
    run_jobs: int
    http_n: int


FULL = Sizes(
    repeats=5,
    async_n=100_000,
    memory_n=1_000_000,
    memory_repeats=5,  # as many as the other rows: its wall swings 20% run to run
    gather_memory_n=100_000,
    sleep_n=10_000,
    threads_n=100_000,
    processes_n=100_000,
    cpu_tasks=8,
    cpu_seconds=0.2,
    policy_n=20_000,
    journal_n=100_000,
    watch_n=100_000,
    run_jobs=2000,
    http_n=5000,
)
QUICK = Sizes(
    repeats=2,
    async_n=20_000,
    memory_n=100_000,
    memory_repeats=1,
    gather_memory_n=20_000,
    sleep_n=2_000,
    threads_n=10_000,
    processes_n=20_000,
    cpu_tasks=4,
    cpu_seconds=0.05,
    policy_n=5_000,
    journal_n=10_000,
    watch_n=20_000,
    run_jobs=400,
    http_n=1000,
)
LIMIT = 1000  # the async rows' limit, as the issue states them
POLICY_LIMIT = 100  # the policy rows' async limit: whilst's default
BUSY = 0.1  # cores used by other processes that make a benchmark's figures suspect
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")  # of psutil.cpu_times()
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
#: The ``whilst`` command as users run it: the script installed beside this Python
#: (``python -m whilst`` costs runpy's import on top), else through ``-m``.
_SCRIPT = Path(sys.executable).with_name("whilst")
WHILST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "whilst"]


# -- timing -------------------------------------------------------------------


@dataclass
class Quiet:
    """``--wait-quiet``: how long to wait for other processes to go idle (0: never)."""

    wait: float = 60.0
    redo: int = 3  # most times one round is run again because the machine got busy
    redone: int = 0
    kept: list[float] = field(default_factory=list)  # cores busy elsewhere, per kept round
    console: Console = field(default_factory=Console)


QUIET = Quiet()


@dataclass(frozen=True)
class Measured:
    """What a case returns when it times itself (work in child processes, say)."""

    seconds: float


def timed(case: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    result = case()
    took = time.perf_counter() - start
    return result.seconds if isinstance(result, Measured) else took


def measure(
    cases: dict[str, Callable[[], object]], repeats: int, *, warm_up: bool = True
) -> dict[str, list[float]]:
    """Seconds of each case, ``repeats`` times, interleaved, each round starting
    with the next case (no case always runs first); one untimed run first. With
    ``--wait-quiet``, a round during which other processes were busy is redone."""
    if warm_up:
        for case in cases.values():
            case()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)

    def one_round(order: list[str]) -> dict[str, float]:
        return {name: timed(cases[name]) for name in order}

    for round_ in range(repeats):
        first = round_ % len(names)
        took = quietly(functools.partial(one_round, names[first:] + names[:first]))
        for name, seconds in took.items():
            samples[name].append(seconds)
    return samples


def quietly(run: Callable[[], T]) -> T:
    """``run()``; when other processes got busy meanwhile, wait for them to go idle
    (``--wait-quiet`` seconds at most) and run again, a few times at most."""
    for attempt in range(QUIET.redo + 1):
        other = Background()
        value = run()
        cores, _ = other.cores()
        if QUIET.wait <= 0 or cores < BUSY or attempt == QUIET.redo:
            QUIET.kept.append(cores)
            return value
        QUIET.redone += 1
        wait_quiet(QUIET.console, QUIET.wait)
    raise AssertionError("unreachable")


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def paired(samples: dict[str, list[float]], a: str, b: str) -> float:
    """The median of ``a / b`` over the rounds: each round runs every case back to
    back, so a ratio within a round is steadier than a ratio of medians when the
    machine's speed drifts (a shared VM's does, by half at times)."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def record(report: Report, key: str, samples: dict[str, list[float]], **extra: Any) -> None:
    report.figures[key] = {"seconds": samples, "median": medians(samples), **extra}


def us(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:.2f} µs/task"


def secs(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def millions(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n // 1000}k"


# -- hand-written asyncio peers -------------------------------------------------


def raw_pool(fn: Coro, items: range, limit: int, loop_factory: LoopFactory | None) -> list[int]:
    """The cheapest bounded asyncio map: ``limit`` workers pulling from one iterator."""

    async def main() -> list[int]:
        results: list[int] = [0] * len(items)
        source = enumerate(items)

        async def worker() -> None:
            for index, item in source:
                results[index] = await fn(item)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(limit, len(items))):
                group.create_task(worker())
        return results

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def gather_all(fn: Coro, items: Iterable[int], loop_factory: LoopFactory | None) -> list[int]:
    """Everything at once: one task per item."""

    async def main() -> list[int]:
        return await asyncio.gather(*(fn(item) for item in items))

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def hand_policy(fn: Coro, attempts: int, timeout: float | None) -> Coro:
    """``fn`` under the retry loop (``attempts`` in all, no sleep) and the per-attempt
    ``asyncio.timeout`` a user writes by hand."""

    async def attempt(item: int) -> int:
        for n in range(attempts):
            try:
                if timeout is None:
                    return await fn(item)
                async with asyncio.timeout(timeout):
                    return await fn(item)
            except Exception:
                if n == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    return attempt


def guarded_gather(
    fn: Coro,
    items: Iterable[int],
    loop_factory: LoopFactory | None,
    *,
    limit: int,
    key: Callable[[int], Hashable] | None = None,
    per_key: int = 1,
) -> list[int]:
    """The usual hand-written bounded map: one task per item, each under a shared
    ``Semaphore(limit)`` and, with ``key``, a ``Semaphore(per_key)`` of its key's."""

    async def main() -> list[int]:
        limiter = asyncio.Semaphore(limit)
        keyed: dict[Hashable, asyncio.Semaphore] = {}

        async def one(item: int) -> int:
            async with limiter:
                return await fn(item)

        async def keyed_one(item: int) -> int:
            assert key is not None
            k = key(item)
            if (own := keyed.get(k)) is None:
                own = keyed[k] = asyncio.Semaphore(per_key)
            async with own, limiter:
                return await fn(item)

        return await asyncio.gather(*map(one if key is None else keyed_one, items))

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


async def loop_kind(_: object) -> str:
    """Which event loop runs this: ``uvloop`` or ``asyncio``."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def whilst_on_plain_asyncio(case: Callable[[], object]) -> Callable[[], object] | None:
    """``case`` with whilst's loop forced to plain asyncio, for reference; None when
    the private hook this needs is gone."""
    from whilst import _runner

    if not hasattr(_runner, "new_loop"):
        return None

    def run() -> object:
        original = _runner.new_loop
        _runner.new_loop = asyncio.new_event_loop
        try:
            return case()
        finally:
            _runner.new_loop = original

    return run


# -- the benchmarks -------------------------------------------------------------


def bench_async(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Row 1: per-task overhead of async mode against a raw pool and gather."""
    n = sizes.async_n
    items = range(n)
    uv = uvloop.new_event_loop

    def whilst_map() -> object:
        return whilst.map(yield_once, items, mode="async", limit=LIMIT)

    cases: dict[str, Callable[[], object]] = {
        "whilst": whilst_map,
        "raw_pool_uvloop": lambda: raw_pool(yield_once, items, LIMIT, uv),
        "gather_uvloop": lambda: gather_all(yield_once, items, uv),
        "raw_pool_asyncio": lambda: raw_pool(yield_once, items, LIMIT, None),
        "gather_asyncio": lambda: gather_all(yield_once, items, None),
    }
    plain = whilst_on_plain_asyncio(whilst_map)
    if plain is not None:
        cases["whilst_asyncio"] = plain
    assert whilst_map() == list(items)
    samples = measure(cases, sizes.repeats)
    m = medians(samples)
    record(report, "async", samples, n=n, limit=LIMIT)
    w = m["whilst"]
    report.add(
        "async",
        "1",
        f"async, {n // 1000}k yield-once: whilst / raw worker pool",
        us(w, n),
        us(m["raw_pool_uvloop"], n),
        paired(samples, "whilst", "raw_pool_uvloop"),
        ("<=", 2.0),
    )
    report.add(
        "async",
        "",
        "  gather / whilst (times faster than gather)",
        us(w, n),
        us(m["gather_uvloop"], n),
        paired(samples, "gather_uvloop", "whilst"),
        (">=", 7.0),
    )
    if "whilst_asyncio" in m:
        report.add(
            "async",
            "",
            "  ref: on plain asyncio: whilst / raw pool",
            us(m["whilst_asyncio"], n),
            us(m["raw_pool_asyncio"], n),
            paired(samples, "whilst_asyncio", "raw_pool_asyncio"),
        )
        report.add(
            "async",
            "",
            "  ref: on plain asyncio: gather / whilst",
            us(m["whilst_asyncio"], n),
            us(m["gather_asyncio"], n),
            paired(samples, "gather_asyncio", "whilst_asyncio"),
        )


def child_memory(what: str, n: int) -> dict[str, float]:
    """Run ``bench/_memory.py`` in a fresh interpreter; its peak RSS above its baseline."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "_memory.py"), what, str(n), str(LIMIT)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    got = json.loads(out)
    return {"rss_mb": (got["peak_kib"] - got["baseline_kib"]) / 1024, "wall": got["wall"]}


def bench_memory(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Row 2: imap over a generator of a million items stays small and quick."""
    n = sizes.memory_n
    runs = [quietly(lambda: child_memory("whilst", n)) for _ in range(sizes.memory_repeats)]
    rss = statistics.median(r["rss_mb"] for r in runs)
    wall = statistics.median(r["wall"] for r in runs)
    gather_n = n if args.gather_1m else sizes.gather_memory_n
    gathered = quietly(lambda: child_memory("gather", gather_n))
    report.figures["memory"] = {
        "n": n,
        "limit": LIMIT,
        "whilst_runs": runs,
        "gather_n": gather_n,
        "gather": gathered,
    }
    name = f"imap, {millions(n)}-item generator"
    report.add("memory", "2", f"{name}: peak RSS, MB", f"{rss:.1f} MB", "", rss, ("<=", 60))
    budget = 3.0 * n / 1_000_000  # the 3 s for a million, scaled for --quick
    report.add(
        "memory", "", f"{name}: wall, s", f"{secs(wall)}, {us(wall, n)}", "", wall, ("<=", budget)
    )
    report.add(
        "memory",
        "",
        f"  ref: gather of {millions(gather_n)}: its peak RSS / whilst's",
        f"{rss:.1f} MB",
        f"{gathered['rss_mb']:.1f} MB, {secs(gathered['wall'])}",
        gathered["rss_mb"] / rss if rss > 0 else math.inf,
    )


def bench_sleep(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Row 3: waiting tasks overlap: N sleeps of 50 ms at limit 1000 take N/1000 * 50 ms."""
    n, seconds = sizes.sleep_n, 0.05
    items = range(n)
    ideal = math.ceil(n / LIMIT) * seconds
    cases: dict[str, Callable[[], object]] = {
        "whilst": lambda: whilst.map(nap, items, mode="async", limit=LIMIT),
        "raw_pool_uvloop": lambda: raw_pool(nap, items, LIMIT, uvloop.new_event_loop),
    }
    samples = measure(cases, sizes.repeats)
    m = medians(samples)
    record(report, "sleep", samples, n=n, limit=LIMIT, ideal=ideal)
    name = f"async, {n // 1000}k sleeps of 50 ms: wall / ideal"
    report.add("sleep", "3", name, secs(m["whilst"]), secs(ideal), m["whilst"] / ideal, ("<=", 1.1))
    report.add(
        "sleep",
        "",
        "  ref: raw worker pool / ideal",
        secs(m["whilst"]),
        secs(m["raw_pool_uvloop"]),
        m["raw_pool_uvloop"] / ideal,
    )


def bench_threads(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Row 4: per-task overhead of threads mode against ThreadPoolExecutor.map."""
    n = sizes.threads_n
    items = range(n)
    workers = min(32, CPUS + 4)  # whilst's default limit, as ThreadPoolExecutor's

    def executor_map() -> list[int]:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(noop, items))

    cases: dict[str, Callable[[], object]] = {
        "whilst": lambda: whilst.map(noop, items, mode="threads", limit=workers),
        "thread_pool_executor": executor_map,
    }
    samples = measure(cases, sizes.repeats)
    m = medians(samples)
    record(report, "threads", samples, n=n, workers=workers)
    report.add(
        "threads",
        "4",
        f"threads, {n // 1000}k no-ops, {workers} threads: whilst / ThreadPoolExecutor",
        us(m["whilst"], n),
        us(m["thread_pool_executor"], n),
        paired(samples, "whilst", "thread_pool_executor"),
        ("<=", 1.3),
    )


def bench_processes(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Row 5: tiny CPU tasks in processes: whilst against Pool.map and joblib, warm."""
    n = sizes.processes_n
    items = range(n)
    procs = CPUS
    auto = math.ceil(n / (4 * procs))  # what Pool.map picks: divmod(len, 4 * processes)
    chunks = sorted({1000, 5000, auto, 4 * auto})
    expected = [square(x) for x in items]
    # Warm: whilst keeps its workers between runs, and measure()'s untimed first
    # run starts them; the Pool is started before the timing and joblib's loky
    # executor is reused between calls, so all three are timed warm.
    with multiprocessing.Pool(procs) as pool:
        cases: dict[str, Callable[[], object]] = {
            "whilst": lambda: whilst.map(square, items, mode="processes", limit=procs),
        }
        for size in chunks:
            label = f"pool_chunksize_{size}" + ("_auto" if size == auto else "")
            cases[label] = lambda size=size: pool.map(square, items, chunksize=size)
        cases["joblib"] = lambda: Parallel(n_jobs=procs)(delayed(square)(x) for x in items)
        assert whilst.map(square, items, mode="processes", limit=procs) == expected
        samples = measure(cases, sizes.repeats)
    m = medians(samples)
    pools = {k: v for k, v in m.items() if k.startswith("pool_")}
    best = min(pools, key=pools.__getitem__)
    auto_key = f"pool_chunksize_{auto}_auto"
    record(report, "processes", samples, n=n, processes=procs, best_pool=best)
    w = m["whilst"]
    report.add(
        "processes",
        "5",
        f"processes, {n // 1000}k x*x, warm: whilst / Pool.map (chunks {auto})",
        secs(w),
        secs(m[auto_key]),
        paired(samples, "whilst", auto_key),
        ("<=", 1.3),
    )
    report.add(
        "processes",
        "",
        f"  ref: whilst / best Pool.map (chunks {best.split('_')[2]})",
        secs(w),
        secs(pools[best]),
        paired(samples, "whilst", best),
    )
    report.add(
        "processes",
        "",
        "  ref: whilst / joblib Parallel (batch_size auto)",
        secs(w),
        secs(m["joblib"]),
        paired(samples, "whilst", "joblib"),
    )


def calibrate_spin(seconds: float) -> int:
    """Loop turns of :func:`spin` that take about ``seconds`` here."""
    turns = 100_000
    while True:
        took = min(timed(lambda: spin(turns)) for _ in range(3))  # noqa: B023 - called at once
        if took > 0.02:
            return int(turns * seconds / took)
        turns *= 4


def plain_processes(turns: int, tasks: int) -> Measured:
    """The tasks split over one fresh interpreter per CPU, with no pool at all: what
    this machine gives CPU-bound processes side by side (a shared VM may give less
    than one CPU each). Timed from the first start of work to the last end, so
    interpreter start-up does not count."""
    share = math.ceil(tasks / CPUS)
    code = (
        f"import sys, time; sys.path.insert(0, {str(BENCH)!r}); from _work import spin\n"
        f"start = time.time()\nfor _ in range({share}): spin({turns})\n"
        "print(start, time.time())"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(CPUS)
    ]
    spans = [tuple(map(float, child.communicate()[0].split())) for child in children]
    if any(child.returncode != 0 for child in children):
        raise RuntimeError("a plain spin process failed")
    return Measured(max(end for _, end in spans) - min(start for start, _ in spans))


def bench_cpu(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Row 6: coarse CPU tasks in processes really use every core."""
    turns = calibrate_spin(sizes.cpu_seconds)
    items = [turns] * sizes.cpu_tasks
    with multiprocessing.Pool(CPUS) as pool:
        cases: dict[str, Callable[[], object]] = {
            "sync": lambda: whilst.map(spin, items, mode="sync"),
            "processes": lambda: whilst.map(spin, items, mode="processes"),
            "pool": lambda: pool.map(spin, items, chunksize=1),
            "plain_processes": lambda: plain_processes(turns, len(items)),
        }
        samples = measure(cases, sizes.repeats)
    m = medians(samples)
    record(report, "cpu", samples, tasks=len(items), turns=turns, cpus=CPUS)
    report.add(
        "cpu",
        "6",
        f"processes, {len(items)} CPU tasks of {sizes.cpu_seconds:g} s: speed-up over sync",
        secs(m["processes"]),
        secs(m["sync"]),
        paired(samples, "sync", "processes"),
        (">=", 1.9),
    )
    report.add(
        "cpu",
        "",
        "  ref: Pool.map (chunksize 1) speed-up over sync",
        secs(m["processes"]),
        secs(m["pool"]),
        paired(samples, "sync", "pool"),
    )
    report.add(
        "cpu",
        "",
        f"  ref: {CPUS} plain processes sharing the tasks: the machine's ceiling",
        secs(m["processes"]),
        secs(m["plain_processes"]),
        paired(samples, "sync", "plain_processes"),
    )


def by_tens(x: int) -> int:
    """The policy rows' key: ten keys, taken in turn."""
    return x % 10


def bench_policy(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """Per-task cost of the policy path (retries, timeout, key) against the same
    policy written by hand, in async mode, threads and processes."""
    n = sizes.policy_n
    items = range(n)
    figures: dict[str, Any] = {"n": n}
    report.figures["policy"] = figures

    # -- async: no-op coroutines (that never yield), limit 100 --------------------
    whilst_loop = whilst.map(loop_kind, [0], mode="async")[0]
    factory = uvloop.new_event_loop if whilst_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        peer_loop = runner.run(loop_kind(0))
    policies: dict[str, dict[str, Any]] = {
        "plain": {},
        "retries": {"retries": 2},
        "timeout": {"timeout": 30},
        "retries_timeout": {"retries": 2, "timeout": 30},
        "key": {"retries": 2, "timeout": 30, "key": by_tens, "per_key": 20},
    }

    def peer(policy: dict[str, Any]) -> Callable[[], object]:
        fn = echo
        if "retries" in policy or "timeout" in policy:
            fn = hand_policy(echo, policy.get("retries", 0) + 1, policy.get("timeout"))
        key, per_key = policy.get("key"), policy.get("per_key", 1)
        return lambda: guarded_gather(
            fn, items, factory, limit=POLICY_LIMIT, key=key, per_key=per_key
        )

    cases: dict[str, Callable[[], object]] = {}
    for name, policy in policies.items():
        cases[f"whilst_{name}"] = functools.partial(
            whilst.map, echo, items, mode="async", limit=POLICY_LIMIT, **policy
        )
        cases[f"peer_{name}"] = peer(policy)
    # The cheapest peer, for reference: a raw worker pool with the same retry loop.
    pooled = hand_policy(echo, 3, 30)
    cases["raw_pool_retries_timeout"] = lambda: raw_pool(pooled, items, POLICY_LIMIT, factory)
    for case in cases.values():  # checks every case, and warms it up
        assert case() == list(items)
    samples = measure(cases, sizes.repeats, warm_up=False)
    m = medians(samples)
    figures["async"] = {
        "seconds": samples,
        "median": m,
        "limit": POLICY_LIMIT,
        "whilst_loop": whilst_loop,
        "peer_loop": peer_loop,
    }
    names = {
        "plain": ("no policy", ""),
        "retries": ("retries=2", " + retry loop"),
        "timeout": ("timeout=30", " + asyncio.timeout"),
        "retries_timeout": ("retries=2, timeout=30", " + both"),
        "key": ("+ key, per_key=20", " + both + Semaphore(20) per key"),
    }
    loops = (
        f"both on {whilst_loop}"
        if whilst_loop == peer_loop
        else f"whilst on {whilst_loop}, peer on {peer_loop}"
    )
    for i, (name, (mine, theirs)) in enumerate(names.items()):
        title = (
            f"policy, async, {n // 1000}k no-ops, limit {POLICY_LIMIT}, {loops}: "
            f"whilst / gather + Semaphore({POLICY_LIMIT})"
        )
        report.add(
            "policy",
            "",
            title if i == 0 else f"  {mine} / gather + Semaphore{theirs}",
            us(m[f"whilst_{name}"], n),
            us(m[f"peer_{name}"], n),
            paired(samples, f"whilst_{name}", f"peer_{name}"),
        )
    report.add(
        "policy",
        "",
        "  ref: retries=2, timeout=30 / raw worker pool + both",
        us(m["whilst_retries_timeout"], n),
        us(m["raw_pool_retries_timeout"], n),
        paired(samples, "whilst_retries_timeout", "raw_pool_retries_timeout"),
    )
    full = {"retries_timeout": "retries=2, timeout=30", "key": "retries, timeout, key"}
    for name in ("retries_timeout", "key"):
        report.add(
            "policy",
            "",
            f"  ref: policy path cost: whilst {full[name]} / whilst with no policy",
            us(m[f"whilst_{name}"], n),
            us(m["whilst_plain"], n),
            paired(samples, f"whilst_{name}", "whilst_plain"),
        )

    # -- threads and processes: no-op calls; retries alone keep batching ---------
    workers = min(32, CPUS + 4)  # whilst's default limit, as ThreadPoolExecutor's
    procs = CPUS
    retried = functools.partial(retrying, noop)

    def executor_map(fn: Callable[[int], int]) -> Callable[[], list[int]]:
        def run() -> list[int]:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(fn, items))

        return run

    threads: dict[str, Callable[[], object]] = {
        "whilst_plain": lambda: whilst.map(noop, items, mode="threads", limit=workers),
        "whilst_retries": lambda: whilst.map(noop, items, mode="threads", limit=workers, retries=2),
        "peer_plain": executor_map(noop),
        "peer_retries": executor_map(retried),
    }
    for case in threads.values():
        assert case() == list(items)
    samples = measure(threads, sizes.repeats, warm_up=False)
    figures["threads"] = {"seconds": samples, "median": medians(samples), "workers": workers}
    pool_rows(
        report,
        samples,
        n,
        f"policy, threads, {n // 1000}k no-ops, {workers} threads: whilst / ThreadPoolExecutor.map",
    )

    # Warm, as row 5: whilst's workers start in the untimed checking run.
    with multiprocessing.Pool(procs) as pool:
        processes: dict[str, Callable[[], object]] = {
            "whilst_plain": lambda: whilst.map(noop, items, mode="processes", limit=procs),
            "whilst_retries": lambda: whilst.map(
                noop, items, mode="processes", limit=procs, retries=2
            ),
            "peer_plain": lambda: pool.map(noop, items),
            "peer_retries": lambda: pool.map(retried, items),
        }
        for case in processes.values():
            assert case() == list(items)
        samples = measure(processes, sizes.repeats, warm_up=False)
    figures["processes"] = {"seconds": samples, "median": medians(samples), "processes": procs}
    pool_rows(
        report,
        samples,
        n,
        f"policy, processes, {n // 1000}k no-ops, {procs} processes, warm: "
        "whilst / Pool.map (chunksize auto)",
    )


def fresh(path: Path) -> Path:
    """``path`` with no SQLite file (nor its WAL) left from an earlier case."""
    for end in ("", "-wal", "-shm"):
        Path(f"{path}{end}").unlink(missing_ok=True)
    return path


def hand_journal(path: Path, values: list[int], mode: str) -> list[int]:
    """What a user writes by hand to keep results in SQLite: each value as a row of
    the same columns, 1,024 rows a transaction, after the run (so a crash loses it all)."""
    from whilst._journal import _SCHEMA

    db = sqlite3.connect(fresh(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    now = time.time()
    rows = [
        (f"i:{i}", i, repr(i), "ok", 1, now, now, mode, "", None, None, json.dumps(v), "json", 1)
        for i, v in enumerate(values)
    ]
    for k in range(0, len(rows), 1024):
        with db:
            db.executemany(f"INSERT INTO tasks VALUES ({', '.join('?' * 14)})", rows[k : k + 1024])
    db.close()
    return values


def bare_rows(path: Path, values: list[int]) -> list[int]:
    """The least a journal with a row per task can cost: one integer a row, in one
    transaction, in the journal's own WAL mode; nothing about the task kept."""
    db = sqlite3.connect(fresh(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (i INTEGER PRIMARY KEY)")
    with db:
        db.executemany("INSERT INTO t VALUES (?)", ((i,) for i in range(len(values))))
    db.close()
    return values


def bench_journal(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """What journaling costs: no-op tasks with and without ``journal=``, against the
    same run writing its results to SQLite by hand; and how soon a resume of a
    journal with 99% done starts the first task left."""
    n = sizes.journal_n
    items = range(n)
    figures: dict[str, Any] = {"n": n}
    report.figures["journal"] = figures
    workers = min(32, CPUS + 4)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "run.db"
        runs: dict[str, dict[str, Callable[[], object]]] = {
            "async": {
                "whilst_plain": lambda: whilst.map(echo, items, mode="async"),
                "whilst_journal": lambda: whilst.map(echo, items, mode="async", journal=fresh(db)),
                "peer_journal": lambda: hand_journal(
                    db, guarded_gather(echo, items, None, limit=POLICY_LIMIT), "async"
                ),
                "floor": lambda: bare_rows(db, whilst.map(echo, items, mode="async")),
            },
            "threads": {
                "whilst_plain": lambda: whilst.map(noop, items, mode="threads"),
                "whilst_journal": lambda: whilst.map(
                    noop, items, mode="threads", journal=fresh(db)
                ),
                "peer_journal": lambda: hand_journal(
                    db, list(ThreadPoolExecutor(workers).map(noop, items)), "threads"
                ),
                "floor": lambda: bare_rows(db, whilst.map(noop, items, mode="threads")),
            },
        }
        peers = {"async": "gather + Semaphore(100)", "threads": "ThreadPoolExecutor.map"}
        for mode, cases in runs.items():
            for case in cases.values():
                assert case() == list(items)
            samples = measure(cases, sizes.repeats, warm_up=False)
            m = medians(samples)
            figures[mode] = {"seconds": samples, "median": m}
            report.add(
                "journal",
                "",
                f"journal, {mode}, {n // 1000}k no-ops: whilst with journal= / without",
                secs(m["whilst_journal"]),
                secs(m["whilst_plain"]),
                paired(samples, "whilst_journal", "whilst_plain"),
                ("<=", 1.25),
            )
            report.add(
                "journal",
                "",
                f"  whilst with journal= / {peers[mode]}, then the rows into SQLite by hand",
                secs(m["whilst_journal"]),
                secs(m["peer_journal"]),
                paired(samples, "whilst_journal", "peer_journal"),
            )
            report.add(
                "journal",
                "",
                f"  ref: the least a row a task adds: without, then {n // 1000}k one-integer "
                "rows into SQLite / without",
                secs(m["floor"]),
                secs(m["whilst_plain"]),
                paired(samples, "floor", "whilst_plain"),
            )

        # Resume: 99% of the tasks done; how soon does the first one left start?
        whilst.map(noop, (x for x in items if x % 100 != 99), mode="threads", journal=fresh(db))
        firsts: list[float] = []
        for _ in range(sizes.repeats):
            began, first = time.perf_counter(), []

            def task(x: int, first: list[float] = first) -> int:
                if not first:
                    first.append(time.perf_counter())
                return x

            task.__qualname__ = noop.__qualname__
            task.__module__ = noop.__module__
            whilst.map(task, items, mode="threads", journal=db, resume="unfinished")
            firsts.append(first[0] - began)
            with sqlite3.connect(db) as rw:  # undo the rerun: the same resume each round
                rw.execute("DELETE FROM tasks WHERE idx % 100 = 99")
    figures["resume_first_task"] = firsts
    took = statistics.median(firsts)
    report.add(
        "journal",
        "",
        f"resume of {n // 1000}k tasks, 99% done: first task left starts after / 2 s",
        secs(took),
        "2 s",
        took / 2,
        ("<=", 1.0),
    )


def bench_watch(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """What watching a run costs: progress (a timer reading counters) and the
    timeline behind report=/trace= (per-task events), on no-op tasks."""
    n = sizes.watch_n
    items = range(n)
    figures: dict[str, Any] = {"n": n}
    report.figures["watch"] = figures
    snapshots: list[whilst.Progress] = []
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "run.html"
        for mode, fn in (("async", echo), ("threads", noop)):
            cases: dict[str, Callable[[], object]] = {
                "plain": lambda fn=fn, mode=mode: whilst.map(fn, items, mode=mode),
                "progress": lambda fn=fn, mode=mode: whilst.map(
                    fn, items, mode=mode, progress=snapshots.append
                ),
                "report": lambda fn=fn, mode=mode: whilst.map(fn, items, mode=mode, report=page),
            }
            for case in cases.values():
                assert case() == list(items)
            samples = measure(cases, sizes.repeats, warm_up=False)
            m = medians(samples)
            figures[mode] = {"seconds": samples, "median": m}
            report.add(
                "watch",
                "",
                f"watch, {mode}, {n // 1000}k no-ops: progress= / none",
                secs(m["progress"]),
                secs(m["plain"]),
                paired(samples, "progress", "plain"),
                ("<=", 1.05),
            )
            report.add(
                "watch",
                "",
                "  report= (events, the page written at the end) / none",
                secs(m["report"]),
                secs(m["plain"]),
                paired(samples, "report", "plain"),
            )
            figures[mode]["page_bytes"] = page.stat().st_size


def bench_run(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """``whilst run`` against ``xargs -P`` and GNU parallel: jobs of ``true`` at -j 8,
    the whole command timed (start-up included), inputs on stdin."""
    n = sizes.run_jobs
    inputs = "".join(f"{i}\n" for i in range(n)).encode()
    whilst_cmd = [*WHILST, "run", "-j", "8", "-q", "true"]
    commands = {
        "whilst": whilst_cmd,
        "xargs": ["xargs", "-P", "8", "-n", "1", "true"],
        "parallel": ["parallel", "-j", "8", "true"],
    }
    available = {k: v for k, v in commands.items() if shutil.which(v[0])}

    def case(argv: list[str]) -> Callable[[], object]:
        return lambda: subprocess.run(argv, input=inputs, check=True, capture_output=True)

    # whilst and each peer in rounds of their own: xargs, the close race (a round
    # swings 10% either way), over three times the rounds of parallel (6 s a run).
    report.figures["run"] = {"jobs": n}
    for peer, target, rounds in (("xargs", 1.0, 3), ("parallel", 4.5, 1)):
        if peer not in available:
            continue
        samples = measure(
            {"whilst": case(whilst_cmd), peer: case(available[peer])}, rounds * sizes.repeats
        )
        m = medians(samples)
        report.figures["run"][peer] = {"seconds": samples, "median": m}
        rate = {name: n / seconds for name, seconds in m.items()}
        report.add(
            "run",
            "",
            f"whilst run, {n:,} jobs of true at -j 8: throughput / {peer}"
            + (" -P 8 -n 1" if peer == "xargs" else ""),
            f"{rate['whilst']:,.0f} jobs/s",
            f"{rate[peer]:,.0f} jobs/s",
            paired(samples, peer, "whilst"),
            (">=", target),
        )


def bench_http(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """``whilst http`` against a hand-written aiohttp loop (same concurrency) and
    ``xargs -P 8 curl``: GETs to a local server that answers after 10 ms, each
    whole command timed, URLs on stdin."""
    n = sizes.http_n
    server = subprocess.Popen(
        [sys.executable, str(BENCH / "_http_peers.py"), "serve", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        urls = "".join(f"http://127.0.0.1:{port}/{i}\n" for i in range(n)).encode()
        limit = "100"
        commands = {
            "whilst": [*WHILST, "http", "-j", limit, "--per-host", limit, "-q"],
            "aiohttp": [sys.executable, str(BENCH / "_http_peers.py"), "fetch", limit],
            "aiohttp_uvloop": [sys.executable, str(BENCH / "_http_peers.py"), "fetch-uvloop",
                               limit],
            "curl": ["xargs", "-P", "8", "-n", "1", "curl", "-s", "-o", "/dev/null"],
        }  # fmt: skip
        if shutil.which("curl") is None:
            del commands["curl"]

        def case(argv: list[str]) -> Callable[[], object]:
            return lambda: subprocess.run(
                argv, input=urls, check=True, stdout=subprocess.DEVNULL, timeout=600
            )

        samples = measure({name: case(argv) for name, argv in commands.items()}, sizes.repeats)
    finally:
        server.kill()
        server.wait()
    m = medians(samples)
    report.figures["http"] = {"gets": n, "seconds": samples, "median": m}
    rate = {name: n / seconds for name, seconds in m.items()}
    titles = {
        "aiohttp": ("a hand-written aiohttp loop, 100 in flight (asyncio.run)", 0.9),
        "aiohttp_uvloop": ("  ref: the same hand-written loop on uvloop", None),
        "curl": ("xargs -P 8 curl", 5.0),
    }
    for peer, (title, target) in titles.items():
        if peer in m:
            report.add(
                "http",
                "",
                title
                if target is None
                else f"whilst http, {n:,} GETs of 10 ms, 100 in flight: throughput / {title}",
                f"{rate['whilst']:,.0f} GET/s",
                f"{rate[peer]:,.0f} GET/s",
                paired(samples, peer, "whilst"),
                None if target is None else (">=", target),
            )


def bench_doctor(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """What ``whilst doctor`` costs a loop-heavy program: 100,000 tiny tasks (1,000 at
    a time, each yielding once), the program's own time with and without it."""
    n = sizes.async_n
    program = str(BENCH / "_loop_heavy.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}

    def case(*argv: str) -> Callable[[], Measured]:
        def run() -> Measured:
            out = subprocess.run(
                [sys.executable, *argv, program, str(n)], capture_output=True, text=True,
                check=True, env=env,
            )  # fmt: skip
            return Measured(float(out.stdout.split()[0]))

        return run

    samples = measure({"plain": case(), "doctor": case("-m", "whilst", "doctor")}, sizes.repeats)
    m = medians(samples)
    report.figures["doctor"] = {"tasks": n, "seconds": samples, "median": m}
    report.add(
        "doctor",
        "",
        f"whilst doctor on {n // 1000}k tiny tasks: the program's time / without the doctor",
        secs(m["doctor"]),
        secs(m["plain"]),
        paired(samples, "doctor", "plain"),
        ("<=", 1.05),
    )


def bench_dask(report: Report, sizes: Sizes, args: argparse.Namespace) -> None:
    """mode='dask' against ``client.map`` + ``gather`` on the same LocalCluster of two
    worker processes: no-op tasks (whilst batches them; client.map sends one each)."""
    from distributed import Client, LocalCluster

    n = sizes.threads_n // 10
    items = range(n)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        cases: dict[str, Callable[[], object]] = {
            "whilst": lambda: whilst.map(noop, items, mode="dask", cluster=client, limit=2),
            "client_map": lambda: client.gather(client.map(noop, items, pure=False)),
        }
        for case in cases.values():
            assert list(case()) == list(items)  # type: ignore[call-overload]
        samples = measure(cases, sizes.repeats, warm_up=False)
    m = medians(samples)
    report.figures["dask"] = {"tasks": n, "seconds": samples, "median": m}
    report.add(
        "dask",
        "",
        f"dask, {n:,} no-ops on a LocalCluster of 2 workers: throughput / client.map",
        f"{n / m['whilst']:,.0f} tasks/s",
        f"{n / m['client_map']:,.0f} tasks/s",
        paired(samples, "client_map", "whilst"),
    )


def pool_rows(report: Report, samples: dict[str, list[float]], n: int, title: str) -> None:
    """The policy rows of one pool: plain and ``retries=2`` against the pool's map of
    the bare function and of it under a retry loop, and the policy path's cost."""
    m = medians(samples)
    for name, label in (("plain", title), ("retries", "  retries=2 / the same, retry loop in fn")):
        report.add(
            "policy",
            "",
            label,
            us(m[f"whilst_{name}"], n),
            us(m[f"peer_{name}"], n),
            paired(samples, f"whilst_{name}", f"peer_{name}"),
        )
    report.add(
        "policy",
        "",
        "  ref: policy path cost: whilst retries=2 / whilst with no policy",
        us(m["whilst_retries"], n),
        us(m["whilst_plain"], n),
        paired(samples, "whilst_retries", "whilst_plain"),
    )


BENCHMARKS: dict[str, Callable[[Report, Sizes, argparse.Namespace], None]] = {
    "async": bench_async,
    "memory": bench_memory,
    "sleep": bench_sleep,
    "threads": bench_threads,
    "processes": bench_processes,
    "cpu": bench_cpu,
    "policy": bench_policy,
    "journal": bench_journal,
    "watch": bench_watch,
    "run": bench_run,
    "http": bench_http,
    "doctor": bench_doctor,
    "dask": bench_dask,
}


# -- other load on the machine ---------------------------------------------------


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (steal too: a busy neighbour VM)."""
    t = psutil.cpu_times()
    return float(sum(getattr(t, name, 0.0) for name in BUSY_FIELDS))


def _our_seconds() -> float:
    """CPU seconds of this process and its descendants, living or reaped."""
    me = psutil.Process()
    times = me.cpu_times()
    total = float(times.user + times.system + times.children_user + times.children_system)
    for child in me.children(recursive=True):
        try:
            total += _cpu_seconds(child)
        except psutil.Error:
            continue
    return total


class Background:
    """CPU time the rest of the machine uses meanwhile (all of it busy, minus this
    process and its children): a figure measured beside a test run is suspect."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.busy = _busy_seconds()
        self.ours = _our_seconds()
        self.procs = self._others()

    @staticmethod
    def _others() -> dict[tuple[int, float], tuple[float, str]]:
        me = psutil.Process()
        ours = {me.pid, *(child.pid for child in me.children(recursive=True))}
        seen: dict[tuple[int, float], tuple[float, str]] = {}
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.pid in ours:
                continue
            try:
                key = (proc.pid, proc.create_time())
                args = proc.info["cmdline"] or [proc.info["name"] or "?"]
                what = " ".join(" ".join(args).split())[:50]  # python -c may span lines
                seen[key] = (_cpu_seconds(proc), f"pid {proc.pid} {what}")
            except psutil.Error:
                continue
        return seen

    def cores(self) -> tuple[float, list[str]]:
        """Mean cores used elsewhere since the start, and the busiest other processes
        still alive (short-lived ones count in the total but cannot be named)."""
        wall = time.perf_counter() - self.start
        if wall <= 0:
            return 0.0, []
        others = (_busy_seconds() - self.busy) - (_our_seconds() - self.ours)
        used: list[tuple[float, str]] = []
        for key, (cpu, what) in self._others().items():
            earlier = self.procs.get(key)
            used.append((cpu - (earlier[0] if earlier else 0.0), what))
        used.sort(reverse=True)
        busiest = [f"{cpu / wall:.2f} {what}" for cpu, what in used[:3] if cpu / wall >= 0.05]
        return max(0.0, others / wall), busiest


def wait_quiet(console: Console, seconds: float) -> None:
    """Wait up to ``seconds`` for other processes to leave the CPUs alone."""
    start = time.monotonic()
    said: set[str] = set()
    while time.monotonic() - start < seconds:
        other = Background()
        time.sleep(1.0)
        cores, busiest = other.cores()
        if cores < BUSY:
            break
        news = [what for what in busiest if what.split(" ", 3)[2] not in said]
        if news or not said:
            said.update([what.split(" ", 3)[2] for what in busiest] or ["?"])
            console.print(
                f"[dim]other processes are busy ({cores:.2f} cores), waiting: "
                f"{'; '.join(news) or 'short-lived ones'}[/]"
            )
    console.print(f"[dim]waited {time.monotonic() - start:.0f} s for a quiet machine[/]")


# -- output ---------------------------------------------------------------------


NOTES = (
    "Async rows: limit 1000, uvloop for whilst and its peers alike (whilst uses uvloop when "
    "installed), a new loop per run inside the timing. Threads: each pool is started and "
    "stopped inside the timing. Processes: warm for all: whilst's workers and the Pool are "
    "started before the timing, joblib's executor is reused between calls. Memory: peak RSS "
    "(VmHWM) of a fresh child process above its own peak after imports. Policy rows: "
    "coroutines that return without yielding; each peer is what a user writes by hand for "
    "the same policy (a retry loop of 3 attempts without sleep, asyncio.timeout(30) per "
    "attempt, a Semaphore(20) per key), on the loop whilst uses; Pool.map warm."
)


def table(report: Report, title: str) -> Table:
    out = Table(title=title, title_justify="left", caption=NOTES, caption_justify="left")
    out.add_column("#", justify="right")
    out.add_column("benchmark")
    out.add_column("whilst", justify="right")
    out.add_column("peer", justify="right")
    out.add_column("ratio", justify="right")
    out.add_column("target", justify="right")
    out.add_column("met", justify="center")
    for row in report.rows:
        met = {True: "[green]yes[/]", False: "[red]NO[/]", None: "[dim]ref[/]"}[row.met]
        style = "dim" if row.met is None else None
        out.add_row(
            row.number,
            row.name,
            row.whilst,
            row.peer,
            f"{row.ratio:.2f}",
            row.target,
            met,
            style=style,
        )
    return out


def commit(where: Path) -> str:
    """The git commit whilst was imported from, marked ``-dirty`` when its sources
    differ from it; ``-`` outside a git work tree."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "-"
    return head + ("-dirty" if git("status", "--porcelain", "--", ".") else "")


def machine() -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "whilst_source": str(Path(whilst.__file__).parent),
        "whilst_commit": commit(Path(whilst.__file__).parent),
        "cpus": CPUS,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "whilst": whilst.__version__,
        "uvloop": version("uvloop"),
        "joblib": version("joblib"),
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run just this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--gather-1m",
        action="store_true",
        help="measure gather's memory over the full million items (about 20 s, 1.4 GB)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="when other processes were busy during a timed round, wait up to this long "
        "for them to go idle and redo the round (default: %(default)g; 0: never redo)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the figures (default: bench/results.json for a full run of "
        "every benchmark; not written for --quick or --only unless given)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    names = args.only or list(BENCHMARKS)
    console = Console(width=None if sys.stdout.isatty() else 150)
    QUIET.wait, QUIET.console = args.wait_quiet, console
    info = machine()  # now: whilst was imported at the start, whatever happens on disk later
    # An install carries compiled bytecode (pip writes it; an editable install on
    # first import). Where PYTHONDONTWRITEBYTECODE is set (sandboxes, some CI),
    # every `python -m whilst` would compile whilst anew, about 0.1 s a command.
    compileall.compile_dir(Path(whilst.__file__).parent, quiet=1)
    report = Report()
    started = time.perf_counter()
    background: dict[str, dict[str, Any]] = {}
    for name in names:
        redone, first = QUIET.redone, len(QUIET.kept)
        other = Background()
        with console.status(f"benchmark {name}..."):
            took = timed(lambda name=name: BENCHMARKS[name](report, sizes, args))
        cores, busiest = other.cores()
        redone = QUIET.redone - redone
        worst = max(QUIET.kept[first:], default=cores)
        background[name] = {
            "cores": cores,
            "worst_timed_round": worst,
            "busiest": busiest,
            "rounds_redone": redone,
        }
        line = (
            f"{name}: {took:.1f} s; other processes used {worst:.2f} of {CPUS} cores "
            f"in its busiest timed round"
        )
        if redone:
            line += f"; {redone} rounds redone when the machine got busy"
        if worst >= BUSY:
            line = f"[yellow]{line}: {'; '.join(busiest)}[/]"
        console.print(line if worst >= BUSY else f"[dim]{line}[/]")
    total = time.perf_counter() - started
    version = info["whilst_commit"] if info["whilst_commit"] != "-" else info["whilst_source"]
    title = (
        f"whilst {version} benchmarks{' (quick)' if args.quick else ''}: {info['cpus']} CPUs, "
        f"Python {info['python']}, uvloop {info['uvloop']}; medians, {total:.0f} s in all"
    )
    console.print(table(report, title))
    missed = [row for row in report.rows if row.met is False]
    console.print(f"{len(missed)} of {sum(r.met is not None for r in report.rows)} targets missed")
    now = commit(Path(whilst.__file__).parent)
    if now != info["whilst_commit"]:
        console.print(
            f"[yellow]warning: whilst's sources changed during the run ({info['whilst_commit']} "
            f"at the start, {now} at the end); worker processes may have run either[/]"
        )
    noisy = [name for name, bg in background.items() if bg["worst_timed_round"] >= BUSY]
    if noisy:
        console.print(
            f"[yellow]warning: other processes were busy during {', '.join(noisy)}; "
            "those figures are not to be trusted (run again on a quiet machine)[/]"
        )
    path = args.json
    if path is None and not args.quick and not args.only:
        path = BENCH / "results.json"
    if path is not None:
        data = {
            "machine": info,
            "quick": args.quick,
            "sizes": asdict(sizes),
            "seconds": total,
            "background_cores": background,
            "rows": [asdict(row) for row in report.rows],
            "figures": report.figures,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"figures written to {path}")


if __name__ == "__main__":
    main()
