"""A controllable clock for tests: an event loop whose time jumps ahead whenever
it would otherwise sleep, so backoff, rate and deadline logic run in virtual
seconds, instantly and deterministically.

Use with the async forms, which run the scheduler on the caller's loop::

    vclock.run(whilst.amap(fn, items, ...))

Only for tasks that wait on the loop (``asyncio.sleep``): a thread or a process
does not live in virtual time.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _Selector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0 or self.loop is None:
            return ready
        if timeout is None:  # nothing scheduled: wait for real (a thread, a signal)
            return super().select(None)
        self.loop.now += timeout  # nothing to do until then: jump there
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` starts at 0 and only moves when the loop would sleep."""

    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run(coro: Any) -> Any:
    """Run ``coro`` to its end on a fresh virtual-clock loop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)
