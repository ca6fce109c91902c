"""Ctrl-C during a run: nothing new starts, workers stop, the caller hears of it fast."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import whilst

    MODE = sys.argv[1]

    def say(word):
        sys.stdout.write(word + "\\n")  # one write: lines from threads do not interleave
        sys.stdout.flush()

    def task(x):
        say("started")
        time.sleep(30)
        say("finished")

    async def atask(x):
        say("started")
        try:
            await asyncio.sleep(30)
        finally:
            say("cleaned")

    fn = atask if MODE == "async" else task
    limit = 1 if MODE == "sync" else 2
    try:
        if sys.argv[2] == "map":
            whilst.map(fn, range(20), mode=MODE, limit=limit)
        else:
            for r in whilst.imap(fn, range(20), mode=MODE, limit=limit):
                pass
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    """
)


@pytest.mark.parametrize("form", ["map", "imap"])
@pytest.mark.parametrize("mode", ["sync", "async", "threads", "processes"])
def test_ctrl_c_stops_the_run_within_two_seconds(mode: str, form: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, form],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        expect = 1 if mode == "sync" else 2
        lines = [proc.stdout.readline() for _ in range(expect)]  # type: ignore[union-attr]
        assert lines == ["started\n"] * expect, lines
        time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert elapsed < 2.0, f"took {elapsed:.2f}s to stop"
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode in (-signal.SIGINT, 130, 1)
    assert "started" not in out  # nothing new started after the signal
    if mode == "async":
        assert out.count("cleaned") == 2  # running coroutines were cancelled, finally ran
    deadline = time.monotonic() + 3
    alive = [c for c in children if _alive(c)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [c for c in children if _alive(c)]
    assert alive == [], f"left behind: {alive}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


NESTED = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import whilst

    def task(x):
        sys.stdout.write("started\\n")
        sys.stdout.flush()
        time.sleep(30)

    async def main():  # a sync form inside a running loop, as in a notebook
        whilst.map(task, range(20), mode=sys.argv[1], limit=2)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_one_ctrl_c_stops_a_run_inside_asyncio_run(mode: str) -> None:
    # asyncio.run's handler cancels the main task instead of raising: whilst notices.
    proc = subprocess.Popen(
        [sys.executable, "-c", NESTED, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert lines == ["started\n"] * 2, lines
        time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert elapsed < 2.0, f"took {elapsed:.2f}s to stop"
    assert "KeyboardInterrupt" in err
    assert "started" not in out
    deadline = time.monotonic() + 3
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c for c in children if _alive(c)] == []
