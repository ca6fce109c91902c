"""whilst: run a batch of tasks the right way — one after another, on an asyncio
event loop, in threads or in processes — with limits, and see where the time went.

*Whilst one task waits, another runs.*
"""

import typing as _typing

from ._api import aimap, amap, imap, map
from ._errors import (
    Retry,
    TaskCancelled,
    TasksFailed,
    TaskTimeout,
    UsageError,
    UsageTypeError,
    WhilstError,
    WorkerCrashed,
)
from ._progress import Progress
from ._result import Result, Status
from ._run import AsyncRun, Run
from ._summary import Summary

if _typing.TYPE_CHECKING:
    from ._doctor import Doctor

__version__ = "0.1.0"

__all__ = [
    "AsyncRun",
    "Journal",
    "Progress",
    "Result",
    "Retry",
    "Run",
    "Status",
    "Summary",
    "TaskCancelled",
    "TaskTimeout",
    "TasksFailed",
    "UsageError",
    "UsageTypeError",
    "WhilstError",
    "WorkerCrashed",
    "__version__",
    "aimap",
    "amap",
    "imap",
    "map",
    "watch",
]


def watch(threshold: float = 0.1) -> "Doctor":
    """Watch the asyncio loops that run inside a ``with`` block, as ``whilst doctor``
    does for a whole program: ``with whilst.watch() as doctor: asyncio.run(main())``,
    then ``doctor.findings()`` (blocking calls, never-awaited coroutines, lost task
    exceptions, a CPU-bound loop), or ``whilst.doctor.print_report``."""
    from ._doctor import Doctor

    return Doctor(threshold=threshold)


def __getattr__(name: str) -> object:
    # Journal pulls in sqlite3: only for those who use it.
    if name == "Journal":
        from ._journal import Journal

        return Journal
    raise AttributeError(f"module 'whilst' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Journal"})
