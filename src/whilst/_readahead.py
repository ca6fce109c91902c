"""An async input that batches take from without waiting for them to fill.

A batching mode (threads, processes) hands its workers batches of items. Read
with ``await anext()`` until a batch is full, an input whose items come slowly
(a socket feed, a queue filled by hand) holds the items that came until enough
more come: the results of the first ones come out seconds late, or never if
the input has no end. :class:`ReadAhead` reads the input in a task of its own,
only while a batch wants items, so a batch takes its first item and those that
came with it, and goes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any


class ReadAhead:
    """``source`` read by a task of its own while a batch wants more items than
    have come (``want``), so no more than one item past that is ever read ahead;
    ``ready(k)`` gives up to ``k`` items that came, none waited for. The input's
    end, or what it raised, is raised by ``__anext__`` once the items that came
    before it are taken."""

    def __init__(self, source: AsyncIterator[Any]) -> None:
        self._source = source
        self._items: collections.deque[Any] = collections.deque()
        self.want = 0  # items a batch wants, set by the batch being cut
        self._end: BaseException | None = None  # StopAsyncIteration, or what was raised
        self._reader: asyncio.Task[None] | None = None
        self._asked: asyncio.Future[None] | None = None  # the reader waits for a want
        self._came: asyncio.Future[None] | None = None  # a batch waits for an item
        self._stopped = False

    def __aiter__(self) -> ReadAhead:
        return self

    async def __anext__(self) -> Any:
        if not self._items and self._end is None:
            self.came(1)
            self._came = asyncio.get_running_loop().create_future()
            try:
                await self._came
            finally:
                self._came = None
        if self._items:
            return self._items.popleft()
        assert self._end is not None
        raise self._end

    def ready(self, k: int) -> list[Any]:
        """Up to ``k`` items that came already (none waited for)."""
        items = self._items
        return [items.popleft() for _ in range(min(k, len(items)))]

    def came(self, expect: int) -> int:
        """How many items came and wait to be taken (1 at the input's end: taking
        gives it at once); when none, the next ``expect`` are read meanwhile."""
        if self._items or self._end is not None:
            return len(self._items) or 1
        self.want = max(self.want, expect)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="whilst-input")
        self._wake_reader()
        return 0

    @property
    def reading(self) -> bool:
        """Whether the reader waits on the input for an item now."""
        return self._end is None and self._reader is not None and self._asked is None

    def stop_reading(self) -> None:
        """The run stops: the input ends here for whoever waits for an item, and
        the reader, if it waits on the input, is cancelled there (as the run's own
        task would have been)."""
        self._stopped = True
        if self._end is None:
            self._end = StopAsyncIteration()
        if self._came is not None and not self._came.done():
            self._came.set_result(None)
        if self._reader is not None:
            self._reader.cancel()

    async def stop(self) -> None:
        """:meth:`stop_reading`, and wait for the reader to end (the run is over)."""
        self.stop_reading()
        if self._reader is not None and not self._reader.done():
            await asyncio.wait([self._reader])

    def _wake_reader(self) -> None:
        if self._asked is not None and not self._asked.done():
            self._asked.set_result(None)

    async def _read(self) -> None:
        items, loop = self._items, asyncio.get_running_loop()
        try:
            while not self._stopped:
                if len(items) >= self.want:
                    self._asked = loop.create_future()
                    try:
                        await self._asked
                    finally:
                        self._asked = None
                    continue
                items.append(await anext(self._source))
                if self._came is not None and not self._came.done():
                    self._came.set_result(None)
        except StopAsyncIteration as end:
            self._end = end
        except Exception as exc:  # the input failed: raised once what came is taken
            self._end = exc
        finally:
            if self._end is None:
                self._end = StopAsyncIteration()
            if self._came is not None and not self._came.done():
                self._came.set_result(None)
