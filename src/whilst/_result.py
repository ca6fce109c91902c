"""How one task ended: :class:`Status` and :class:`Result`."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import TaskCancelled, TaskTimeout, WorkerCrashed

if TYPE_CHECKING:
    from ._modes import Outcomes


class Status(enum.StrEnum):
    """The final state of a task. The string values are the words used
    everywhere: in results, the journal, reports and the CLI."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    POISONED = "poisoned"
    SKIPPED = "skipped"


#: The members the hot paths compare with: ``Status.OK`` itself is a class
#: attribute of an enum, which Python 3.11 looks up slowly (about 100 ns).
_OK, _SKIPPED = Status.OK, Status.SKIPPED


@dataclass(init=False, repr=False, eq=False)
class Result:
    """How one task ended: a record, made once and read (its fields are not
    meant to be changed: :attr:`ok` is worked out from :attr:`status` as it is
    made).

    Attributes:
        index: the item's position in the input.
        item: the input element.
        status: how the task ended.
        ok: True exactly when the task has a value: status ok or skipped.
        value: what the function returned (None unless :attr:`ok`).
        error: the exception that ended the last attempt (None when ok).
        attempts: how many attempts ran (0 for a task that never started).
        start: when the first attempt started, ``time.time()`` seconds.
        end: when the last attempt ended, ``time.time()`` seconds.
        mode: where it ran: ``sync``, ``async``, ``threads``, ``processes``...
        worker: which worker slot ran it (a thread name, a process id...).
        earlier_errors: the errors of the attempts before the last, oldest
            first (see :attr:`errors`).
        waited: seconds it spent between its attempts (retry waits), within
            its duration but no part of the run's task time.
    """

    # ``ok`` is a slot set as the Result is made, not a property: every reader
    # of results asks it, and Python 3.11 calls a property's function (an
    # ``imap`` loop counting ``r.ok`` spent 870 instructions a result on it, 5%
    # of the loop's whole time; now 180). Not a field: ``fields()``,
    # ``asdict()`` and ``astuple()`` give what the constructor takes.
    __slots__ = (
        "attempts", "earlier_errors", "end", "error", "index", "item", "mode", "ok", "start",
        "status", "value", "waited", "worker",
    )  # fmt: skip

    index: int
    item: Any
    status: Status
    value: Any
    error: BaseException | None
    attempts: int
    start: float
    end: float
    mode: str
    worker: str
    earlier_errors: tuple[BaseException, ...]
    waited: float

    def __init__(
        self,
        index: int,
        item: Any,
        status: Status,
        value: Any = None,
        error: BaseException | None = None,
        attempts: int = 1,
        start: float = 0.0,
        end: float = 0.0,
        mode: str = "",
        worker: str = "",
        earlier_errors: tuple[BaseException, ...] = (),
        waited: float = 0.0,
    ) -> None:
        self.index = index
        self.item = item
        self.status = status
        self.ok: bool = status is _OK or status is _SKIPPED  # by identity: == is slow on an enum
        self.value = value
        self.error = error
        self.attempts = attempts
        self.start = start
        self.end = end
        self.mode = mode
        self.worker = worker
        self.earlier_errors = earlier_errors
        self.waited = waited

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """Every error this task met, one per failed attempt, oldest first; the
        last is :attr:`error` (a task that succeeded on a retry keeps the errors
        of the attempts before)."""
        if self.error is None:
            return self.earlier_errors
        return (*self.earlier_errors, self.error)

    @property
    def duration(self) -> float:
        """Seconds from the first attempt's start to the last one's end."""
        return self.end - self.start

    def __repr__(self) -> str:
        what = f"value={self.value!r}" if self.ok else f"error={self.error!r}"
        return (
            f"Result(index={self.index}, item={self.item!r}, status={self.status.value}, "
            f"{what}, attempts={self.attempts}, duration={self.duration:.6f}, "
            f"mode={self.mode!r}, worker={self.worker!r})"
        )


def failure_status(error: BaseException) -> Status:
    """How an attempt that raised ``error`` ended: ``crashed`` when its worker died,
    ``timed_out`` when the task itself reports a timeout (:class:`whilst.TaskTimeout`,
    as ``whilst run`` does when it kills a command), ``cancelled`` when it raised
    asyncio's CancelledError itself (in any mode, as on the loop) or was stopped
    with the run (:class:`whilst.TaskCancelled`), else ``failed``."""
    if isinstance(error, (asyncio.CancelledError, TaskCancelled)):
        return Status.CANCELLED
    if isinstance(error, WorkerCrashed):
        return Status.CRASHED
    if isinstance(error, TaskTimeout):
        return Status.TIMED_OUT
    return Status.FAILED


def batch_results(
    first: int, items: list[Any], outcomes: Outcomes, mode: str, worker: str
) -> list[Result]:
    """One Result per item of a batch a mode ran (see :class:`Outcomes`)."""
    start, errors, results, ends = outcomes.start, outcomes.errors, [], outcomes.ends
    if not outcomes.timed and ends:  # only the batch's end is known: equal shares of it
        step = (ends[-1] - start) / len(ends)
        ends = [start + step * k for k in range(1, len(ends))] + [ends[-1]]
    columns = zip(items, outcomes.values, ends, outcomes.where(worker), strict=True)
    for k, (item, value, end, worker) in enumerate(columns):
        index = first + k
        if k in errors:
            error = errors[k]
            status = failure_status(error)
            results.append(Result(index, item, status, None, error, 1, start, end, mode, worker))
        else:
            results.append(Result(index, item, _OK, value, None, 1, start, end, mode, worker))
        start = end
    return results
