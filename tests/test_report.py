"""Where the time went: the timeline page in real headless Chromium, the trace
file, the summary and progress (issue 5; reliability.md 26)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import whilst
from browser import Page
from whilst import Status
from whilst._html import write_report
from whilst._summary import Stats
from whilst._timeline import Timeline

NASTY_ITEM = "<script>window.pwned = 1</script>"
NASTY_ERROR = '</script><img src=x onerror="window.pwned = 2"><!-- \u2028 & more'


async def flaky(x: Any) -> Any:
    """Fails its first attempt when x is a multiple of 4; a nasty item always fails."""
    await asyncio.sleep(0.01 + (x if isinstance(x, int) else 0) % 3 * 0.005)
    if x == NASTY_ITEM:
        raise ValueError(NASTY_ERROR)
    if isinstance(x, int) and x % 4 == 0 and x not in flaky.seen:  # type: ignore[attr-defined]
        flaky.seen.add(x)  # type: ignore[attr-defined]
        raise ConnectionError(f"first try of {x}")
    return x


flaky.seen = set()  # type: ignore[attr-defined]


def run_with_report(tmp_path: Path, items: list[Any]) -> tuple[Path, Path, list[whilst.Result]]:
    flaky.seen.clear()  # type: ignore[attr-defined]
    page, trace = tmp_path / "run.html", tmp_path / "run.trace.json"
    run = whilst.imap(
        flaky, items, limit=4, retries=1, backoff=0, report=page, trace=trace, ordered=False
    )
    results = list(run)
    return page, trace, results


def test_the_page_draws_one_bar_per_attempt_and_runs_no_task_text(tmp_path: Path) -> None:
    items: list[Any] = [*range(12), NASTY_ITEM]
    page, _, results = run_with_report(tmp_path, items)
    attempts = sum(r.attempts for r in results)
    assert attempts == 13 + 3 + 1  # items 0, 4, 8 and the nasty one were retried
    html = page.read_text()
    assert "http://" not in html
    assert "https://" not in html
    assert "Content-Security-Policy" in html
    assert NASTY_ITEM not in html
    assert "<img" not in html
    assert "\u2028" not in html

    async def look() -> None:
        async with Page(page) as browser:
            drawn = await browser.evaluate("window.whilstReport")
            assert drawn["total"] == attempts
            assert drawn["bars"] == attempts
            assert drawn["merged"] == 0
            assert drawn["lanes"] == 4
            assert drawn["peak"] == 4
            assert await browser.evaluate("window.pwned === undefined")
            assert await browser.evaluate("document.querySelectorAll('img').length") == 0
            assert await browser.evaluate("document.scripts.length") == 2  # data, and ours
            assert browser.errors == []
            shot = Image.open(io.BytesIO(await browser.screenshot())).convert("RGB")
            colours = shot.getcolors(maxcolors=1 << 20) or []
            assert len(colours) > 10  # text, bars and curve: not a blank page
            greens = sum(n for n, (r, g, b) in colours if g > 130 and r < 90 and b < 120)
            assert greens > 1000  # the ok bars are there

    asyncio.run(look())


def test_the_page_of_100k_tasks_merges_sub_pixel_bars_and_says_so(tmp_path: Path) -> None:
    timeline = Timeline()
    t = 1_000_000.0
    for i in range(100_000):  # 8 lanes, 1 ms tasks back to back: 12.5 s of run
        lane, k = i % 8, i // 8
        timeline.add(
            f"thread-{lane}", t + k * 1e-3, t + (k + 1) * 1e-3, Status.OK, i, 1, str(i), None
        )
    summary = timeline.stats.summary(
        wall=12.5, mode="threads", mode_reason="test", limit=8, peak=8, retries=0
    )
    page = write_report(tmp_path / "big.html", timeline, summary)

    async def look() -> None:
        async with Page(page) as browser:
            drawn = await browser.evaluate("window.whilstReport")
            assert drawn["total"] == 100_000
            assert drawn["merged"] > 90_000
            assert drawn["bars"] + drawn["merged"] == 100_000
            note = await browser.evaluate("document.getElementById('drawn').textContent")
            assert "merged into pixel columns" in note
            took = await browser.evaluate(
                "(() => { const t = performance.now(); window.dispatchEvent(new Event('resize'));"
                " return performance.now() - t; })()"
            )
            assert took < 2000  # a redraw of 100,000 bars, generous for a slow machine

    asyncio.run(look())


def test_long_task_labels_keep_both_ends(tmp_path: Path) -> None:
    """URLs differ at their ends: a label cut at its end read the same for each."""
    page = tmp_path / "run.html"
    items = [f"/srv/data/archive/2026/11/27/batch/part-{k:03}.csv" for k in range(5)]
    whilst.map(len, items, mode="threads", report=page)

    async def look() -> None:
        async with Page(page) as browser:
            labels = await browser.evaluate(
                "[...document.getElementById('task-labels').children].map(d => d.textContent)"
            )
            titles = await browser.evaluate(
                "[...document.getElementById('task-labels').children].map(d => d.title)"
            )
            assert sorted(labels) == [f"'/srv/data/a…tch/part-{k:03}.csv'" for k in range(5)]
            assert sorted(titles) == sorted(repr(i) for i in items)
            assert browser.errors == []

    asyncio.run(look())


def test_the_trace_has_one_track_per_worker_in_microseconds(tmp_path: Path) -> None:
    _, trace, results = run_with_report(tmp_path, list(range(12)))
    data = json.loads(trace.read_text())
    events = data["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(names.values()) == [f"loop-{k}" for k in range(4)]
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == sum(r.attempts for r in results)
    for e in spans:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid"} <= set(e)
        assert e["tid"] in names
        assert 8_000 <= e["dur"] <= 5_000_000  # ~10 ms tasks, in microseconds
    assert {e["cat"] for e in spans} == {"ok", "failed"}
    wall = max(r.end for r in results) - min(r.start for r in results)
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(wall * 1e6, rel=0.05)


async def quick_first(x: int) -> int:
    await asyncio.sleep(0 if x == 0 else 30)
    return x


def test_attempts_a_stopped_run_cut_short_are_drawn_until_it_stopped(tmp_path: Path) -> None:
    """Leaving the loop (as Ctrl-C would) cancels the running attempts: the trace
    still shows where their time went, each a cancelled span up to the stop."""
    trace = tmp_path / "run.json"
    for _ in whilst.imap(quick_first, range(10), limit=4, trace=trace):
        time.sleep(0.2)  # the others run meanwhile (1-3, and 4 in the first's slot)
        break
    spans = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["cat"] for e in spans) == ["cancelled"] * 4 + ["ok"]
    cut = [e for e in spans if e["cat"] == "cancelled"]
    assert all(e["dur"] >= 150_000 for e in cut)  # started with the first, ran until the break
    assert {e["args"]["item"] for e in cut} == {"1", "2", "3", "4"}


@pytest.mark.parametrize("option", ["report", "trace"])
def test_an_unwritable_report_path_is_refused_before_anything_runs(
    tmp_path: Path, option: str
) -> None:
    ran: list[int] = []
    cases = [
        (tmp_path / "missing" / "run.html", "does not exist"),
        (tmp_path, "is a directory"),
        (tmp_path / ("a" * 300 + ".html"), "cannot be written \\(File name too long\\)"),
    ]
    if Path("/proc/self").is_dir():  # no file can be made there, not even by root
        cases.append((Path("/proc/run.html"), "cannot be written"))
    os.mkfifo(fifo := tmp_path / "pipe.html")  # no reader: refused, never waited on
    cases.append((fifo, "cannot be written"))
    for path, words in cases:
        with pytest.raises(whilst.UsageError, match=words):
            whilst.map(ran.append, range(3), **{option: path})  # type: ignore[arg-type]
    if os.getuid() != 0:  # root writes anywhere else
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(whilst.UsageError, match="Permission denied"):
            whilst.map(ran.append, range(3), **{option: locked / "run.html"})  # type: ignore[arg-type]
    assert ran == []
    run = whilst.imap(ran.append, range(3), **{option: tmp_path / "run.html"})  # type: ignore[arg-type]
    assert not (tmp_path / "run.html").exists()  # checked, leaving no file until the end
    assert len(list(run)) == 3
    assert (tmp_path / "run.html").stat().st_size > 0


def test_the_summary_counts_what_happened() -> None:
    flaky.seen.clear()  # type: ignore[attr-defined]
    run = whilst.imap(flaky, range(40), limit=8, retries=1, backoff=0)
    results = list(run)
    s = run.summary
    assert s is not None
    assert s.counts == {"ok": 40}
    assert s.retries == 10
    assert s.peak == 8
    assert s.limit == 8
    durations = sorted(r.duration for r in results)
    assert s.max == durations[-1]
    assert s.p50 == pytest.approx(durations[19], rel=0.05)
    # backoff=0: a retry starts at once, and the moments between attempts are left out
    assert sum(durations) - 0.05 < s.task_time <= sum(durations)
    assert s.speedup == s.mean_concurrency == pytest.approx(s.task_time / s.wall)
    assert 1 < s.speedup <= 8
    assert s.mode == "async"
    assert "coroutine" in s.mode_reason


async def nap(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


@pytest.mark.parametrize("window", [None, 3])
def test_the_summary_peak_counts_tasks_running_at_once(window: int | None) -> None:
    """The plain path counts the peak when a slot starts after waiting (its first
    task, or once the reader made room): going from one task to the next keeps it."""
    run = whilst.imap(nap, range(60), limit=6)
    if window is not None:  # the reader holds few results: slots wait for room, then resume
        run._feed.stream.window = window  # type: ignore[attr-defined]
    for r in run:
        if window is not None and r.index % 10 == 0:
            time.sleep(0.02)  # the slots stop for room and start again
    assert run.summary is not None
    assert run.summary.peak == 6


def sleepy(x: int) -> int:
    time.sleep(0.01)
    return x


@pytest.mark.parametrize("mode", ["threads", "processes"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_peak_of_a_batching_mode_is_never_more_than_the_tasks(mode: str, n: int) -> None:
    """An idle slot that takes back a batch's items leaves the slot it took them
    from waiting on an empty batch: that slot does not count as running."""
    run = whilst.imap(sleepy, range(n), mode=mode, limit=8)
    assert [r.value for r in run] == list(range(n))
    assert run.summary is not None
    assert 1 <= run.summary.peak <= n


@pytest.mark.parametrize("spread", [1e-6, 1e-3, 1.0, 300.0])
def test_percentiles_are_within_2_percent_and_skip_what_did_not_run(spread: float) -> None:
    durations = [spread * (1 + (k * 7919 % 1000) / 50) for k in range(1000)]  # 1x .. 21x
    statuses = [Status.FAILED if k % 10 == 0 else Status.OK for k in range(1000)]
    results = [
        whilst.Result(k, k, status, None, None, 1, 1e9, 1e9 + took)
        for k, (status, took) in enumerate(zip(statuses, durations, strict=True))
    ]
    results += [
        whilst.Result(1000 + k, k, Status.SKIPPED, None, None, 0, 0.0, 99.0) for k in range(5)
    ]
    results.append(whilst.Result(1005, 0, Status.OK, None, None, 1, 5.0, 5.0))  # took no time
    bulk, one_by_one = Stats(), Stats()
    bulk.add(results)
    for r in results:
        one_by_one.add_one(r)
    ran = sorted(r.end - r.start for r in results if r.status is not Status.SKIPPED)
    for stats in (bulk, one_by_one):
        assert (stats.ok, dict(stats.counts)) == (901, {Status.FAILED: 100, Status.SKIPPED: 5})
        assert stats.task_time == pytest.approx(sum(ran))
        assert stats.longest == ran[-1]
        for share in (0.5, 0.95):
            assert stats.percentile(share) == pytest.approx(ran[int(share * len(ran))], rel=0.02)
        assert stats.percentile(0.0001) == 0.0  # the task that took no time
    assert bulk.buckets == one_by_one.buckets


def test_a_duration_past_a_float32_counts_in_bulk_as_one_by_one() -> None:
    # A clock that jumped: 1e39 s does not fit a float32; a clock that went back: -0.5 s.
    results = [
        whilst.Result(0, 0, Status.OK, None, None, 1, 0.0, 1e39),
        whilst.Result(1, 1, Status.OK, None, None, 1, 1.0, 0.5),
        whilst.Result(2, 2, Status.OK, None, None, 1, 1.0, 1.25),
    ]
    bulk, one_by_one = Stats(), Stats()
    bulk.add(results)
    for r in results:
        one_by_one.add_one(r)
    assert bulk.buckets == one_by_one.buckets
    assert bulk.longest == 1e39
    assert bulk.percentile(1.0) > 1e37


def test_map_summary_true_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    whilst.map(abs, range(10), mode="sync", summary=True)
    err = capsys.readouterr().err
    assert "10 ran (10 ok)" in err
    assert "task time" in err
    assert "mode" in err


def test_progress_callback_sees_the_run_go_by() -> None:
    seen: list[whilst.Progress] = []

    def slow(x: int) -> int:
        time.sleep(0.02)
        if x == 3:
            raise ValueError(x)
        return x

    with pytest.raises(whilst.TasksFailed):
        whilst.map(slow, range(40), mode="threads", limit=4, progress=seen.append)
    assert len(seen) >= 3  # ten a second over about 0.2 s, and the last
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert all(p.total == 40 and 0 <= p.in_flight <= 40 for p in seen)
    last = seen[-1]
    assert last.finished
    assert last.done == 40
    assert last.failed == 1
    assert last.in_flight == 0
    assert not any(p.finished for p in seen[:-1])


def test_a_progress_callback_that_raises_is_switched_off_not_fatal() -> None:
    def broken(p: whilst.Progress) -> None:
        raise RuntimeError("ui bug")

    with pytest.warns(UserWarning, match="progress is off"):
        assert whilst.map(abs, range(5), mode="sync", progress=broken) == list(range(5))


PROGRESS = textwrap.dedent(
    """
    import time, whilst
    whilst.map(time.sleep, [0.05] * 20, mode="threads", limit=4, progress="auto")
    print("done", flush=True)
    """
)


def test_the_bar_counts_tasks_not_ok_as_such_not_all_as_failed() -> None:
    """A halt's cancelled tasks are not ok, but did not fail: the bar said "3 failed"
    beside a summary of 1 failed and 2 cancelled."""
    from whilst._progress import Progress, _fields

    p = Progress(done=3, total=3, failed=3, retries=0, in_flight=0, elapsed=1.0, finished=True)
    assert "3 not ok" in _fields(p)
    assert "failed" not in _fields(p)


def test_progress_auto_draws_on_a_terminal_and_nothing_without_one() -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRESS], stdin=child, stdout=child, stderr=child, close_fds=True
    )
    os.close(child)
    out = b""
    while True:
        ready, _, _ = select.select([main], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=30)
    os.close(main)
    text = out.decode(errors="replace")
    assert "20/20" in text
    assert "━" in text

    piped = subprocess.run(
        [sys.executable, "-c", PROGRESS], capture_output=True, text=True, timeout=60, check=True
    )
    assert piped.stdout == "done\n"
    assert piped.stderr == ""


def test_whilst_report_draws_a_journal_as_a_timeline(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from whilst._cli import cli

    db, page, trace = tmp_path / "run.db", tmp_path / "run.html", tmp_path / "run.json"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(_sometimes, range(30), mode="threads", limit=3, journal=db)
    out = CliRunner().invoke(cli, ["report", str(db), "-o", str(page), "--trace", str(trace)])
    assert out.exit_code == 0, out.output
    spans = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 30
    assert {e["cat"] for e in spans} == {"ok", "failed"}

    async def look() -> None:
        async with Page(page) as browser:
            drawn = await browser.evaluate("window.whilstReport")
            assert drawn["bars"] == 30
            assert drawn["lanes"] == 3
            assert browser.errors == []

    asyncio.run(look())
    missing = CliRunner().invoke(cli, ["report", str(db), "-o", str(tmp_path / "no" / "x.html")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_a_journal_of_several_runs_counts_their_time_not_the_time_between(
    tmp_path: Path,
) -> None:
    """A resume hours later must not read as hours of wall time (and a speed-up
    below one): each run counts from its start to its end."""
    from whilst._timeline import from_journal

    db = tmp_path / "run.db"
    with pytest.raises(whilst.TasksFailed):
        whilst.map(_sometimes, range(30), mode="threads", limit=3, journal=db)
    time.sleep(2)
    whilst.map(abs, range(30), mode="threads", limit=3, journal=db, force=True)
    _, summary = from_journal(db)
    assert summary.wall < 1.5
    assert summary.mode_reason.endswith("written by 2 runs")


def _sometimes(x: int) -> int:
    time.sleep(0.005)
    if x % 7 == 3:
        raise ValueError(x)
    return x


def test_task_time_leaves_out_the_waits_between_attempts() -> None:
    """Eight tasks failing three times at 0.05 s, with waits between attempts,
    two at once: the summary said task time 7.31 s and a mean concurrency of 4.6
    at limit 2 (the waits counted as work)."""
    tries: Counter[int] = Counter()

    def flaky(x: int) -> int:
        tries[x] += 1
        time.sleep(0.05)
        if tries[x] <= 3:
            raise ValueError(x)
        return x

    run = whilst.imap(flaky, range(8), mode="threads", limit=2, retries=3, backoff=0.05)
    results = list(run)
    s = run.summary
    assert s is not None
    assert all(r.ok and r.attempts == 4 for r in results)
    busy = 8 * 4 * 0.05
    assert busy <= s.task_time < busy + 0.3  # the waits (about 1.4 s in all) left out
    assert s.mean_concurrency <= s.limit
    assert sum(r.duration for r in results) > s.task_time + 0.3  # durations keep the waits
    assert s.task_time == pytest.approx(sum(r.duration - r.waited for r in results))

    # Closed after one result: the task time is that result's (the run's waits
    # were taken from the results handed out: it read 0 µs).
    tries.clear()
    with whilst.imap(flaky, range(8), mode="threads", limit=1, retries=3, backoff=0.05) as run:
        first = next(run)
    assert run.summary is not None
    assert first.waited > 0
    counted = run.summary.total  # those read, and those taken with them
    assert counted < 8  # closed early: not all of them
    assert run.summary.task_time == pytest.approx(counted * 4 * 0.05, abs=counted * 0.05)


def test_a_report_is_titled_by_the_function_whatever_its_attributes(tmp_path: Path) -> None:
    """The CLI's commands title their reports through their task's attributes: a
    function of anyone's whose ``title`` is a method (``str``) lost every result
    to an AttributeError as the report was written."""
    report = tmp_path / "r.html"
    assert whilst.map(str, range(3), mode="threads", report=report) == ["0", "1", "2"]
    assert "<title>whilst: str, threads mode</title>" in report.read_text()
