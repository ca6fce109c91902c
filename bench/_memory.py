"""Child process for the memory benchmark: runs one thing, reports its peak RSS.

Usage: ``python bench/_memory.py {whilst,gather} N LIMIT``. Prints one JSON
object: the peak RSS after imports (baseline), the peak at the end, and the wall
time of the run itself, so the parent can subtract the baseline. A fresh
process per measurement, since a peak only ever grows.

On Linux the peak is ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``:
the kernel carries ``ru_maxrss`` over from the parent across fork and exec, so
a child of a big benchmark process would start with the parent's peak and
never seem to grow.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import whilst
from _work import yield_once


def _peak_kib() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def _items(n: int) -> Iterator[int]:
    yield from range(n)


def run_whilst(n: int, limit: int) -> int:
    count = 0
    for result in whilst.imap(yield_once, _items(n), mode="async", limit=limit):
        count += result.ok
    return count


def run_gather(n: int) -> int:
    async def main() -> list[int]:
        return await asyncio.gather(*(yield_once(i) for i in _items(n)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return len(runner.run(main()))


def main() -> None:
    what, n, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    baseline = _peak_kib()
    start = time.perf_counter()
    done = run_whilst(n, limit) if what == "whilst" else run_gather(n)
    wall = time.perf_counter() - start
    if done != n:
        raise SystemExit(f"{what}: {done} of {n} tasks ended ok")
    print(json.dumps({"baseline_kib": baseline, "peak_kib": _peak_kib(), "wall": wall}))


if __name__ == "__main__":
    main()
