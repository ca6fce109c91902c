"""Invariants of the core over random inputs (hypothesis): every item ends in exactly
one result, in order when asked, and never more than ``limit`` run at once."""

from __future__ import annotations

import asyncio
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

import whilst
from whilst import Status

tasks = st.lists(
    st.tuples(st.sampled_from([0, 0, 0.001, 0.003]), st.booleans()), min_size=0, max_size=40
)


@settings(max_examples=40, deadline=None)
@given(
    tasks=tasks,
    limit=st.integers(1, 8),
    ordered=st.booleans(),
    mode=st.sampled_from(["async", "threads", "sync"]),
)
def test_every_item_ends_in_exactly_one_result(
    tasks: list[tuple[float, bool]], limit: int, ordered: bool, mode: str
) -> None:
    lock = threading.Lock()
    running = peak = 0

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def plain(task: tuple[float, bool]) -> float:
        enter()
        try:
            time.sleep(task[0])
            if task[1]:
                raise ValueError(task)
            return task[0]
        finally:
            leave()

    async def coro(task: tuple[float, bool]) -> float:
        enter()
        try:
            await asyncio.sleep(task[0])
            if task[1]:
                raise ValueError(task)
            return task[0]
        finally:
            leave()

    fn = coro if mode == "async" else plain
    limit = 1 if mode == "sync" else limit
    results = list(whilst.imap(fn, iter(tasks), mode=mode, limit=limit, ordered=ordered))

    assert sorted(r.index for r in results) == list(range(len(tasks)))
    if ordered:
        assert [r.index for r in results] == list(range(len(tasks)))
    for r in results:
        assert r.item == tasks[r.index]
        assert r.status == (Status.FAILED if r.item[1] else Status.OK)
        assert r.ok == (not r.item[1])
    assert peak <= limit
    assert running == 0
