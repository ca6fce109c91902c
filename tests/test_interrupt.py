"""Ctrl-C during a run: nothing new starts, workers stop, the caller hears of it fast."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import whilst

    MODE, FORM, GRACE, SECONDS = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    POLICY = {"": {}, "timeout": {"timeout": 60}, "retries": {"retries": 1}}[sys.argv[5]]

    def say(word):
        sys.stdout.write(word + "\\n")  # one write: lines from threads do not interleave
        sys.stdout.flush()

    def task(x):
        say("started")
        time.sleep(SECONDS)
        say("finished")

    async def atask(x):
        say("started")
        try:
            await asyncio.sleep(SECONDS)
            say("finished")
        finally:
            say("cleaned")

    fn = atask if MODE == "async" else task
    limit = 1 if MODE == "sync" else 2

    async def on_a_loop():  # amap and aimap, under asyncio.run's own Ctrl-C handler
        if FORM == "amap":
            await whilst.amap(fn, range(20), mode=MODE, limit=limit, grace=GRACE, **POLICY)
        else:
            run = whilst.aimap(fn, range(20), mode=MODE, limit=limit, grace=GRACE, **POLICY)
            async for r in run:
                say(f"result {r.index} {r.status.value} {r.error}")

    try:
        if FORM == "map":
            whilst.map(fn, range(20), mode=MODE, limit=limit, grace=GRACE, **POLICY)
        elif FORM == "imap":
            for r in whilst.imap(fn, range(20), mode=MODE, limit=limit, grace=GRACE, **POLICY):
                say(f"result {r.index} {r.status.value} {r.error}")
        else:
            asyncio.run(on_a_loop())
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    except SystemExit as exc:
        print("terminated", exc.code, flush=True)
        raise
    """
)


def start(
    mode: str, form: str, grace: float, seconds: float, policy: str = ""
) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """A run of 20 tasks, once its first ones have started; and its child processes.
    ``policy``: none, a timeout (the policy path) or retries (batches on it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, form, str(grace), str(seconds), policy],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    expect = 1 if mode == "sync" else 2
    lines = [proc.stdout.readline() for _ in range(expect)]  # type: ignore[union-attr]
    assert lines == ["started\n"] * expect, (
        lines,
        proc.stderr.read() if proc.poll() is not None else "",
    )  # type: ignore[union-attr]
    time.sleep(0.2)
    return proc, psutil.Process(proc.pid).children(recursive=True)


def stop(proc: subprocess.Popen[str], *signals: signal.Signals) -> tuple[str, str, float]:
    """Send ``signals`` 0.2 s apart; stdout, stderr and seconds from the last to the exit."""
    try:
        for k, signum in enumerate(signals):
            if k:
                time.sleep(0.2)
            proc.send_signal(signum)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=15)
        return out, err, time.monotonic() - t0
    finally:
        proc.kill()


def assert_none_left(children: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 3
    alive = [c for c in children if _alive(c)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [c for c in children if _alive(c)]
    assert alive == [], f"left behind: {alive}"


#: Every form in every mode, but a sync-mode task blocks the caller's loop, which
#: therefore cannot see a signal before the task ends (asyncio's second Ctrl-C can).
CASES = [
    (mode, form)
    for mode in ("sync", "async", "threads", "processes")
    for form in ("map", "imap", "amap", "aimap")
    if not (mode == "sync" and form.startswith("a"))
]


@pytest.mark.parametrize(("mode", "form"), CASES)
def test_ctrl_c_cancels_running_tasks_once_the_grace_is_over(mode: str, form: str) -> None:
    proc, children = start(mode, form, grace=0.5, seconds=30)
    out, err, elapsed = stop(proc, signal.SIGINT)
    assert elapsed < 0.5 + 1.5, f"took {elapsed:.2f}s to stop"
    assert "interrupted" in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode in (-signal.SIGINT, 130)
    assert "started" not in out  # nothing new started after the signal
    assert "finished" not in out
    if mode == "async":
        assert out.count("cleaned") == 2  # running coroutines were cancelled, finally ran
    assert_none_left(children)


@pytest.mark.parametrize(
    ("mode", "form", "policy"),
    [
        ("async", "imap", ""),
        ("async", "aimap", "timeout"),
        ("threads", "imap", ""),
        ("threads", "imap", "timeout"),
        ("threads", "aimap", "retries"),
        ("processes", "imap", "timeout"),
        ("processes", "imap", "retries"),
        ("processes", "aimap", ""),
    ],
)
def test_each_task_the_signal_cut_short_is_a_cancelled_result_before_the_interrupt(
    mode: str, form: str, policy: str
) -> None:
    """Once the grace is over, the two running tasks end cancelled: a reader (and
    ``whilst run --results``) gets their results before the KeyboardInterrupt;
    they were lost with the run's cancellation."""
    proc, children = start(mode, form, grace=0.3, seconds=30, policy=policy)
    out, err, _ = stop(proc, signal.SIGINT)
    lines = out.splitlines()
    cut = [line for line in lines if line.startswith("result ")]
    # (A thread runs on: it says so, as a timeout's does.)
    how = "thread still running" if mode == "threads" else "the task was cancelled"
    assert [line.split(" ", 2)[1] for line in sorted(cut)] == ["0", "1"], (out, err)
    assert all(f"cancelled the run was interrupted: {how}" in line for line in cut), cut
    assert lines[-1] == "interrupted"
    assert_none_left(children)


@pytest.mark.parametrize("form", ["imap", "aimap"])
def test_after_a_second_signal_every_task_it_cut_short_is_handed_out(form: str) -> None:
    """aimap handed out the first and dropped the rest (whilst http --results lost
    their lines): a second signal stops it at the next read, but what the signal
    itself cut short is no result the caller was too slow for."""
    proc, children = start("async", form, grace=30, seconds=30)
    out, err, _ = stop(proc, signal.SIGINT, signal.SIGINT)
    cut = [line for line in out.splitlines() if line.startswith("result ")]
    assert len(cut) == 2, (out, err)
    assert all("the run was interrupted: the task was cancelled" in line for line in cut)
    assert out.splitlines()[-1] == "interrupted"
    assert_none_left(children)


BATCHES = textwrap.dedent(
    """
    import os, signal, threading, time
    import whilst

    ran = set()

    def f(x):
        time.sleep(0.003)
        ran.add(x)

    got = []
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        for r in whilst.imap(f, range(100_000), mode="threads", limit=2, grace=0):
            got.append(r)
    except KeyboardInterrupt:
        pass
    at_once = set(ran)
    time.sleep(1)
    never = [r.index for r in got if "never started" in str(r.error)]
    print(len(ran - at_once), len(never), len(set(never) & ran))
    """
)


def test_a_signal_leaves_no_task_of_a_threads_batch_to_run_after_the_run() -> None:
    """A thread ran the rest of its batch after the run was gone (24 tasks of 3 ms
    that were said to be cancelled ran after Ctrl-C). Only the task each thread
    runs as the signal comes goes on; the others never start, and say so."""
    out = subprocess.run(
        [sys.executable, "-c", BATCHES], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    after, never, never_but_ran = map(int, out.split())
    assert after <= 2  # one a thread
    assert never > 0
    assert never_but_ran == 0


@pytest.mark.parametrize("form", ["imap", "aimap"])
def test_with_no_grace_the_results_say_the_run_was_interrupted(form: str) -> None:
    """With grace=0 aimap's stop cancelled the run without telling the scheduler:
    results said "None: the task never started" and "the run was stopped"."""
    proc, children = start("async", form, grace=0, seconds=30, policy="timeout")
    out, err, _ = stop(proc, signal.SIGINT)
    cut = [line for line in out.splitlines() if line.startswith("result ")]
    assert len(cut) == 2, (out, err)
    assert all("the run was interrupted: the task was cancelled" in line for line in cut), cut
    assert_none_left(children)


GATED = textwrap.dedent(
    """
    import sys, time
    import whilst

    def burn(x):
        began = time.thread_time()
        while time.thread_time() - began < 30:
            pass

    if __name__ == "__main__":
        run = whilst.imap(burn, range(20), timeout=60, grace=0.3, limit=6)
        try:
            for r in run:
                print("result", r.index, r.status.value, r.error, flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


@pytest.mark.skipif(psutil.cpu_count() < 2, reason="auto keeps threads on one CPU")
def test_tasks_waiting_for_autos_turns_get_their_results_when_a_signal_stops_the_run(
    tmp_path: Path,
) -> None:
    """Auto moved to processes, two attempts running, the four other tasks read
    wait for a turn: after Ctrl-C they never start, and say so (they got no result)."""
    script = tmp_path / "gated.py"
    script.write_text(GATED)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(3)  # the probe's 0.5 s, then processes
    out, err, elapsed = stop(proc, signal.SIGINT)
    results = [line.split(" ", 3) for line in out.splitlines() if line.startswith("result ")]
    assert sorted(int(r[1]) for r in results) == list(range(6)), (out, err)
    assert {r[2] for r in results} == {"cancelled"}
    never = [r for r in results if "never started" in r[3]]
    assert len(never) >= 3, out  # (a probe thread of the first may still hold a turn)
    assert out.splitlines()[-1] == "interrupted"
    assert elapsed < 3


@pytest.mark.parametrize(("mode", "form"), CASES)
def test_ctrl_c_lets_running_tasks_finish_within_the_grace(mode: str, form: str) -> None:
    proc, children = start(mode, form, grace=10, seconds=1.0)
    out, _, elapsed = stop(proc, signal.SIGINT)
    assert out.count("finished") == (1 if mode == "sync" else 2), out
    assert "started" not in out
    assert "interrupted" in out
    assert elapsed < 3, f"took {elapsed:.2f}s: the run should end when its tasks do"
    assert_none_left(children)


@pytest.mark.parametrize(("mode", "form"), CASES)
def test_a_second_ctrl_c_cancels_at_once(mode: str, form: str) -> None:
    proc, children = start(mode, form, grace=30, seconds=30)
    out, _, elapsed = stop(proc, signal.SIGINT, signal.SIGINT)
    assert elapsed < 2, f"took {elapsed:.2f}s after the second Ctrl-C"
    assert "interrupted" in out
    assert "finished" not in out
    assert_none_left(children)


@pytest.mark.parametrize(("mode", "form"), CASES)
def test_sigterm_cleans_up_and_exits_143(mode: str, form: str) -> None:
    # Plain asyncio.run dies at once on SIGTERM and skips clean-up; whilst does not.
    proc, children = start(mode, form, grace=0.5, seconds=30)
    out, err, elapsed = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "terminated 143" in out
    assert elapsed < 0.5 + 1.5
    assert "started" not in out
    if mode == "async":
        assert out.count("cleaned") == 2
    assert_none_left(children)


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
        try:
            whilst.map(task, range(20), mode=sys.argv[1], limit=2, grace=0.5)
        finally:
            print("cleaned up", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_one_signal_stops_a_run_inside_asyncio_run(mode: str, signum: signal.Signals) -> None:
    # asyncio.run's handler cancels the main task instead of raising, and leaves
    # SIGTERM to kill the process at once, skipping clean-up: whilst handles both.
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
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert elapsed < 0.5 + 1.5, f"took {elapsed:.2f}s to stop"
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    else:  # SystemExit(143, 129): the process ends as the signal would, its clean-up done
        assert proc.returncode == 128 + signum, err
        assert "cleaned up" in out
    assert "started" not in out
    deadline = time.monotonic() + 3
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c for c in children if _alive(c)] == []


TWO_RUNS = textwrap.dedent(
    """
    import asyncio, sys, whilst

    async def task(x):
        await asyncio.sleep(x)
        print("finished", x, flush=True)
        return x

    async def main():
        async def short():
            await whilst.amap(task, [0.1], grace=5)
            print("short run over", flush=True)  # the other run still waits: SIGTERM is ours

        await asyncio.gather(short(), whilst.amap(task, [1.5, 1.5, 1.5], limit=2, grace=5))

    try:
        asyncio.run(main())
    except SystemExit as exc:
        print("terminated", exc.code, flush=True)
        raise
    """
)

CONSUMER = textwrap.dedent(
    """
    import asyncio, time, whilst

    async def quick(x):
        await asyncio.sleep(0.01)
        return x

    async def main():
        try:
            async with whilst.aimap(quick, range(10_000), grace=5) as run:
                async for r in run:
                    time.sleep(0.01)  # the consumer's own work: signals land here
                    if r.index == 20:
                        print("reading", flush=True)
        finally:
            print("finally ran", flush=True)

    asyncio.run(main())
    """
)


def test_a_signal_reaches_every_run_and_the_handler_outlives_the_first_to_end() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", TWO_RUNS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "finished 0.1\n"
    assert proc.stdout.readline() == "short run over\n"
    out, err, elapsed = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert out.splitlines() == ["finished 1.5", "finished 1.5", "terminated 143"]  # the grace
    assert elapsed < 3


def test_a_signal_while_an_aimap_consumer_works_stops_the_run_gracefully() -> None:
    # In an `async with` block whilst keeps its handlers while your code runs too.
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "reading\n"
    out, err, elapsed = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "finally ran" in out
    assert elapsed < 3


def signal_once_ready(
    args: list[str],
    ready: list[str],
    signum: signal.Signals = signal.SIGINT,
    feed: str | None = None,
    timeout: float = 15,
) -> tuple[str, str, float, int]:
    """Run ``python -c *args`` (``feed`` on a stdin pipe left open); once its first
    lines start as ``ready`` says and a moment passed, send ``signum``: its stdout,
    stderr, the seconds it took to exit after the signal, and its exit status."""
    with subprocess.Popen(
        [sys.executable, "-c", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            if feed is not None:
                proc.stdin.write(feed)
                proc.stdin.flush()
            for start in ready:
                line = proc.stdout.readline()
                assert line.startswith(start), (line, proc.poll())
            time.sleep(0.5)
            assert proc.poll() is None
            proc.send_signal(signum)
            t0 = time.monotonic()
            proc.wait(timeout=timeout)  # (stdin still open: the signal ends the input)
            elapsed = time.monotonic() - t0
            return proc.stdout.read(), proc.stderr.read(), elapsed, proc.returncode
        finally:
            proc.kill()


WAITING_INPUT = textwrap.dedent(
    """
    import asyncio, sys, time
    import whilst

    MODE, FORM, SOURCE, POLICY = sys.argv[1:]

    def say(word):
        sys.stdout.write(word + "\\n")
        sys.stdout.flush()

    def items():  # two items, then a long wait for the third
        yield 1
        yield 2
        time.sleep(60)
        yield 3

    def task(x):
        time.sleep(0.1)
        say("finished")
        return x

    async def atask(x):
        await asyncio.sleep(0.1)
        say("finished")
        return x

    fn = atask if MODE == "async" else task
    source = items() if SOURCE == "generator" else sys.stdin
    options = {"timeout": 30} if POLICY == "policy" else {}
    options["limit"] = 1 if MODE == "sync" else 2
    try:
        if FORM == "map":
            whilst.map(fn, source, mode=MODE, **options)
        else:
            for r in whilst.imap(fn, source, mode=MODE, **options):
                say(f"result {r.status}")
    except KeyboardInterrupt:
        say("interrupted")
        raise
    except SystemExit as exc:
        say(f"terminated {exc.code}")
        raise
    """
)


@pytest.mark.parametrize("source", ["generator", "stdin"])
@pytest.mark.parametrize(
    ("mode", "form", "policy"),
    [
        ("sync", "imap", "plain"),
        ("async", "map", "plain"),
        ("async", "imap", "policy"),
        ("threads", "imap", "plain"),
        ("processes", "map", "policy"),
    ],
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_is_acted_on_while_a_sync_input_waits_for_its_next_item(
    source: str, mode: str, form: str, policy: str, signum: signal.Signals
) -> None:
    out, _, elapsed, code = signal_once_ready(
        [WAITING_INPUT, mode, form, source, policy],
        ["finished\n"],  # and the run waits for the input's third item
        signum,
        feed="1\n2\n",
    )
    assert elapsed < 2, f"took {elapsed:.2f}s to act on the signal"
    if signum == signal.SIGINT:
        assert "interrupted" in out
    else:
        assert "terminated 143" in out
        assert code == 143
    if form == "imap":  # no result lost: both tasks' were handed out
        assert out.count("result ok") == 2, out


READ_THEN_WAIT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import whilst

    yielded = []

    def items():  # 5,000 items at once, then a long wait for the next
        for i in range(5000):
            yielded.append(i)
            yield i
        print("waiting", flush=True)
        time.sleep(60)
        yield -1

    got = set()
    try:
        for r in whilst.imap(abs, items(), mode=sys.argv[1], limit=2):
            got.add(r.index)
    except KeyboardInterrupt:
        print(f"read {len(yielded)}, results {len(got & set(yielded))}", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_signal_while_a_batch_is_read_keeps_every_item_read(mode: str) -> None:
    # Batches are cut from the input; the signal ends the input, not the batch.
    out, err, _, _ = signal_once_ready([READ_THEN_WAIT, mode], ["waiting\n"])
    assert out == "read 5000, results 5000\n", err


STAGES = textwrap.dedent(
    """
    import asyncio, sys, time
    import whilst

    def slow(x):
        time.sleep(0.3 if x < 2 else 30)
        sys.stdout.write(f"stage 1 ran {x}\\n")  # one write: threads do not interleave
        sys.stdout.flush()
        return x

    async def twice(x):
        return 2 * x

    stage1 = whilst.imap(slow, range(8), mode="threads", limit=2)
    first = next(stage1)  # (stage 1's loop runs in this thread, as stage 2 reads it)
    try:
        whilst.map(twice, (r.value for r in stage1), mode="async", limit=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


def test_a_signal_while_the_input_is_another_run_stops_both_at_once() -> None:
    # Stage 2 waits for stage 1's tasks of 30 s, inside stage 1's loop: the signal
    # stops stage 1 there (its tasks without their grace), then stage 2.
    ran = "stage 1 ran "  # tasks 0 and 1 ran; 2 and 3 run for 30 s
    out, err, elapsed, _ = signal_once_ready([STAGES], [ran, ran], timeout=25)
    assert "interrupted" in out, err
    assert elapsed < 10, f"took {elapsed:.1f} s to act on the signal"
    assert "Traceback" not in err


STUBBORN = textwrap.dedent(
    """
    import asyncio, whilst

    async def stubborn(x):
        if x == 0:
            print("started", flush=True)
            while True:  # swallows every cancellation
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass
        return x

    for r in whilst.imap(stubborn, range(4), grace=0.5):
        pass
    """
)


def test_a_second_signal_ends_a_run_whose_task_swallows_its_cancellation() -> None:
    """The caller waited for the run's end for ever, deaf to every signal (only
    SIGKILL stopped it): it now stops waiting a moment after the run's cancel."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    _, err, elapsed = stop(proc, signal.SIGINT, signal.SIGINT)
    assert proc.returncode in (-signal.SIGINT, 130), err
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert "destroyed but it is pending" not in err
    assert elapsed < 5  # (1.5 s for the run to stop, then the caller goes on)


AFTER_THE_RUN = textwrap.dedent(
    """
    import asyncio, whilst

    async def quick(x):
        return x

    async def main():
        async with whilst.aimap(quick, range(5)) as run:
            async for r in run:
                pass
            print("read", flush=True)
            await asyncio.sleep(30)  # the run is over; the block goes on

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, None), (signal.SIGTERM, -15)])
def test_a_signal_after_the_run_in_its_with_block_is_not_lost(
    signum: signal.Signals, status: int | None
) -> None:
    """whilst's handler stayed in place to the block's end and stopped a run that
    was over: Ctrl-C and SIGTERM did nothing, and the program slept on."""
    proc = subprocess.Popen(
        [sys.executable, "-c", AFTER_THE_RUN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "read\n"
    _, err, elapsed = stop(proc, signum)
    assert elapsed < 3
    if status is None:  # asyncio.run's own: the main task cancelled, KeyboardInterrupt
        assert proc.returncode != 0
        assert "KeyboardInterrupt" in err
    else:
        assert proc.returncode == status
