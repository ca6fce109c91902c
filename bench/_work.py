"""Task functions the benchmarks run.

They live at module level in their own module so that worker processes
(``multiprocessing``, joblib's loky and whilst's ``processes`` mode) can import
them by name instead of pickling them by value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def yield_once(x: int) -> int:
    """A no-op coroutine that yields to the loop once: pure scheduling cost."""
    await asyncio.sleep(0)
    return x


async def echo(x: int) -> int:
    """A coroutine that returns at once, never yielding: a task with no work at all."""
    return x


async def nap(x: int, seconds: float = 0.05) -> int:
    """An I/O-shaped task: waits ``seconds`` without using the CPU."""
    await asyncio.sleep(seconds)
    return x


def noop(x: int) -> int:
    """A plain function that does nothing: pure dispatch cost in a pool."""
    return x


def retrying(fn: Callable[[int], int], x: int, attempts: int = 3) -> int:
    """``fn(x)`` under a hand-written retry loop, no sleep: the peer of ``retries=2``
    in a pool (``functools.partial(retrying, noop)`` pickles by name)."""
    for attempt in range(attempts):
        try:
            return fn(x)
        except Exception:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def square(x: int) -> int:
    """A tiny CPU task: far cheaper than sending it to another process."""
    return x * x


def spin(n: int) -> int:
    """Pure-Python CPU work: ``n`` loop turns, holding the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total
