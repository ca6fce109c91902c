"""The scheduler's events: every task is queued, started and finished, in that order,
and sinks see exactly the results the caller gets."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import pytest

from whilst._events import Event, EventKind
from whilst._options import resolve
from whilst._output import Collect
from whilst._scheduler import Scheduler

from conftest import adouble, afail_on_three, fail_on_three, for_mode


@pytest.mark.parametrize("failing", [False, True])
def test_each_task_is_queued_started_and_finished(mode: str, failing: bool) -> None:
    fn = for_mode(mode, fail_on_three, afail_on_three) if failing else for_mode(mode, abs, adouble)
    seen: list[Event] = []
    collect = Collect()
    scheduler = Scheduler(fn, range(50), resolve(fn, mode=mode), collect, sinks=[seen.append])
    asyncio.run(scheduler.run())

    by_index: dict[int, list[Event]] = defaultdict(list)
    for event in seen:
        by_index[event.index].append(event)
    assert sorted(by_index) == list(range(50))
    results = collect.in_order()
    for index, events in by_index.items():
        # Started more than once only where a worker gave back a batch's items it had
        # not started, for an idle one to run: the last start names the worker.
        kinds = [e.kind for e in events]
        assert kinds[0] is EventKind.QUEUED
        assert kinds[-1] is EventKind.FINISHED
        assert set(kinds[1:-1]) == {EventKind.STARTED}
        assert len(kinds) == 3 or mode in ("threads", "auto")
        assert all(a.time <= b.time + 1e-3 for a, b in itertools.pairwise(events))
        finished = events[-1].result
        assert finished is not None
        assert finished.index == index
        assert finished.status == results[index].status
        assert finished.value == results[index].value
        assert events[-2].worker == finished.worker


def test_no_sinks_no_events() -> None:
    scheduler = Scheduler(abs, range(5), resolve(abs), Collect())
    assert scheduler.sinks == ()
