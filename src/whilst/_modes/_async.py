"""``async``: coroutines run concurrently on the scheduler's one event loop."""

from __future__ import annotations

from ._base import Call, Mode


class AsyncMode(Mode):
    """Each slot awaits the coroutine function directly: no thread, no extra task."""

    name = "async"

    def caller(self, slot: int) -> Call:
        return self.fn

    def worker(self, slot: int) -> str:
        return f"loop-{slot}"
