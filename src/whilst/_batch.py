"""What ``whilst run``, ``whilst http`` and ``whilst call`` share: the options that
map onto the scheduler, and the loop that prints results as they come."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._result import Result


@dataclass(frozen=True)
class BatchOptions:
    """The options every batch command takes (see ``whilst run --help``)."""

    jobs: int | None = None
    timeout: float | None = None
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
            "rate": self.rate,
            "halt": self.halt,
            "report": self.report,
            "trace": self.trace,
            "progress": "auto" if self.progress is None else self.progress,
        }
        if self.journal is not None:
            policy.update(journal=self.journal, resume=self.resume, force=self.force)
            if task_id is not None:
                policy["task_id"] = task_id
        return policy


def run_batch(
    fn: Callable[..., Any],
    items: Iterable[Any],
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
    stderr; the exit status: 0 when every task succeeded, else 1."""
    import whilst

    failed = total = 0
    results = open(options.results, "w", encoding="utf-8") if options.results else None  # noqa: SIM115
    try:
        run = whilst.imap(
            fn,
            items,
            mode=mode,
            limit=options.jobs,
            ordered=options.keep_order,
            **options.policy(task_id),
            **policy,
        )
        with run:
            for r in run:
                total += 1
                show(r)
                if results is not None:
                    results.write(json.dumps(record(r), default=repr) + "\n")
                    results.flush()
                if not r.ok:
                    failed += 1
    finally:
        if results is not None:
            results.close()
    if total == 0:
        print("whilst: no input: nothing to do", file=sys.stderr)
        return 0
    if not options.quiet and run.summary is not None:
        run.summary.print()
    if failed:
        print(f"whilst: {failed} of {total} failed", file=sys.stderr)
    return 1 if failed else 0


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
        "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}",
    }
