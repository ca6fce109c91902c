"""The scheduler's events: every task is queued, started and finished, in that order,
and sinks see exactly the results the caller gets."""

from __future__ import annotations

import asyncio
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
        assert [e.kind for e in events] == [
            EventKind.QUEUED,
            EventKind.STARTED,
            EventKind.FINISHED,
        ]
        assert events[0].time <= events[1].time <= events[2].time + 1e-3
        finished = events[2].result
        assert finished is not None
        assert finished.index == index
        assert finished.status == results[index].status
        assert finished.value == results[index].value
        assert events[1].worker == finished.worker


def test_no_sinks_no_events() -> None:
    scheduler = Scheduler(abs, range(5), resolve(abs), Collect())
    assert scheduler.sinks == ()
