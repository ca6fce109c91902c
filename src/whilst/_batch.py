"""What ``whilst run``, ``whilst http`` and ``whilst call`` share: the options that
map onto the scheduler, and the loop that prints results as they come."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import math
import shlex
import sys
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import UsageError, describe, safe_repr, utf8_text
from ._result import Result, Status
from ._scheduler import HALTED
from ._summary import Summary

if TYPE_CHECKING:
    import json


@dataclass(frozen=True)
class BatchOptions:
    """The options every batch command takes (see ``whilst run --help``)."""

    jobs: int | None = None
    timeout: float | None = None
    deadline: float | None = None
    grace: float = 5.0
    retries: int = 0
    rate: str | None = None
    halt: str | None = None
    keep_order: bool = False
    journal: Path | None = None
    resume: str = "failed"
    force: bool = False
    report: Path | None = None
    trace: Path | None = None
    results: Path | None = None
    progress: bool | None = None  # None: when stderr is a terminal
    quiet: bool = False

    def policy(self, task_id: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """The library options these stand for (``task_id``: a job's identity in
        the journal)."""
        policy: dict[str, Any] = {
            "retries": self.retries,
            "timeout": self.timeout,
            "deadline": self.deadline,
            "grace": self.grace,
            "rate": self.rate,
            "halt": self.halt,
            "report": self.report,
            "trace": self.trace,
            # By default a bar on a terminal, unless the jobs' output goes to that
            # terminal too: lines printed under a live bar would break it up.
            "progress": ("auto" if not sys.stdout.isatty() else False)
            if self.progress is None
            else self.progress,
        }
        if self.journal is not None:
            policy.update(journal=self.journal, resume=self.resume, force=self.force)
            if task_id is not None:
                policy["task_id"] = task_id
        return policy


class Tally:
    """The consumer side of a batch command: each result shown and written to
    ``--results``; at the end the summary and the exit status."""

    def __init__(
        self,
        options: BatchOptions,
        show: Callable[[Result], None],
        record: Callable[[Result], dict[str, Any]],
    ) -> None:
        self.options, self.show, self.record = options, show, record
        self.cancelled = self.total = 0
        self.failures: collections.Counter[str] = collections.Counter()  # by status word
        self.first: Result | None = None  # the first job that failed
        self._results = None
        if options.results:
            try:
                self._results = open(  # noqa: SIM115 - closed by close()
                    options.results, "w", encoding="utf-8", errors="backslashreplace"
                )
            except OSError as exc:
                raise UsageError(
                    f"--results {options.results} cannot be written ({exc.strerror}); "
                    "give another path"
                ) from None

    def add(self, r: Result) -> None:
        self.total += 1
        self.show(r)
        if self._results is not None:
            self._results.write(json_line(self.record(r)) + "\n")
            self._results.flush()
        if r.status is Status.CANCELLED:
            self.cancelled += 1
        elif not r.ok:
            self.failures[r.status.value.replace("_", " ")] += 1
            if self.first is None:
                self.first = r

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def close(self) -> None:
        if self._results is not None:
            self._results.close()

    def stopped(self) -> None:
        """A signal stopped the run: one line says what ended before it."""
        self.close()
        if not self.total:
            print("whilst: stopped, with none ended", file=sys.stderr)
            return
        ok = self.total - self.failed - self.cancelled
        ended = [f"{ok} ok", *(f"{n} {kind}" for kind, n in self.failures.items())]
        if self.cancelled:
            ended.append(f"{self.cancelled} cancelled")
        print(f"whilst: stopped, with {self.total} ended ({', '.join(ended)})", file=sys.stderr)

    def finish(self, summary: Summary | None) -> int:
        """Print the summary (unless --quiet); the exit status: 0 when every task
        succeeded, else 1."""
        if self.total == 0:
            print("whilst: no input: nothing to do", file=sys.stderr)
            return 0
        if not self.options.quiet and summary is not None:
            summary.print()
        # One last line: what failed, what was cancelled and why.
        stopped = summary.stopped if summary is not None else None
        why = f" ({stopped})" if stopped else ""
        if self.first is not None:
            also = f"; {self.cancelled} cancelled{why}" if self.cancelled else ""
            print(f"whilst: {self._failures()}{also}", file=sys.stderr)
        elif self.cancelled:
            print(f"whilst: {self.cancelled} of {self.total} cancelled{why}", file=sys.stderr)
        # Input of no length (stdin, a file) is not read past a stop: what it held
        # after that never ran, which the counts above cannot say.
        unread = summary.left_unread if summary is not None else None
        if unread:
            print(f"whilst: the rest of the input was not read ({unread})", file=sys.stderr)
        # A halt rule met at a success ends the run well, whatever failed before
        # (GNU parallel's --halt now,success=1 exits 0 too); jobs cancelled
        # otherwise are failures.
        won = stopped and stopped.startswith(HALTED) and "success" in (self.options.halt or "")
        if won:
            return 0
        return 1 if self.failed or self.cancelled or unread else 0

    def _failures(self) -> str:
        """ "2 of 5 failed (1 failed, 1 timed out; first: 'sleep 9', timed out: ...)"."""
        first, kinds = self.first, self.failures
        assert first is not None
        how = first.status.value.replace("_", " ")
        ran = getattr(first.error, "ran", None)  # a command's: its text says the most
        if ran is not None:
            what = ran.command if isinstance(ran.command, str) else shlex.join(ran.command)
            why = str(first.error)
        else:
            what = safe_repr(first.item)
            why = as_options(describe(first.error)) if first.error is not None else how
        named = f"first: {what[:80]}, {how}: {why[:300]}"
        if len(kinds) == 1:
            return f"{self.failed} of {self.total} {how} ({named})"
        counts = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        return f"{self.failed} of {self.total} failed ({counts}; {named})"


def as_options(text: str) -> str:
    """The library's words for options as the command line's: ``--mode threads``,
    not ``mode='threads'``; ``-j 4``, not ``limit=4``."""
    import re

    text = re.sub(r"\bmode='(\w+)', '(\w+)' or '(\w+)'", r"--mode \1, \2 or \3", text)
    text = re.sub(r"\bmode='(\w+)'", r"--mode \1", text)
    # (the library's own phrases only: a command in the message may say limit=)
    return re.sub(
        r"so limit=(\d+) cannot apply; drop limit\b", r"so -j \1 cannot apply; drop -j", text
    )


class OutputGone(Exception):
    """Stdout's reader went away (``| head``): the run is stopped. Not an OSError,
    which click would turn into exit status 1 on its way out."""


def run_batch(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    options: BatchOptions,
    *,
    mode: str,
    show: Callable[[Result], None],
    record: Callable[[Result], dict[str, Any]],
    task_id: Callable[[Any], Any] | None = None,
    **policy: Any,
) -> int:
    """Run ``fn`` over ``items``, hand each result to ``show`` as it ends (in input
    order with --keep-order), write ``--results`` lines, print the summary on
    stderr; the exit status."""
    import whilst

    tally = Tally(options, show, record)
    try:
        run = whilst.imap(
            fn, items, mode=mode, limit=options.jobs, ordered=options.keep_order,
            **options.policy(task_id), **policy,
        )  # fmt: skip
        with run:
            for r in run:
                tally.add(r)
    except BrokenPipeError:
        raise OutputGone from None
    except (KeyboardInterrupt, SystemExit):
        tally.stopped()
        raise
    finally:
        tally.close()
    return tally.finish(run.summary)


async def arun_batch(
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    options: BatchOptions,
    *,
    mode: str,
    show: Callable[[Result], None],
    record: Callable[[Result], dict[str, Any]],
    task_id: Callable[[Any], Any] | None = None,
    **policy: Any,
) -> int:
    """:func:`run_batch` on the caller's event loop."""
    import whilst

    tally = Tally(options, show, record)
    try:
        run = whilst.aimap(
            fn, items, mode=mode, limit=options.jobs, ordered=options.keep_order,
            **options.policy(task_id), **policy,
        )  # fmt: skip
        async with run:
            async for r in run:
                tally.add(r)
    except BrokenPipeError:
        raise OutputGone from None
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        tally.stopped()
        raise
    finally:
        tally.close()
    return tally.finish(run.summary)


def json_line(fields: dict[str, Any]) -> str:
    """A result as one line of strict JSON, whatever its values (see ``jsonable``),
    so one odd value never stops the output."""
    try:
        return _dumps({k: _plain(v) for k, v in fields.items()})
    except (TypeError, ValueError, RecursionError):
        return _dumps({k: jsonable(v) for k, v in fields.items()})


def jsonable(value: Any) -> Any:
    """``value`` as JSON other tools read: a dataclass (``whilst run``'s jobs) as
    its fields, bytes as text, NaN and infinities as their names; what JSON cannot
    hold otherwise (a set, a tuple-keyed dict, a cycle, a huge int, an object) as
    its repr, and a repr that raises as the value's type."""
    try:
        plain = _plain(value)
        _dumps(plain)
    except (TypeError, ValueError, RecursionError):
        return _repr(value)
    return plain


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is str:  # (most values: at once)
        return value if value.isascii() else utf8_text(value)
    if kind is int or kind is bool or value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict) and all(type(k) is str for k in value):
        return {utf8_text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return _repr(value)


def _dumps(value: Any) -> str:
    return _encoder().encode(value)


@functools.cache
def _encoder() -> json.JSONEncoder:
    """One encoder for every line (``json.dumps`` with options makes one a call)."""
    import json  # (only for output lines and --results: not at every start-up)

    return json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} whose repr failed>"


def common_record(r: Result) -> dict[str, Any]:
    """The fields of a result every ``--results`` line has."""
    return {
        "index": r.index,
        "status": r.status.value,
        "ok": r.ok,
        "attempts": r.attempts,
        "start": r.start,
        "duration": r.duration,
        "worker": r.worker,
        "error": None if r.error is None else describe(r.error),
    }
