"""Policy: how hard to try, how long to wait, how fast to start, when to stop.

Every option is checked here, once, before any task starts; the scheduler
applies them (design.md, invariant 4). Nothing here knows about modes.
"""

from __future__ import annotations

import collections
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import Retry, UsageError, UsageTypeError

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

#: Worker deaths after which a task is ``poisoned`` and not tried again.
POISON_DEATHS = 3
#: The longest wait between attempts, unless asked (or backoff is longer).
MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class Halt:
    """A halt rule, GNU parallel's ``--halt``: when ``count`` tasks (or ``percent``
    of them) have ended as ``what``, stop ``when`` = soon (start nothing new, let
    running tasks end) or now (cancel them too)."""

    when: Literal["soon", "now"]
    what: Literal["fail", "success"]
    count: int = 0
    percent: float = 0.0

    def met(self, n: int, total: int | None, finished: int) -> bool:
        """Whether ``n`` tasks ending as ``what`` (of ``finished`` so far, of
        ``total`` when the input's length is known) meet the rule."""
        if not self.percent:
            return n >= self.count
        if total is None:  # unknown length: a share of the tasks finished so far,
            total = finished  # once there are enough for the share to mean something
            if finished * self.percent < 100:
                return False
        return n * 100 >= self.percent * total and n > 0

    def __str__(self) -> str:
        amount = f"{self.percent:g}%" if self.percent else str(self.count)
        return f"{self.when},{self.what}={amount}"


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy of one run, checked. See :func:`whilst.map` for each option."""

    retries: int = 0
    backoff: float = 0.5
    max_backoff: float = MAX_BACKOFF  # (or backoff, when that is longer)
    retry_on: RetryOn = Exception
    timeout: float | None = None
    deadline: float | None = None
    rate: float | None = None
    burst: int = 1
    key: Callable[[Any], Any] | None = None
    per_key: int | None = None
    halt: Halt | None = None
    grace: float = 5.0
    journal: str | os.PathLike[str] | None = None
    resume: str = "failed"
    task_id: Callable[[Any], Any] | None = None
    force: bool = False
    durable: bool = False

    @property
    def plain(self) -> bool:
        """True when nothing but limits shapes the run: the scheduler's fast path."""
        return (
            self.retries == 0
            and self.timeout is None
            and self.deadline is None
            and self.rate is None
            and self.key is None
            and self.halt is None
        )

    @property
    def batchable(self) -> bool:
        """True when the policy is retries alone: tiny tasks may still travel in
        batches. Anything that stops or spaces out a task's start needs each alone."""
        alone = (self.timeout, self.deadline, self.rate, self.key, self.halt)
        return alone == (None,) * 5

    @property
    def stops_attempts(self) -> bool:
        """True when something may stop a running attempt: its timeout, the
        deadline, or a halt rule that cancels running tasks."""
        halt = self.halt
        return (
            self.timeout is not None
            or self.deadline is not None
            or (halt is not None and halt.when == "now")
        )

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried (retries left aside)."""
        if isinstance(error, Retry):
            return True
        if isinstance(error, UsageError):  # whilst misused (Retry(after=-1)): no attempt mends it
            return False
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit from a task
            return False
        retry_on = self.retry_on
        if isinstance(retry_on, type | tuple):
            return isinstance(error, retry_on)
        return bool(retry_on(error))

    def delay(self, attempt: int, error: BaseException) -> float:
        """Seconds to wait before attempt ``attempt + 1``: what a :class:`Retry`
        asked for, else exponential backoff with full jitter (a uniform draw
        below ``backoff * 2**(attempt - 1)``, capped at ``max_backoff``), so
        retries of many tasks that failed together spread out."""
        if isinstance(error, Retry) and error.after is not None:
            return error.after
        import random

        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 64))
        return random.uniform(0.0, ceiling)


class RateLimit:
    """Spaces task starts: the generic cell rate algorithm. Starts come ``1/rate``
    apart on average and at most ``burst`` at once, so over any window of ``w``
    seconds at most ``rate * w + burst`` start."""

    def __init__(self, rate: float, burst: int) -> None:
        self.interval = 1.0 / rate
        self.slack = (burst - 1) * self.interval
        self.due = -math.inf  # the theoretical time of the next start

    def reserve(self, now: float) -> float:
        """When the next start may happen (reserved for the caller)."""
        at = max(now, self.due - self.slack)
        self.due = max(at, self.due) + self.interval
        return at


class KeyLimit:
    """Counts tasks in flight by key, for ``per_key``."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.running: collections.Counter[Any] = collections.Counter()

    def free(self, key: Any) -> bool:
        return self.running[key] < self.per_key

    def take(self, key: Any) -> None:
        self.running[key] += 1

    def give(self, key: Any) -> None:
        running = self.running
        running[key] -= 1
        if not running[key]:
            del running[key]


def parse_rate(rate: object) -> float | None:
    """Starts per second from a number or ``"300/min"`` (also ``/s``, ``/h``, or a
    number alone: ``"5"``)."""
    if rate is None:
        return None
    if isinstance(rate, str):
        m = re.fullmatch(  # "5" (from a command line) is 5 a second
            r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*", rate
        )
        if m is None:
            raise UsageError(
                f"rate {rate!r} is not a rate: give starts per second as a number (5) "
                "or as '300/min', '5/s' or '1000/h'"
            )
        per = {"s": 1, "m": 60, "h": 3600}[(m.group(2) or "s")[0]]
        value = float(m.group(1)) / per
    elif isinstance(rate, int | float) and not isinstance(rate, bool):
        value = float(rate)
    else:
        raise UsageTypeError(
            f"rate must be starts per second (a number) or a string such as '300/min', "
            f"got {type(rate).__name__} {rate!r}"
        )
    if not value > 0 or math.isinf(value):
        raise UsageError(
            f"rate must be more than 0 starts per second, got {rate!r}; "
            "leave rate out for no rate limit"
        )
    return value


_HALT = re.compile(r"\s*(soon|now)\s*,\s*(fail|success)\s*=\s*(\d+(?:\.\d+)?)\s*(%?)\s*")


def parse_halt(halt: object) -> Halt | None:
    """``"never"``, ``"soon,fail=3"``, ``"now,fail=10%"``, ``"now,success=1"``..."""
    if halt is None or halt == "never":
        return None
    if isinstance(halt, Halt):
        return halt
    m = _HALT.fullmatch(halt) if isinstance(halt, str) else None
    if m is None:
        raise UsageError(
            f"unknown halt rule {halt!r}: use 'never', 'soon,fail=N', 'soon,fail=P%', "
            "'soon,success=N', 'soon,success=P%', 'now,fail=N', 'now,fail=P%', "
            "'now,success=N' or 'now,success=P%' (as GNU parallel's --halt)"
        )
    when, what, amount, percent = m.groups()
    if percent:
        share = float(amount)
        if not 0 < share <= 100:
            raise UsageError(f"halt rule {halt!r}: the percentage must be above 0 and at most 100")
        return Halt(when, what, percent=share)  # type: ignore[arg-type]
    if "." in amount or int(amount) < 1:
        raise UsageError(f"halt rule {halt!r}: the count must be a whole number of at least 1")
    return Halt(when, what, count=int(amount))  # type: ignore[arg-type]


def make_policy(
    *,
    retries: int = 0,
    backoff: float = 0.5,
    max_backoff: float | None = None,
    retry_on: RetryOn = Exception,
    timeout: float | None = None,
    deadline: float | None = None,
    rate: float | str | None = None,
    burst: int = 1,
    key: Callable[[Any], Any] | None = None,
    per_key: int | None = None,
    halt: str | None = "never",
    grace: float = 5.0,
    journal: str | os.PathLike[str] | None = None,
    resume: str = "failed",
    task_id: Callable[[Any], Any] | None = None,
    force: bool = False,
    durable: bool = False,
) -> Policy:
    """Check every policy option; a UsageError naming the fix for the first bad one."""
    _whole("retries", retries, 0, "use retries=0 for a single attempt")
    for name, value in (("backoff", backoff), ("grace", grace)):
        _seconds(name, value, zero=True)
    if max_backoff is None:  # 30 s, or backoff itself when that is longer
        max_backoff = max(MAX_BACKOFF, backoff)
    _seconds("max_backoff", max_backoff, zero=True)
    if max_backoff < backoff:
        raise UsageError(
            f"max_backoff={max_backoff!r} is below backoff={backoff!r}, so every wait "
            "would be cut to max_backoff; raise max_backoff or lower backoff"
        )
    _seconds("timeout", timeout)
    _seconds("deadline", deadline)
    if not (_exception_types(retry_on) or (callable(retry_on) and not isinstance(retry_on, type))):
        raise UsageTypeError(
            f"retry_on must be an exception type, a tuple of them, or a function of the error "
            f"returning True to retry, got {retry_on!r}"
        )
    _whole("burst", burst, 1, "burst=1 starts tasks evenly spaced")
    if burst != 1 and rate is None:
        raise UsageError("burst= needs rate=, the most starts per second (for example rate=5)")
    if key is not None and not callable(key):
        raise UsageTypeError(
            f"key must be a function of the item (for example lambda url: "
            f"urlsplit(url).hostname), got {type(key).__name__} {key!r}"
        )
    if per_key is not None:
        _whole("per_key", per_key, 1, "per_key is the most tasks in flight sharing a key")
        if key is None:
            raise UsageError(
                "per_key needs key=, a function of the item giving its key "
                "(for example key=lambda url: urlsplit(url).hostname)"
            )
    elif key is not None:
        raise UsageError(
            "key= needs per_key=, the most tasks in flight sharing a key (for example per_key=4)"
        )
    _check_journal(journal, resume, task_id, force, durable)
    return Policy(
        retries=retries,
        backoff=float(backoff),
        max_backoff=float(max_backoff),
        retry_on=retry_on,
        timeout=None if timeout is None else float(timeout),
        deadline=None if deadline is None else float(deadline),
        rate=parse_rate(rate),
        burst=burst,
        key=key,
        per_key=per_key,
        halt=parse_halt(halt),
        grace=float(grace),
        journal=journal,
        resume=resume,
        task_id=task_id,
        force=force,
        durable=durable,
    )


RESUMES = ("failed", "unfinished", "none")


def _check_journal(
    journal: object, resume: object, task_id: object, force: object, durable: object
) -> None:
    if journal is not None and not isinstance(journal, str | os.PathLike):
        raise UsageTypeError(
            f"journal must be a file name such as 'run.db', got {type(journal).__name__}"
        )
    if resume not in RESUMES:
        raise UsageError(
            f"unknown resume {resume!r}: 'failed' (the default) runs everything not yet ok, "
            "'unfinished' only what has no final record, 'none' starts afresh"
        )
    if task_id is not None and not callable(task_id):
        raise UsageTypeError(
            f"task_id must be a function of the item giving its identity in the journal "
            f"(for example lambda url: url), got {type(task_id).__name__}"
        )
    for name, flag in (("force", force), ("durable", durable)):
        if not isinstance(flag, bool):
            raise UsageTypeError(f"{name} must be True or False, got {flag!r}")
    if journal is None and (resume != "failed" or task_id is not None or force or durable):
        raise UsageError(
            "resume=, task_id=, force= and durable= need journal=, the file to record the run in"
        )


def _exception_types(value: object) -> bool:
    types = value if isinstance(value, tuple) else (value,)
    return bool(types) and all(isinstance(t, type) and issubclass(t, BaseException) for t in types)


def _whole(name: str, value: object, least: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageTypeError(f"{name} must be a whole number, got {type(value).__name__} {value!r}")
    if value < least:
        raise UsageError(f"{name} must be at least {least}, got {value}; {hint}")


def _seconds(name: str, value: object, *, zero: bool = False) -> None:
    if value is None and not zero:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageTypeError(
            f"{name} must be a number of seconds, got {type(value).__name__} {value!r}"
        )
    if math.isnan(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        leave = "" if zero else f"; leave {name} out for none"
        raise UsageError(f"{name} must be {least} seconds, got {value!r}{leave}")
