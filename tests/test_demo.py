"""``whilst demo``: the seed's claims, measured on this machine.

The quick demo runs once for the module; the assertions use generous bounds
because these are real timings on a small, noisy machine.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import re
import threading
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from whilst._demo import (
    QUICK,
    DemoReport,
    Row,
    _coroutine_lesson,
    _cpu_row,
    count_primes,
    run_demo,
)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pages")


@pytest.fixture(scope="module")
def quick(pages: Path) -> tuple[DemoReport, str]:
    out = io.StringIO()
    report = run_demo(quick=True, console=Console(file=out, width=100), reports=pages)
    return report, out.getvalue()


def bars(page: Path) -> list[tuple[float, float]]:
    """(start, end) of each bar the timeline page draws, in µs."""
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text())
    assert found is not None
    data = json.loads(found.group(1))
    return sorted(zip(data["start"], data["end"], strict=True))


def test_report_dir_holds_a_timeline_per_scenario(
    quick: tuple[DemoReport, str], pages: Path
) -> None:
    names = {p.stem for p in pages.glob("*.html")}
    assert {"two-tasks-sync", "two-tasks-async", "cpu-processes", "network-async"} <= names
    assert str(pages) in quick[1]
    first, second = bars(pages / "two-tasks-sync.html")
    assert second[0] >= first[1] - 1000  # a staircase: the second starts as the first ends
    first, second = bars(pages / "two-tasks-async.html")
    assert second[0] < first[1] - 100_000  # stacked: both run at once


def test_quick_demo_is_quick(quick: tuple[DemoReport, str]) -> None:
    report, _ = quick
    assert report.quick
    assert report.wall < 15


def test_two_sync_tasks_run_one_after_another(quick: tuple[DemoReport, str]) -> None:
    two = quick[0].two_tasks
    assert two.sync_wall >= 1.9 * two.sleep
    assert [(e.task, e.what) for e in two.sync_events] == [
        (1, "Task started"),
        (1, "Task finished"),
        (2, "Task started"),
        (2, "Task finished"),
    ]


def test_two_async_tasks_overlap(quick: tuple[DemoReport, str]) -> None:
    two = quick[0].two_tasks
    assert two.async_wall < 1.5 * two.sleep
    assert [e.what for e in two.async_events] == ["Task started"] * 2 + ["Task finished"] * 2
    assert two.speedup > 1.3


def test_api_calls_are_faster_with_async_and_threads(quick: tuple[DemoReport, str]) -> None:
    row = quick[0].row("network")
    assert list(row.times) == ["sync", "threads", "async"]
    assert row.times["async"] < row.times["sync"]
    assert row.times["threads"] < row.times["sync"]
    assert row.winner in ("async", "threads")
    assert row.prefer == "Asynchronous"


def test_processes_beat_sync_on_cpu_work(quick: tuple[DemoReport, str]) -> None:
    row = quick[0].row("cpu")
    assert list(row.times) == ["sync", "threads", "processes"]
    assert "GIL" in row.note
    # Two processes can only beat one when two CPUs are free: on a shared 2-CPU
    # machine another busy process takes one away for a while, so measure again
    # (at most twice) before calling it a failure.
    tries = [row.times]
    while tries[-1]["processes"] >= tries[-1]["sync"] and len(tries) < 3:
        tries.append(_cpu_row(QUICK, Console(file=io.StringIO())).times)
    assert tries[-1]["processes"] < tries[-1]["sync"], tries


def test_file_row_is_measured_and_honest(quick: tuple[DemoReport, str]) -> None:
    row = quick[0].row("files")
    assert list(row.times) == ["sync", "threads"]
    assert all(t > 0 for t in row.times.values())
    assert "aiofiles" in row.note
    assert "page cache" in row.note


def test_simple_scripts_row_is_note_only(quick: tuple[DemoReport, str]) -> None:
    row = quick[0].row("simple")
    assert row.times == {}
    assert row.winner == "sync"
    assert row.speedup() == 1.0


def test_coroutine_lesson(quick: tuple[DemoReport, str]) -> None:
    report, text = quick
    lesson = report.lesson
    assert lesson.coroutine_repr.startswith("<coroutine object greet at 0x")
    assert lesson.state_after_call == "CORO_CREATED"
    assert not lesson.ran_before_await
    assert lesson.ran_after_await
    assert lesson.value == "greeted"
    assert lesson.forgotten_state == "CORO_CLOSED"
    assert lesson.coroutine_repr in text
    assert "never awaited" in text


def test_output_reads_fine_without_a_terminal(quick: tuple[DemoReport, str]) -> None:
    _, text = quick
    assert "\x1b[" not in text
    headings = ("1. Two tasks: one after another", '2. "When to use which?"', "3. A coroutine")
    for heading in headings:
        assert heading in text
    for scenario in ("Network/API I/O", "CPU-heavy processing", "File I/O", "Simple, blocking"):
        assert scenario in text
    assert "task 1: Task started" in text


def test_local_server_is_shut_down(quick: tuple[DemoReport, str]) -> None:
    assert not any(t.name == "whilst-demo-server" for t in threading.enumerate())


def test_lesson_leaves_no_never_awaited_warning() -> None:
    scale = dataclasses.replace(QUICK, greet_delay=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _coroutine_lesson(scale, Console(file=io.StringIO()))
        gc.collect()
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_count_primes() -> None:
    assert count_primes((3, 100)) == 24  # the 25 primes below 100, without 2
    assert count_primes((1_000_000, 1_000_100)) == 6


def test_row_winner_and_speedup() -> None:
    row = Row("x", "X", "Asynchronous", {"sync": 4.0, "threads": 1.0, "async": 0.5}, "")
    assert row.winner == "async"
    assert row.speedup() == 8.0
    assert row.speedup("threads") == 4.0
