"""Where finished results go: all kept for ``map``, or streamed for ``imap``."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from ._modes import Outcomes
from ._result import Result, batch_results


class Collect:
    """Keeps every result, for ``map``: memory grows with the input, by its nature.

    Batches stay in the columns they arrived in; a Result per task is built only
    if one is asked for (a task failed), so a ``map`` of many tiny tasks that all
    succeed pays for its values and nothing more.
    """

    full = False  # never holds the scheduler back

    def __init__(self) -> None:
        self.results: dict[int, Result] = {}
        self._batches: list[tuple[int, list[Any], Outcomes, str, str]] = []
        self._batch_failed = False

    def add(self, result: Result) -> None:
        self.results[result.index] = result

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        self._batches.append((first, items, outcomes, mode, worker))
        self._batch_failed = self._batch_failed or bool(outcomes.errors)

    @property
    def failed(self) -> bool:
        """Whether any task did not succeed."""
        return self._batch_failed or any(not r.ok for r in self.results.values())

    def values(self) -> list[Any]:
        """Every task's value, in input order."""
        out: list[Any] = [None] * (len(self.results) + sum(len(b[1]) for b in self._batches))
        for index, result in self.results.items():
            out[index] = result.value
        for first, items, outcomes, _, _ in self._batches:
            out[first : first + len(items)] = outcomes.values
        return out

    async def room(self) -> None:
        pass

    def fit_batch(self, size: int, slots: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def in_order(self) -> list[Result]:
        """Every task's Result, in input order."""
        results = dict(self.results)
        for batch in self._batches:
            results.update((r.index, r) for r in batch_results(*batch))
        return [results[i] for i in range(len(results))]


class Stream:
    """Hands results to a consumer in input order or as completed, holding at most
    ``window`` of them: when the consumer falls behind (or, in order, one slow task
    holds back the ones after it), the scheduler stops starting tasks until there is
    room again. That is what keeps ``imap`` memory bounded by ``limit``."""

    def __init__(self, *, ordered: bool, window: int) -> None:
        self.ordered = ordered
        self.window = window
        self.held = 0
        self.done = False
        self._ready: collections.deque[Result] = collections.deque()
        self._early: dict[int, Result] = {}  # ordered: finished before their turn
        self._next = 0
        self._reader: asyncio.Future[None] | None = None
        self._waiting: list[asyncio.Future[None]] = []  # slots waiting for room

    @property
    def full(self) -> bool:
        return self.held >= self.window

    def add_batch(
        self, first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
    ) -> None:
        for result in batch_results(first, items, outcomes, mode, worker):
            self.add(result)

    def add(self, result: Result) -> None:
        self.held += 1
        if not self.ordered:
            self._ready.append(result)
        elif result.index != self._next:
            self._early[result.index] = result
            return
        else:
            ready, early = self._ready, self._early
            ready.append(result)
            n = self._next + 1
            while n in early:
                ready.append(early.pop(n))
                n += 1
            self._next = n
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def fit_batch(self, size: int, slots: int) -> None:
        """Batches of ``size`` results arrive at once: make room for two per slot."""
        self.window = max(self.window, 2 * size * slots)

    def finish(self) -> None:
        """The scheduler is done: no more results will come."""
        self.done = True
        if self._early:  # cannot happen unless the scheduler broke; never drop results
            self._ready.extend(self._early[i] for i in sorted(self._early))
            self._early.clear()
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def room(self) -> None:
        """Wait until the consumer has taken results and there is room for more."""
        while self.full and not self.done:
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            await fut

    async def take(self) -> list[Result]:
        """Every result ready now (waiting for at least one); empty once all are taken."""
        while not self._ready:
            if self.done:
                return []
            self._reader = asyncio.get_running_loop().create_future()
            await self._reader
        batch = list(self._ready)
        self._ready.clear()
        self.held -= len(batch)
        if self._waiting and not self.full:
            waiting, self._waiting = self._waiting, []
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        return batch
