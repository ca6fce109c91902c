"""``whilst doctor``: programs that reproduce each of the seed's pitfalls, and a
clean one (issue 7)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import whilst

SEED = textwrap.dedent(
    """\
    import asyncio, time

    async def task(n):
        print(f"Task {n} started")
        time.sleep(0.3)
        print(f"Task {n} finished")

    async def greet():
        return "hi"

    async def boom():
        raise ValueError("lost")

    async def main():
        await asyncio.gather(task(1), task(2))
        greet()
        asyncio.create_task(boom())
        await asyncio.sleep(0.05)
        total = 0
        for i in range(20_000_000):
            total += i

    asyncio.run(main())
    import gc; gc.collect()
    raise SystemExit(3)
    """
)

HTTP = textwrap.dedent(
    """\
    import asyncio, http.server, threading, time, urllib.request

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(0.3)
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    async def fetch():
        return urllib.request.urlopen(url).read()

    async def main():
        await asyncio.gather(fetch(), fetch())

    asyncio.run(main())
    server.shutdown()
    """
)

CLEAN = textwrap.dedent(
    """\
    import asyncio

    async def task(n):
        await asyncio.sleep(0.02)
        return n

    async def main():
        print(sum(await asyncio.gather(*(task(i) for i in range(200)))))

    asyncio.run(main())
    """
)


USERS_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}  # as users run


def doctor(
    tmp_path: Path, program: str, *args: str, cpus: set[int] | None = None
) -> tuple[int, dict[str, Any], str]:
    """``whilst doctor --json`` on ``program``; ``cpus``: the CPUs it may run on."""
    script = tmp_path / "program.py"
    script.write_text(program)
    run = subprocess.run(
        [sys.executable, "-m", "whilst", "doctor", "--json", *args, str(script)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=USERS_ENV,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )  # fmt: skip
    return run.returncode, json.loads(run.stdout.splitlines()[-1]), run.stdout


def test_findings_go_to_their_own_file_with_output(tmp_path: Path) -> None:
    """--json -o FILE: the file is JSON alone, the program's output stays on stdout
    (redirecting stdout would mix the two); a file that cannot be written is refused
    before the program runs."""
    script = tmp_path / "program.py"
    script.write_text(SEED)
    found = tmp_path / "findings.json"
    run = subprocess.run(
        [sys.executable, "-m", "whilst", "doctor", "--json", "-o", str(found), str(script)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    assert "Task 1 started" in run.stdout
    assert "findings" not in run.stdout
    assert {f["kind"] for f in json.loads(found.read_text())["findings"]} >= {"blocking_call"}
    refused = subprocess.run(
        [sys.executable, "-m", "whilst", "doctor", "-o", str(tmp_path / "no" / "f"), str(script)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "cannot write" in refused.stderr
    assert "Task 1 started" not in refused.stdout


def by_kind(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for f in report["findings"]:
        found.setdefault(f["kind"], []).append(f)
    return found


def test_the_seeds_pitfalls_are_each_found_at_their_line(tmp_path: Path) -> None:
    status, report, out = doctor(tmp_path, SEED)
    assert status == 3  # the program's own exit status
    assert "Task 1 started" in out
    found = by_kind(report)
    assert set(found) >= {"blocking_call", "never_awaited", "lost_exception"}
    for f in report["findings"]:
        assert {"kind", "file", "line", "function", "count", "seconds", "fix"} <= set(f)
    sleep = next(f for f in found["blocking_call"] if f["line"] == 5)
    assert sleep["function"] == "task"
    assert sleep["call"] == "time.sleep(0.3)"
    assert sleep["seconds"] >= 0.5  # two sleeps of 0.3 s, back to back on the loop
    assert "asyncio.sleep" in sleep["fix"]
    cpu = next(f for f in found["blocking_call"] if f["line"] == 21)
    assert "CPU loop" in cpu["detail"]
    assert "processes" in cpu["fix"]
    [never] = found["never_awaited"]
    assert (never["line"], never["function"], never["call"]) == (16, "main", "greet()")
    [lost] = found["lost_exception"]
    assert lost["line"] == 17
    assert "ValueError: lost" in lost["detail"]


def test_a_blocking_http_call_is_named_with_its_fix(tmp_path: Path) -> None:
    status, report, _ = doctor(tmp_path, HTTP)
    assert status == 0
    [block] = [f for f in report["findings"] if f["kind"] == "blocking_call"]
    assert block["function"] == "fetch"
    assert "urlopen" in block["call"]
    assert "async HTTP client" in block["fix"]
    assert block["seconds"] >= 0.5


def test_a_clean_program_has_no_findings(tmp_path: Path) -> None:
    status, report, out = doctor(tmp_path, CLEAN)
    assert status == 0
    assert out.startswith("19900\n")
    assert report["findings"] == []


def test_a_cpu_bound_loop_is_named_with_the_functions_that_used_it(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """\
        import asyncio

        def crunch(n):
            return sum(i * i for i in range(n))

        async def step(n):
            await asyncio.sleep(0)
            return crunch(n)

        async def main():
            for _ in range(40):
                await asyncio.gather(*(step(20_000) for _ in range(10)))

        asyncio.run(main())
        """
    )
    _, report, _ = doctor(tmp_path, program, "--threshold", "5")
    [cpu] = [f for f in report["findings"] if f["kind"] == "cpu_bound"]
    assert report["loop_cpu_share"] >= 0.5
    assert cpu["function"] in ("crunch", "<genexpr>")
    assert "processes" in cpu["fix"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_cpu_loop_is_named_as_one_on_a_cpu_shared_with_another_program(tmp_path: Path) -> None:
    """Another program busy on the same CPU gets it half the time: the loop thread's
    wait for the CPU counts as computing, not as waiting for I/O."""
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        _, report, _ = doctor(tmp_path, SEED, cpus={cpu})
    finally:
        hog.kill()
        hog.wait()
    loop = next(f for f in report["findings"] if f["kind"] == "blocking_call" and f["line"] == 21)
    assert "CPU loop" in loop["detail"]
    assert "processes" in loop["fix"]
    assert report["loop_cpu_share"] >= 0.5


def test_a_block_just_over_the_threshold_is_found(tmp_path: Path) -> None:
    """A CPU loop of 0.2 s at --threshold 0.1 is a block: counted from when the
    loop was last seen turning, not from a heartbeat posted halfway through it."""
    program = textwrap.dedent(
        """\
        import asyncio, time

        async def main():
            await asyncio.sleep(0.05)
            began = time.perf_counter()
            while time.perf_counter() - began < 0.2:
                pass
            await asyncio.sleep(0.05)

        asyncio.run(main())
        """
    )
    _, report, _ = doctor(tmp_path, program, "--threshold", "0.1")
    [block] = [f for f in report["findings"] if f["kind"] == "blocking_call"]
    assert block["line"] in (6, 7)
    assert 0.15 <= block["seconds"] <= 1.0


def doctor_failing(script: Path) -> subprocess.CompletedProcess[str]:
    """``whilst doctor`` on a program that fails: it exits as the program does (1)."""
    run = subprocess.run(
        [sys.executable, "-m", "whilst", "doctor", str(script)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    return run


def test_a_program_that_raises_shows_its_own_traceback(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text('def f():\n    raise ValueError("boom")\n\nf()\n')
    run = doctor_failing(script)
    assert run.stderr.startswith(f'Traceback (most recent call last):\n  File "{script}", line 4')
    assert "whilst" not in run.stderr.split("ValueError: boom")[0]  # none of whilst's frames
    assert "no asyncio event loop ran" in run.stderr


def test_a_program_that_does_not_compile_shows_its_syntax_error_as_python_would(
    tmp_path: Path,
) -> None:
    script = tmp_path / "bad.py"
    script.write_text("x = 1\ndef f(:\n")
    run = doctor_failing(script)
    assert run.stderr.startswith(f'  File "{script}", line 2\n')
    assert "SyntaxError" in run.stderr
    assert "Traceback" not in run.stderr  # none of whilst's frames


def test_whilst_watch_in_code() -> None:
    async def main() -> None:
        time.sleep(0.25)

    with whilst.watch() as watched:
        asyncio.run(main())
    [block] = watched.findings()
    assert block.kind == "blocking_call"
    assert block.function == "main"
    assert block.file == __file__


def test_python_m_whilst_doctor(tmp_path: Path) -> None:
    script = tmp_path / "p.py"
    script.write_text(CLEAN)
    run = subprocess.run(
        [sys.executable, "-m", "whilst.doctor", str(script)],
        capture_output=True, text=True, env=USERS_ENV,
    )  # fmt: skip
    assert run.returncode == 0
    assert "no problems found" in run.stderr


@pytest.mark.parametrize("args", [["missing.py"], ["--threshold", "0", "x.py"]])
def test_bad_input_exits_2(tmp_path: Path, args: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "whilst", "doctor", *args], capture_output=True, text=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr


FIFO_READ = textwrap.dedent(
    """\
    import asyncio, os, sys, threading, time

    fifo = sys.argv[1]

    def feed():
        time.sleep(0.3)
        with open(fifo, "w") as f:
            f.write("data")

    async def load():
        with open(fifo) as f:  # blocks until the writer comes
            return f.read()

    async def main():
        threading.Thread(target=feed).start()
        await asyncio.gather(load(), asyncio.sleep(0.01))

    asyncio.run(main())
    """
)


def test_a_blocking_file_read_is_named_and_live_tells_as_it_happens(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    script = tmp_path / "program.py"
    script.write_text(FIFO_READ)
    run = subprocess.run(
        [sys.executable, "-m", "whilst", "doctor", "--json", "--live", str(script), str(fifo)],
        capture_output=True, text=True, timeout=60, env=USERS_ENV,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    [block] = [f for f in json.loads(run.stdout)["findings"] if f["kind"] == "blocking_call"]
    assert block["function"] == "load"
    assert "open(fifo)" in block["call"]
    assert "asyncio.to_thread" in block["fix"]
    assert "whilst doctor: blocking_call" in run.stderr  # --live


UVLOOP = textwrap.dedent(
    """\
    import asyncio, time, uvloop

    async def task():
        time.sleep(0.3)

    async def boom():
        raise ValueError("lost")

    async def main():
        await asyncio.gather(task(), task())
        asyncio.create_task(boom())
        await asyncio.sleep(0.1)

    uvloop.run(main())
    import gc; gc.collect()
    """
)


def test_a_program_on_uvloop_is_watched_too(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    status, report, _ = doctor(tmp_path, UVLOOP)
    assert status == 0
    found = by_kind(report)
    [block] = found["blocking_call"]
    assert (block["line"], block["function"]) == (4, "task")
    assert block["seconds"] >= 0.5
    [lost] = found["lost_exception"]
    assert lost["line"] == 11
    assert report["notes"] == []


def test_a_coroutine_and_a_task_kept_in_the_programs_globals_are_found(tmp_path: Path) -> None:
    """Freed only with the program's globals, as it ends: still watched then."""
    program = textwrap.dedent(
        """\
        import asyncio

        async def main():
            return 1

        async def boom():
            raise ValueError("lost")

        async def start():
            tasks.append(asyncio.create_task(boom()))
            await asyncio.sleep(0.01)

        tasks = []
        asyncio.run(start())
        coro = main()  # never awaited
        """
    )
    _, report, _ = doctor(tmp_path, program)
    found = {f["kind"] for f in report["findings"]}
    assert {"never_awaited", "lost_exception"} <= found


@pytest.mark.parametrize("in_thread", [False, True])
def test_origins_name_where_a_stored_coroutine_was_made(tmp_path: Path, in_thread: bool) -> None:
    """--origins: the line that made the coroutine, not the one that dropped it; in a
    loop of another thread too (Python tracks origins thread by thread)."""
    program = textwrap.dedent(
        f"""\
        import asyncio, threading

        async def keep(kept):
            kept.append(asyncio.sleep(1))  # line 4: made, never awaited

        async def main():
            kept = []
            await keep(kept)
            kept.clear()  # line 9: dropped

        if {in_thread}:
            thread = threading.Thread(target=asyncio.run, args=(main(),))
            thread.start()
            thread.join()
        else:
            asyncio.run(main())
        """
    )
    _, report, _ = doctor(tmp_path, program, "--origins")
    [never] = [f for f in report["findings"] if f["kind"] == "never_awaited"]
    assert never["line"] == 4
    assert "--origins" not in never["detail"]
    _, report, _ = doctor(tmp_path, program)  # without: where it was dropped, and a hint
    [never] = [f for f in report["findings"] if f["kind"] == "never_awaited"]
    assert never["line"] == 9
    assert "--origins shows where it was made" in never["detail"]


@pytest.mark.parametrize("in_thread", [False, True])
def test_blocks_at_a_loops_first_steps_are_measured_as_long_as_they_were(
    tmp_path: Path, in_thread: bool
) -> None:
    """Three blocks of 0.2 s, the first at the loop's very first step (after some
    start-up work): each is reported as long as the program measured it, with
    nothing from before the loop began (the first was counted from a threshold before
    the first heartbeat: 0.06-0.1 s too much), nor from before the loop's turn that
    ran it (it was counted from the watchdog's last look: up to 0.04 s too much)."""
    program = textwrap.dedent(
        f"""\
        import asyncio, json, threading, time

        async def main(took):
            t = time.monotonic(); time.sleep(0.2); took.append(time.monotonic() - t)
            await asyncio.sleep(0)
            t = time.monotonic(); time.sleep(0.2); took.append(time.monotonic() - t)
            await asyncio.sleep(0)
            t = time.monotonic(); time.sleep(0.2); took.append(time.monotonic() - t)
            await asyncio.sleep(0)

        time.sleep(0.2)  # start-up work, before any loop
        took = []
        if {in_thread}:
            thread = threading.Thread(target=asyncio.run, args=(main(took),))
            thread.start()
            thread.join()
        else:
            asyncio.run(main(took))
        print(json.dumps(took))
        """
    )
    _, report, out = doctor(tmp_path, program)
    took = json.loads(out.splitlines()[0])
    blocks = {f["line"]: f for f in report["findings"] if f["kind"] == "blocking_call"}
    assert set(blocks) == {4, 6, 8}, report  # (a 0.2 s block is always caught)
    for line, seconds in zip((4, 6, 8), took, strict=True):  # (line 4: the loop's very first step)
        assert blocks[line]["count"] == 1
        assert seconds - 0.01 <= blocks[line]["seconds"] <= seconds + 0.04, (line, took, report)
    total = sum(f["seconds"] for f in blocks.values())
    assert 0.55 <= total <= 0.7
    assert max(f["seconds"] for f in blocks.values()) < 0.28
