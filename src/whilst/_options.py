"""Options of a run: frozen, keyword-only values, checked before any task starts."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from ._errors import UsageError, UsageTypeError
from ._policy import Policy, RetryOn, make_policy
from ._progress import Progress, ProgressCallback, progress_callback

#: Modes a user can name, in the order the docs list them.
MODES = ("auto", "sync", "async", "threads", "processes", "dask", "ray")


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_limit(mode: str, is_async: bool = False) -> int:
    """The limit a user gets without asking: what each mode is good at. A
    coroutine function in processes runs on each worker's loop (a worker per
    CPU), so as many at once as on one loop: the CPU count held it to 2."""
    if mode == "sync":
        return 1
    if mode == "async" or (mode == "processes" and is_async):
        return 100
    if mode == "threads":
        return min(32, cpu_count() + 4)  # as concurrent.futures.ThreadPoolExecutor
    return cpu_count()


def is_async_callable(fn: Callable[..., Any], test: Any = inspect.iscoroutinefunction) -> bool:
    """True when calling ``fn`` returns a coroutine (``async def``, its partials and
    objects whose ``__call__`` is ``async def``); with ``test``, another kind of
    function (an async generator's)."""
    return bool(test(fn) or test(getattr(fn, "__call__", None)))  # noqa: B004 - an object's __call__


class PolicyOptions(TypedDict, total=False):
    """The policy, journal and observability keywords every form takes (see
    :func:`whilst.map`)."""

    retries: int
    backoff: float
    max_backoff: float | None
    retry_on: RetryOn
    timeout: float | None
    deadline: float | None
    rate: float | str | None
    burst: int
    key: Callable[[Any], Any] | None
    per_key: int | None
    halt: str | None
    grace: float
    journal: str | os.PathLike[str] | None
    resume: str
    task_id: Callable[[Any], Any] | None
    force: bool
    durable: bool
    progress: bool | str | Callable[[Progress], Any]
    report: str | os.PathLike[str] | None
    trace: str | os.PathLike[str] | None
    cluster: Any
    cluster_insecure: bool


#: The keywords that only watch a run (design.md, invariant 6).
WATCHING = ("progress", "report", "trace")


@dataclass(frozen=True, slots=True)
class Options:
    """Everything that shapes a run, resolved: ``mode`` is never ``auto`` here."""

    mode: str
    mode_reason: str
    limit: int
    ordered: bool
    is_async: bool
    policy: Policy = field(default_factory=Policy)
    measure: bool = False  # auto for a plain function: threads, measured (see _modes/_auto)
    grow_limit: bool = False  # measured, no limit asked for: async's, should it go async
    cluster: Any = None  # mode="dask": a scheduler address or a distributed.Client
    cluster_insecure: bool = False  # let a plain tcp:// address off this machine be used
    progress: ProgressCallback | None = None
    report: Path | None = None  # the timeline page to write at the end
    trace: Path | None = None  # the Chrome trace to write at the end


def resolve(
    fn: object,
    *,
    mode: str = "auto",
    limit: int | None = None,
    ordered: bool = True,
    policy: PolicyOptions | None = None,
) -> Options:
    """Check the options of one call and choose the mode; raise a UsageError naming the fix."""
    for name in policy or {}:
        if name not in PolicyOptions.__annotations__:
            raise UsageTypeError(_unknown(name))
    if not callable(fn):
        raise UsageTypeError(
            f"fn must be a function to call on each item, got {type(fn).__name__} {fn!r}; "
            "pass the function first: whilst.map(fn, items)"
        )
    if not isinstance(mode, str) or mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise UsageTypeError(
            f"limit must be a whole number of tasks, got {type(limit).__name__} {limit!r}"
        )
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}; use limit=1 to run one at a time")
    if not isinstance(ordered, bool):
        raise UsageTypeError(f"ordered must be True or False, got {ordered!r}")
    if is_async_callable(fn, inspect.isasyncgenfunction):
        raise UsageTypeError(
            f"{_name(fn)} is an async generator function (async def with yield), but whilst "
            "awaits one value per item; return the value instead of yielding it"
        )
    is_async = is_async_callable(fn)
    reason, asked = f"mode={mode!r} was asked for", mode
    measure = False
    if mode == "auto":
        if is_async:
            mode, reason = "async", "auto chose async: fn is a coroutine function (async def)"
        else:  # threads while the first tasks are measured; maybe processes or async after
            mode, reason, measure = "threads", "auto measured too few tasks to choose", True
    if mode == "async" and not is_async:
        # Only a call tells what a plain function returns, and on the loop a call
        # that blocks stalls every task: auto makes its first calls in threads.
        raise UsageError(
            f"mode='async' runs coroutine functions on the event loop, but {_name(fn)} is a "
            "plain function, and only calling it there would tell whether it blocks the "
            "loop: if it returns a coroutine, pass the async def itself or "
            "functools.partial(fn, arg), or use mode='auto', which awaits them on the run's "
            "event loop; if it blocks, use mode='threads'"
        )
    if mode == "sync" and limit not in (None, 1):
        raise UsageError(
            f"mode='sync' runs one task at a time, so limit={limit} cannot apply; "
            "drop limit, or choose mode='threads', 'async' or 'processes' to overlap tasks"
        )
    rest: dict[str, Any] = dict(policy or {})
    watching = {name: rest.pop(name, None) for name in WATCHING}
    cluster, insecure = rest.pop("cluster", None), bool(rest.pop("cluster_insecure", False))
    if cluster is not None and mode not in ("dask", "ray"):
        what = "mode was left at 'auto'" if asked == "auto" else f"this run's mode is {mode!r}"
        raise UsageError(
            f"cluster= is for mode='dask' or 'ray', and {what}; add mode='dask' (or 'ray')"
        )
    if mode == "dask" and isinstance(cluster, str):
        from ._modes._dask import check_address

        check_address(cluster, insecure)
    return Options(
        mode=mode,
        mode_reason=reason,
        limit=limit if limit is not None else default_limit(mode, is_async),
        ordered=ordered,
        is_async=is_async,
        measure=measure,
        grow_limit=measure and limit is None,
        cluster=cluster,
        cluster_insecure=insecure,
        policy=make_policy(**rest),
        progress=progress_callback(watching["progress"]),
        report=writable("report", watching["report"], ".html"),
        trace=writable("trace", watching["trace"], ".json"),
    )


def writable(name: str, path: object, suffix: str) -> Path | None:
    """A file a run will write at its end, checked now: not after an hour of work."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise UsageTypeError(f"{name} must be a file name such as run{suffix}, got {path!r}")
    if os.fspath(path) == "-":  # (stdout is the tasks' output, or the results')
        raise UsageError(
            f"{name} - would be a file named '-'; give a file name such as run{suffix}"
        )
    file = Path(path)
    where = file.parent
    try:
        if file.is_dir():
            raise UsageError(f"{name} {file} is a directory; give a file name such as run{suffix}")
        if not where.is_dir():
            raise UsageError(
                f"{name} {file} cannot be written: the directory {where} does not exist; "
                "create it or give another path"
            )
        existed = file.exists()
        # Opened, not os.access (which says yes to root, even in /proc); never
        # waiting (a named pipe with no reader is refused, not waited on).
        os.close(os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666))
        if not existed:
            file.unlink()  # written at the run's end
    except OSError as exc:
        raise UsageError(
            f"{name} {file} cannot be written ({exc.strerror}); give a path this user can write"
        ) from None
    return file


def _unknown(name: str) -> str:
    if name == "ordered":  # map and amap keep input order by nature
        return "ordered= is for imap and aimap: map's values are always in input order"
    import difflib

    known = ["mode", "limit", "ordered", *PolicyOptions.__annotations__]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}=?" if close else f"the options are {', '.join(known)}"
    return f"unknown option {name}=: {hint}"


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
