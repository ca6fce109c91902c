"""The exceptions whilst raises.

One shallow tree, rooted at :class:`WhilstError`::

    WhilstError
     ├── UsageError (ValueError)       bad option or argument, raised before any task starts
     │    └── UsageTypeError (TypeError)  an argument of the wrong kind (not callable, not iterable)
     ├── TasksFailed (ExceptionGroup)  raised by ``map``/``amap`` when any task did not succeed
     ├── WorkerCrashed                 the process running a task died
     ├── TaskTimeout (TimeoutError)    an attempt ran past its ``timeout``
     ├── TaskCancelled                 a task stopped or never started: deadline, halt rule, Ctrl-C
     ├── RemoteError                   a task's exception that could not leave its worker process
     │    └── EarlierFailure            a failure an earlier run journaled (resume="unfinished")
     └── Retry                         raised by a task: try me again (after ``after`` seconds)

A task's own exception is never wrapped while the task runs: it becomes that
task's :class:`~whilst.Result` ``error``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from ._result import Result


class WhilstError(Exception):
    """Root of every exception whilst raises itself."""


class UsageError(WhilstError, ValueError):
    """An option or argument is wrong; the message names the fix."""


class UsageTypeError(UsageError, TypeError):
    """An argument is of the wrong kind; the message names the fix."""


class WorkerCrashed(WhilstError):
    """The worker process running a task died.

    Attributes:
        exitcode: the process's exit code, negative for a signal (as in
            :attr:`multiprocessing.Process.exitcode`), or None when unknown.
    """

    #: True when whilst killed the worker itself (another task on it ran past its
    #: timeout) and this task was only caught with it: it runs again, free.
    caught: bool = False
    #: False when the worker died while running other tasks too: any of them
    #: may have killed it (the mode runs this one again on a worker of its own).
    alone: bool = True
    #: The worker that died, where the mode knows better than the slot's name.
    worker: str = ""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        if exitcode is None:
            how = "with an unknown exit status"
        elif exitcode < 0:
            how = f"of signal {-exitcode}"
        else:
            how = f"with exit code {exitcode}"
        super().__init__(f"the worker process running this task died {how}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exitcode,))


class TaskTimeout(WhilstError, TimeoutError):
    """An attempt ran longer than its ``timeout`` and was stopped."""


class TaskCancelled(WhilstError):
    """The error of a ``cancelled`` result: the task was stopped, or never started,
    because the run's deadline passed, a halt rule was met or the run was
    interrupted; the message says which."""


class Retry(WhilstError):
    """Raise it from a task to ask for another attempt, ``after`` seconds from now
    (None: the usual backoff). It is retried whatever ``retry_on`` says, while
    ``retries`` last; the HTTP task raises it for 429 and 503 with Retry-After.

    Example::

        if response.status == 429:
            raise whilst.Retry(after=response.headers["Retry-After"])
    """

    def __init__(self, after: float | str | None = None, message: str = "") -> None:
        seconds = after_seconds(after) if isinstance(after, str) else after
        if after is not None and (
            seconds is None
            or isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            raise UsageTypeError(
                f"Retry(after={after!r}): give seconds (a number >= 0) or the value of a "
                "Retry-After header (seconds or an HTTP date)"
            )
        self.after = seconds
        when = "" if seconds is None else f" after {seconds:g} s"
        super().__init__(message or f"the task asked to be retried{when}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.after, str(self)))


def describe(error: BaseException | None) -> str:
    """An exception as one line: ``ValueError: bad value``, or ``ValueError`` when
    it has no message ("" for None)."""
    if error is None:
        return ""
    text = message(error)
    if isinstance(error, EarlierFailure):  # it names the earlier error's type itself
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def message(error: BaseException) -> str:
    """``str(error)``, or a placeholder for an exception whose __str__ itself raises."""
    try:
        return str(error)
    except Exception:
        return "(its message could not be shown)"


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder when it raises (an int past Python's
    4300-digit limit for text, a class whose __repr__ fails): what names an item
    in a message, a journal or a report must never end the run."""
    try:
        return repr(value)
    except Exception as exc:
        if isinstance(value, int):
            size = abs(value)
            digits = int(math.log10(size)) + 1  # a float near a power of 10: one off
            digits += (size >= 10**digits) - (size < 10 ** (digits - 1))
            return f"<{type(value).__name__} of {digits} digits>"
        return f"<{type(value).__name__} object: its repr raised {type(exc).__name__}>"


def utf8_text(text: str) -> str:
    """``text`` as UTF-8 can hold it: a byte that was not UTF-8 where it was read
    (a lone surrogate, which strict JSON readers refuse) as the text ``\\xNN``, as
    in bytes decoded with backslashreplace."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # (a surrogate no byte became)
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def after_seconds(value: str) -> float | None:
    """Seconds from now given by a Retry-After header's value (seconds, or an HTTP
    date: 0 once it has passed); None when it is neither."""
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class RemoteError(WhilstError):
    """Stands in for a task's exception that could not be pickled back from its
    worker process; the message keeps the original type and text."""


#: What a task cut short by its run's stop says (the journal, the report).
INTERRUPTED = "interrupted: its run was stopped while it ran"


class EarlierFailure(RemoteError):
    """A task's failure as an earlier run recorded it in the journal, given back as
    it was by ``resume="unfinished"`` (failures stay failures): this run did not
    run the task."""


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an error raised in another process."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return self.tb


class TasksFailed(ExceptionGroup[Exception], WhilstError):
    """Some tasks of a :func:`whilst.map` call did not succeed.

    An :class:`ExceptionGroup` of the failed tasks' errors, so ``except*``
    works; :attr:`results` holds every task's :class:`~whilst.Result`,
    successes included, in input order, so no finished work is lost.
    """

    results: Sequence[Result]

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], results: Sequence[Result] = ()
    ) -> Self:
        self = super().__new__(cls, message, exceptions)
        self.results = results
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], results: Sequence[Result] = ()
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> TasksFailed:  # type: ignore[override]
        return TasksFailed(self.message, excs, self.results)

    @property
    def failed(self) -> list[Result]:
        """The results that are not ok, in input order."""
        return [r for r in self.results if not r.ok]
