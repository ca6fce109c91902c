"""A finished run in figures: ``run.summary``, ``map(..., summary=True)``, the report's header."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._result import Result, Status

#: Durations are counted in buckets this many to a doubling (about 2% wide), so
#: the percentiles of a run of any length cost a few hundred counters.
_PER_DOUBLING = 32
_ZERO = -(1 << 20)  # the bucket of tasks that took no measurable time


@dataclass(frozen=True, slots=True)
class Summary:
    """A finished run in figures.

    Attributes:
        counts: results by status word (``{"ok": 98, "failed": 2}``).
        wall: seconds from the run's start to its end.
        task_time: the durations of the tasks that ran, added up: what running
            them one after another would have cost.
        mode: where the tasks ran; ``mode_reason`` says why.
        limit: most tasks that were allowed in flight at once.
        peak: most tasks that were running at once (in a batching mode, most
            workers busy at once).
        retries: attempts that failed and were followed by another.
        p50, p95, max: task durations in seconds: the median and the 95th
            percentile (within 2%), and the longest.
        total: how many tasks ended (every item ends in exactly one result).
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
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.counts.values()))

    @property
    def speedup(self) -> float:
        """Task time over wall time: how many times faster than one after another."""
        return self.task_time / self.wall if self.wall > 0 else 0.0

    @property
    def mean_concurrency(self) -> float:
        """Tasks running at once, on average over the run: task time over wall time
        (the same figure as :attr:`speedup`, seen from the other side)."""
        return self.speedup

    @property
    def skipped(self) -> int:
        """Tasks not run: a journal had them done by an earlier run."""
        return self.counts.get("skipped", 0)

    @property
    def ran(self) -> int:
        """Tasks that ran (or were to run) in this run: all but the skipped."""
        return self.total - self.skipped

    @property
    def failed(self) -> int:
        """Tasks that ended without a value."""
        return self.total - self.counts.get("ok", 0) - self.skipped

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (label, figure) pairs, for a table or a page header."""
        by_status = ", ".join(f"{n} {s}" for s, n in self.counts.items() if s != "skipped")
        tasks = f"{self.ran} ran ({by_status or 'none'})"
        if self.skipped:
            tasks += f", {self.skipped} skipped (done in an earlier run, from the journal)"
        return [
            ("tasks", tasks),
            ("wall time", _seconds(self.wall)),
            ("task time", f"{_seconds(self.task_time)} (one after another)"),
            ("speed-up", f"{self.speedup:.1f}x over one after another"),
            (
                "concurrency",
                f"peak {self.peak}, mean {self.mean_concurrency:.1f}, limit {self.limit}",
            ),
            (
                "durations",
                f"p50 {_seconds(self.p50)}, p95 {_seconds(self.p95)}, max {_seconds(self.max)}",
            ),
            ("retries", str(self.retries)),
            ("mode", f"{self.mode}: {self.mode_reason}"),
        ]

    def __str__(self) -> str:
        (_, tasks), *rest = self.rows()
        return "; ".join([tasks, *(f"{label} {figure}" for label, figure in rest)])

    def print(self, file: object = None) -> None:
        """Print the summary as a small table (on stderr unless ``file`` is given)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title="whilst run", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, figure in self.rows():
            table.add_row(label, figure)
        Console(file=file, stderr=file is None).print(table)  # type: ignore[arg-type]


class Stats:
    """Figures of results as they pass, in bounded memory: counts by status, task
    time, and durations in log-spaced buckets (for the percentiles)."""

    __slots__ = ("buckets", "counts", "longest", "ok", "task_time")

    def __init__(self) -> None:
        self.ok = 0
        self.counts: collections.Counter[Status] = collections.Counter()  # all but ok
        self.task_time = 0.0
        self.longest = 0.0
        self.buckets: collections.Counter[int] = collections.Counter()

    def add(self, results: Iterable[Result]) -> None:
        # Count by identity: hashing an enum member runs Python code (Enum.__hash__).
        ok, skipped, counts, buckets = Status.OK, Status.SKIPPED, self.counts, self.buckets
        task_time, longest, log2, n, not_ok = self.task_time, self.longest, math.log2, 0, 0
        for r in results:
            n += 1
            if r.status is not ok:
                not_ok += 1
                counts[r.status] += 1
                if r.status is skipped:  # it ran in an earlier run
                    continue
            took = r.end - r.start
            task_time += took
            if took > longest:
                longest = took
            buckets[math.floor(log2(took) * _PER_DOUBLING) if took > 0 else _ZERO] += 1
        self.ok += n - not_ok
        self.task_time, self.longest = task_time, longest

    def add_one(self, r: Result) -> None:
        """:meth:`add` for one result, cheaper."""
        status = r.status
        if status is Status.OK:
            self.ok += 1
        else:
            self.counts[status] += 1
            if status is Status.SKIPPED:
                return
        took = r.end - r.start
        self.task_time += took
        if took > self.longest:
            self.longest = took
        self.buckets[math.floor(math.log2(took) * _PER_DOUBLING) if took > 0 else _ZERO] += 1

    def percentile(self, share: float) -> float:
        """The duration below which ``share`` of the tasks that ran ended (a bucket's
        middle, within 2%)."""
        total = sum(self.buckets.values())
        if not total:
            return 0.0
        rank, seen = share * total, 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                if bucket == _ZERO:
                    return 0.0
                return min(2 ** ((bucket + 0.5) / _PER_DOUBLING), self.longest)
        return self.longest

    def summary(
        self, *, wall: float, mode: str, mode_reason: str, limit: int, peak: int, retries: int
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
        )


def _seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"
