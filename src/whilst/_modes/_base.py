"""The one small interface every mode implements.

The scheduler owns policy and bookkeeping; a mode only runs attempts. A slot is
one of the ``limit`` places a task can run in; the scheduler never has more than
one attempt in flight per slot, so a mode never needs its own queue or limit.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, NamedTuple

Call = Callable[[Any], Awaitable[Any]]


class Outcomes(NamedTuple):
    """How one batch of attempts ended, in columns (cheap to build, send and keep).

    Item ``i`` ran from ``ends[i - 1]`` (``start`` for the first) to ``ends[i]``:
    a worker runs a batch's items one after another. Unless ``timed``: then only
    the batch's end was read (every item's is that), and each item is given an
    equal share of the batch's time (see :attr:`Mode.timed`).
    """

    start: float
    ends: Sequence[float]
    values: list[Any]  # None where the item failed
    errors: dict[int, BaseException]  # by position in the batch
    cpu: float = -1.0  # CPU seconds the worker thread spent on it (threads mode), else -1
    #: Where each item ran, when not all in the worker the batch was handed to
    #: (after a crash its items run again one at a time, maybe on new workers).
    workers: Sequence[str] = ()
    timed: bool = True
    #: Some values are coroutines the function returned, not awaited yet: a thread
    #: of auto's hands them back to the scheduler's loop (see ``AutoMode``).
    unawaited: bool = False

    def where(self, worker: str) -> Sequence[str]:
        """Where each item ran: ``workers``, or all in ``worker`` (the batch's)."""
        return self.workers or [worker] * len(self.values)


def unwire(wired: dict[int, tuple[BaseException | None, str, str]]) -> dict[int, BaseException]:
    """Errors as they came back from another process (see ``_worker._wire``): the
    exception itself, or a RemoteError with its text, its traceback as the cause."""
    from .._errors import RemoteError, RemoteTraceback

    errors: dict[int, BaseException] = {}
    for i, (error, what, tb) in wired.items():
        if error is None:
            error = RemoteError(what)
        if tb:
            error.__cause__ = RemoteTraceback(tb)
        errors[i] = error
    return errors


class Mode(abc.ABC):
    """Runs attempts for one run.

    Non-batching modes give the scheduler a :meth:`caller` per slot: an async
    function of one item that returns the value or raises the task's error.
    Batching modes (``batching = True``) implement :meth:`run_batch` instead,
    so many tiny tasks share one round trip to a worker.
    """

    name: ClassVar[str]
    batching: bool = False  # runs batches of items (run_batch) rather than one (caller)
    auto_batch: bool = False  # batches may grow past one item when tasks are quick
    stoppable: bool = True  # a running attempt can be stopped (else it is only marked)
    abandons: bool = False  # a stopped attempt runs on, abandoned, until it returns
    #: Taking items back means asking a worker (a round trip and a turn of its GIL),
    #: not just taking them (a thread's): worth it only for a batch held up.
    take_back_asks: bool = False
    #: What a timeout did to the attempt, for its TaskTimeout message.
    timeout_note: str = "it was cancelled"
    #: Whether a batch's tasks are each timed. The scheduler turns it off when no
    #: one will look at a task's own times (a ``map`` gives values), for a clock
    #: read costs as much as a tiny task; set before :meth:`open`.
    timed: bool = True
    #: The policy's timeout of an attempt, set before :meth:`open` (``auto`` keeps
    #: an attempt from waiting behind another's while its timeout runs).
    timeout: float | None = None

    def __init__(self, fn: Callable[..., Any], *, limit: int, is_async: bool) -> None:
        self.fn = fn
        self.limit = limit
        self.is_async = is_async

    async def open(self) -> None:  # noqa: B027 - most modes have nothing to start
        """Start what the mode needs (pools, workers); called on the scheduler's loop."""

    def caller(self, slot: int) -> Call:
        """An async function that runs one attempt of one item in ``slot``."""
        raise NotImplementedError(f"{self.name} mode runs batches")

    async def run_batch(self, slot: int, items: list[Any]) -> Outcomes:
        """Run one attempt of each item, in order, in ``slot``'s worker."""
        raise NotImplementedError(f"{self.name} mode runs one item at a time")

    def unstarted(self, items: list[Any]) -> int:
        """How many items of a batch in flight its worker has not started yet."""
        return 0

    async def take_back(self, items: list[Any]) -> list[Any]:
        """The items of a batch in flight that its worker has not started, which it
        now never will: they leave ``items``, which keeps those the worker runs
        (the batch's outcomes cover just those). Empty where a worker cannot give
        items back."""
        return []

    async def prepare(self, slot: int) -> None:  # noqa: B027 - most modes are always ready
        """Get ``slot``'s worker ready (started, function loaded, free), so an
        attempt's timeout counts the task and not the worker's start-up or another
        attempt's turn. The policy path calls it before each attempt, and
        :meth:`release` once the attempt is over (or did not start)."""

    def release(self, slot: int) -> None:  # noqa: B027 - most modes give every slot a worker
        """The attempt :meth:`prepare` made ready for ``slot`` is over."""

    def stop_waiting(self) -> None:  # noqa: B027 - see release()
        """The run stops: attempts waiting in :meth:`prepare` for their turn go on at
        once (to find the run stopping), and no more wait."""

    async def settle(self, slot: int) -> None:  # noqa: B027 - most modes stop what they cancel
        """Wait until ``slot`` can run again after a timed-out attempt was abandoned."""

    def ran_in(self, outcomes: Outcomes) -> str:
        """The mode a batch ran in (``auto`` may have moved since it started)."""
        return self.name

    def mode_of(self, worker: str) -> str:
        """The mode a worker belongs to (``auto`` may have moved since it ran)."""
        return self.name

    def note_for(self, worker: str) -> str:
        """What became of an attempt stopped in ``worker`` (see ``timeout_note``)."""
        return self.timeout_note

    @abc.abstractmethod
    def worker(self, slot: int) -> str:
        """Where ``slot`` runs, as results and timelines show it."""

    @property
    def busy_in_caller_thread(self) -> bool:
        """True while user code runs synchronously in the scheduler's own thread."""
        return False

    async def close(self, *, abort: bool = False) -> None:  # noqa: B027 - see open()
        """Release workers; with ``abort``, stop them at once instead of letting them idle."""


class ClusterMode(Mode):
    """A mode on a cluster (Dask, Ray): batches sent as the cluster's tasks, to a
    cluster given by address or client (``cluster``; ``insecure`` lets a plain
    address off this machine be used), each slot's worker as it last ran."""

    batching = True
    auto_batch = True

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        limit: int,
        is_async: bool,
        cluster: Any = None,
        insecure: bool = False,
    ) -> None:
        super().__init__(fn, limit=limit, is_async=is_async)
        self.cluster, self.insecure = cluster, insecure
        self._where: dict[int, str] = {}  # by slot: the worker it sends to, or ran on

    def payload(self) -> tuple[list[str], bytes]:
        """The function as processes mode sends it, with this ``sys.path`` (see
        ``_worker.load_function``, which the cluster's workers call)."""
        import sys

        from ._processes import by_value

        return list(sys.path), by_value(self.fn)
