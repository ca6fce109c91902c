"""``sync``: one task after another in the caller's thread — the baseline."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ._base import Call, Mode
from ._worker import awaitable


class SyncMode(Mode):
    """Runs each task to its end before the next starts, in the scheduler's thread.

    The scheduler gives this mode a single slot, so nothing overlaps. A plain
    function runs with no event loop marked as running, so code that itself
    calls ``asyncio.run`` works as it would outside whilst.
    """

    name = "sync"
    timeout_note = (
        "sync mode cannot stop a plain function running in the caller's thread, so it ran "
        "to its end and its value was dropped (use mode='processes' for code that must be stopped)"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = False
        self.stoppable = self.is_async  # a coroutine can be cancelled; a plain call cannot
        if self.is_async:
            self.timeout_note = Mode.timeout_note

    def caller(self, slot: int) -> Call:
        fn = self.fn
        if self.is_async:
            return fn  # awaited on the loop; one slot, so one at a time

        async def call(item: Any) -> Any:
            loop = asyncio.events._get_running_loop()
            asyncio.events._set_running_loop(None)
            self._busy = True
            try:
                value = fn(item)
            finally:
                self._busy = False
                asyncio.events._set_running_loop(loop)
            if awaitable(value):  # a lambda returning a coroutine (or another awaitable)
                value = await value
            return value

        return call

    @property
    def busy_in_caller_thread(self) -> bool:
        return self._busy

    def worker(self, slot: int) -> str:
        return threading.current_thread().name
