"""Events: each change in a task's life, handed to sinks as it happens.

Progress bars, journals and timelines are sinks of these events, so they can
all be off without changing what runs (design.md, invariant 6). With no sinks
the scheduler builds no events at all.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._result import Result


class EventKind(enum.StrEnum):
    QUEUED = "queued"  # read from the input and admitted
    STARTED = "started"  # an attempt began (again, on another worker: one gave it back)
    RETRYING = "retrying"  # an attempt failed and another will follow (result: that attempt)
    FINISHED = "finished"  # the task has its result


@dataclass(frozen=True, slots=True)
class Event:
    """One change in a task's life.

    Attributes:
        kind: what happened.
        index: the item's position in the input.
        item: the input element.
        time: when, ``time.time()`` seconds.
        worker: where the attempt runs or ran ("" before it starts).
        result: the result, for ``finished``.
    """

    kind: EventKind
    index: int
    item: Any
    time: float
    worker: str = ""
    result: Result | None = None


#: Anything that consumes events. A sink that raises stops the run. A sink with
#: a ``wants`` attribute (a set of EventKind) is told only those kinds.
Sink = Callable[[Event], None]
