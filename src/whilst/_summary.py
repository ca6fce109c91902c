"""A finished run in figures: ``run.summary``, ``map(..., summary=True)``, the report's header."""

from __future__ import annotations

import collections
import operator
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import EarlierFailure
from ._result import Result, Status

if TYPE_CHECKING:
    from ._output import Chunk

#: A duration's bucket is the top 16 bits of it as an IEEE 754 float32: its
#: sign, exponent and first 7 mantissa bits, so 128 buckets to a doubling and a
#: run of any length costs a few thousand counters at most.
_FLOAT, _WORD = struct.Struct("<f"), struct.Struct("<I")
_NEGATIVE = 0x8000  # buckets from here on hold durations below zero (a clock went back)
_FLOAT32_MOST = 1e38  # a longer duration (a clock jumped) counts as this: a float32 holds it
_HIGH = 1 if sys.byteorder == "little" else 0  # the top half of a float32 as 16-bit words


@dataclass(frozen=True, slots=True)
class Summary:
    """A finished run in figures.

    Attributes:
        counts: results by status word (``{"ok": 98, "failed": 2}``).
        wall: seconds from the run's start to its end.
        task_time: the time the tasks that ran took, added up, the waits
            between a task's attempts left out. (Not always what running them
            one after another would cost: CPU-bound tasks in threads share one
            core, and each takes longer beside the others.)
        mode: where the tasks ran; ``mode_reason`` says why.
        limit: most tasks that were allowed in flight at once.
        peak: most tasks that were running at once (in a batching mode, most
            workers busy at once).
        retries: attempts that failed and were followed by another.
        p50, p95, max: task durations in seconds: the median and the 95th
            percentile (within 2%), and the longest.
        total: how many tasks ended (every item ends in exactly one result).
        left_unread: why the rest of an input with no length (a generator, a
            file, an async input) was not read (a halt rule or the deadline
            stopped the run, and such an input may never end),
            or None when the input was read to its end: the results cover only
            the items read.
        stopped: why the run stopped starting tasks before its end (a halt rule
            was met, the deadline passed), or None when it ran to its end.
        earlier: results an earlier run journaled, by status, given back as they
            were (``resume="unfinished"`` keeps failures): among ``counts``, but
            not run by this run.

    Worked out from those: ``mean_concurrency`` (task time over wall time),
    ``speedup`` (the same, by another name), ``skipped``, ``ran``.
    """

    counts: dict[str, int]
    wall: float
    task_time: float
    mode: str
    mode_reason: str
    limit: int
    peak: int = 0
    retries: int = 0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0
    left_unread: str | None = None
    stopped: str | None = None
    earlier: dict[str, int] = field(default_factory=dict)
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.counts.values()))

    @property
    def mean_concurrency(self) -> float:
        """Tasks running at once, on average over the run: task time over wall time."""
        return self.task_time / self.wall if self.wall > 0 else 0.0

    @property
    def speedup(self) -> float:
        """:attr:`mean_concurrency` by another name: the speed-up over running the
        tasks one after another, when each takes as long alone as beside the
        others (tasks that wait do; CPU-bound ones in threads do not)."""
        return self.mean_concurrency

    @property
    def skipped(self) -> int:
        """Tasks not run: a journal had them done by an earlier run."""
        return self.counts.get("skipped", 0)

    @property
    def ran(self) -> int:
        """Tasks that ran (or were to run) in this run: all but the skipped and the
        earlier failures given back."""
        return self.total - self.skipped - sum(self.earlier.values())

    @property
    def failed(self) -> int:
        """Tasks that ended without a value."""
        return self.total - self.counts.get("ok", 0) - self.skipped

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (label, figure) pairs, for a table or a page header (the
        figures of tasks that ran only if some did)."""
        earlier = self.earlier
        by_status = ", ".join(
            f"{n - earlier.get(s, 0)} {s}"
            for s, n in self.counts.items()
            if s != "skipped" and n > earlier.get(s, 0)
        )
        tasks = f"{self.ran} ran ({by_status or 'none'})"
        if self.skipped:
            tasks += f", {self.skipped} skipped (done in an earlier run, from the journal)"
        if earlier:
            given = ", ".join(f"{n} {s}" for s, n in earlier.items())
            tasks += f", {given} in an earlier run (from the journal)"
        ran = [
            ("task time", f"{_seconds(self.task_time)} (attempts' time added up)"),
            (
                "concurrency",
                f"peak {self.peak}, mean {_times(self.mean_concurrency)}, limit {self.limit}",
            ),
            (
                "durations",
                f"p50 {_seconds(self.p50)}, p95 {_seconds(self.p95)}, max {_seconds(self.max)}",
            ),
            ("retries", str(self.retries)),
        ]
        return [
            ("tasks", tasks),
            ("wall time", _seconds(self.wall)),
            *(ran if self.ran else []),
            ("mode", f"{self.mode}: {self.mode_reason}"),
            *([("input", f"not read to its end ({self.left_unread})")] if self.left_unread else []),
        ]

    def __str__(self) -> str:
        (_, tasks), *rest = self.rows()
        return "; ".join([tasks, *(f"{label} {figure}" for label, figure in rest)])

    def print(self, file: object = None) -> None:
        """Print the summary as a small table (on stderr unless ``file`` is given)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title="whilst: summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, figure in self.rows():
            table.add_row(label, figure)
        Console(file=file, stderr=file is None).print(table)  # type: ignore[arg-type]


class Stats:
    """Figures of results as they pass, in bounded memory: counts by status, task
    time, and durations in log-spaced buckets (for the percentiles).

    A bucket is the top half of a duration as a float32 (sign, exponent and 7
    bits of mantissa): 128 buckets to a doubling, each under 0.8% wide, found
    for a whole batch by C code (packed float32s seen as 16-bit words), not by
    a ``log2`` per result.
    """

    __slots__ = ("buckets", "counts", "earlier", "longest", "ok", "task_time")

    def __init__(self) -> None:
        self.ok = 0
        self.counts: collections.Counter[Status] = collections.Counter()  # all but ok
        self.task_time = 0.0
        self.longest = 0.0
        self.buckets: collections.Counter[int] = collections.Counter()
        self.earlier: collections.Counter[Status] = collections.Counter()

    def add(self, results: Sequence[Result]) -> None:
        ok, skipped = Status.OK, Status.SKIPPED
        statuses = [r.status for r in results]
        n_ok = statuses.count(ok)  # by identity first: no Enum.__hash__ per result
        self.ok += n_ok
        ran = results
        if n_ok < len(statuses):
            self.counts.update(s for s in statuses if s is not ok)
            if skipped in self.counts or any(type(r.error) is EarlierFailure for r in results):
                ran = [r for r in results if self._ran_now(r)]
        self._durations([r.end - r.start for r in ran])
        self.task_time -= sum(r.waited for r in ran)  # (no part of any attempt)

    def _ran_now(self, r: Result) -> bool:
        """Whether this run ran the task (an earlier run's record does not count)."""
        if r.status is Status.SKIPPED:
            return False
        if type(r.error) is EarlierFailure:
            self.earlier[r.status] += 1
            return False
        return True

    def add_chunk(self, chunk: Chunk) -> None:
        """:meth:`add` for the results of a chunk, read from its rows."""
        if chunk.built:  # results made already (the policy path): one by one
            self.add(list(chunk.results()))
            return
        not_ok = [status for status, _ in chunk.failures.values()]
        self.ok += len(chunk) - len(not_ok)
        if not_ok:
            self.counts.update(not_ok)
        self._durations(list(map(operator.sub, chunk.ends, chunk.starts)))

    def _durations(self, took: list[float]) -> None:
        if took:
            self.task_time += sum(took)
            longest = max(took)
            self.longest = max(self.longest, longest)
            if longest > _FLOAT32_MOST:
                took = [min(t, _FLOAT32_MOST) for t in took]
            # struct, not array("f", took): array parses each float as an argument
            # (an imap of no-op coroutines: 50 ns less a task, 2%)
            floats = struct.pack(f"{len(took)}f", *took)
            self.buckets.update(array("H", floats)[_HIGH::2])

    def add_one(self, r: Result) -> None:
        """:meth:`add` for one result, cheaper."""
        status = r.status
        if status is Status.OK:
            self.ok += 1
        else:
            self.counts[status] += 1
            if not self._ran_now(r):
                return
        took = r.end - r.start
        self.task_time += took - r.waited
        if took > self.longest:
            self.longest = took
        self.buckets[_bucket(took)] += 1

    def percentile(self, share: float) -> float:
        """The duration below which ``share`` of the tasks that ran ended (the
        middle of a bucket: within 0.4%)."""
        total = sum(self.buckets.values())
        if not total:
            return 0.0
        rank, seen = share * total, 0
        for bucket in sorted(self.buckets, key=lambda b: -1 if b >= _NEGATIVE else b):
            seen += self.buckets[bucket]
            if seen >= rank:
                if bucket == 0 or bucket >= _NEGATIVE:  # no measurable time
                    return 0.0
                middle = (_lowest(bucket) + _lowest(bucket + 1)) / 2
                return min(middle, self.longest)
        return self.longest

    def summary(
        self,
        *,
        wall: float,
        mode: str,
        mode_reason: str,
        limit: int,
        peak: int,
        retries: int,
        left_unread: str | None = None,
        stopped: str | None = None,
    ) -> Summary:
        counts = {Status.OK: self.ok, **self.counts}
        return Summary(
            counts={status.value: n for status, n in counts.items() if n},
            wall=wall,
            task_time=self.task_time,
            mode=mode,
            mode_reason=mode_reason,
            limit=limit,
            peak=peak,
            retries=retries,
            p50=self.percentile(0.5),
            p95=self.percentile(0.95),
            max=self.longest,
            left_unread=left_unread,
            stopped=stopped,
            earlier={status.value: n for status, n in self.earlier.items()},
        )


def _bucket(took: float) -> int:
    """The bucket of one duration (as :meth:`Stats.add` finds them for many)."""
    word: int = _WORD.unpack(_FLOAT.pack(min(took, _FLOAT32_MOST)))[0]
    return word >> 16


def _lowest(bucket: int) -> float:
    """The shortest duration in a bucket."""
    duration: float = _FLOAT.unpack(_WORD.pack(bucket << 16))[0]
    return duration


def _times(x: float) -> str:
    """A ratio to one decimal, or two significant digits below 0.1 (tasks of
    microseconds in a run of a second: "0.0042", not a "0.0" that reads as none)."""
    if x >= 0.1 or x == 0:
        return f"{x:.1f}"
    return f"{x:.2g}" if x >= 0.001 else "<0.001"


def _seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"
