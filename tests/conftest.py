"""Shared fixtures: one contract suite runs on every mode (style.md, principle 9)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import pytest

# Every loop whilst creates in the tests runs in asyncio debug mode, so a
# never-awaited coroutine or a never-retrieved exception fails loudly.
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")

MODES = ["sync", "async", "threads", "processes"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Task functions live at module level so processes mode can import them by name.


def double(x: int) -> int:
    return x * 2


async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def nap(x: float) -> float:
    time.sleep(x)
    return x


async def anap(x: float) -> float:
    await asyncio.sleep(x)
    return x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"no threes: {x}")
    return x


async def afail_on_three(x: int) -> int:
    await asyncio.sleep(0)
    return fail_on_three(x)


def for_mode(mode: str, plain: Callable[..., Any], coro: Callable[..., Any]) -> Callable[..., Any]:
    """The task function a mode takes: coroutine functions for async, plain ones elsewhere."""
    return coro if mode == "async" else plain


def max_overlap(results: list[Any]) -> int:
    """Most tasks running at once, computed from recorded start and end times."""
    edges = sorted([(r.start, 1) for r in results] + [(r.end, -1) for r in results])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


#: What asyncio's debug mode logs of a callback that held the loop 0.1 s or more:
#: a loaded machine makes some, and they are no part of what a command says.
SLOW_CALLBACK = re.compile(rb"^Executing <.*> took \d+\.\d+ seconds\n", re.MULTILINE)


def cli(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, capture_output=True, ...)``, its stderr without the
    slow-callback lines of asyncio's debug mode (which the tests turn on)."""
    run = subprocess.run(argv, capture_output=True, **kwargs)
    text = kwargs.get("text", False)
    err = run.stderr.encode() if text else run.stderr
    err = SLOW_CALLBACK.sub(b"", err)
    run.stderr = err.decode() if text else err
    return run


def line_by_line(
    args: list[str], lines: list[str], answered: Callable[[str, IO[bytes]], None]
) -> None:
    """``whilst *args`` with a pipe for stdin, sent ``lines`` one at a time, each only
    once ``answered(line, stdout)`` read its answer: a command that waited for more
    input before it answered would hang (a watchdog kills it after 30 s). Then
    stdin closes, and the command must exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "whilst", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        for line in lines:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            answered(line, proc.stdout)
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        watchdog.cancel()
        proc.kill()
        proc.stdout.close()
