"""Journal reports for the command line: a summary, or records as JSON lines or CSV."""

from __future__ import annotations

import collections
import csv
import json
import sys
from collections.abc import Sequence

from ._batch import json_line, jsonable
from ._result import Result

FIELDS = ("index", "item", "status", "attempts", "start", "end", "duration", "mode", "worker")


def _row(r: Result) -> dict[str, object]:
    row: dict[str, object] = {name: getattr(r, name) for name in FIELDS}
    row["status"] = r.status.value
    row["error"] = None if r.error is None else str(r.error)
    row["value"] = r.value if r.ok else None
    return row


def print_records(results: Sequence[Result], fmt: str) -> None:
    """One record per task on stdout, as JSON lines or CSV."""
    if fmt == "jsonl":
        for r in results:
            sys.stdout.write(json_line(_row(r)) + "\n")
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=[*FIELDS, "error", "value"])
    writer.writeheader()
    for r in results:
        row = _row(r)
        row["value"] = json.dumps(jsonable(row["value"]), ensure_ascii=False)
        writer.writerow(row)


def print_summary(name: str, results: Sequence[Result], slowest: int) -> None:
    """Counts by status, the slowest tasks and the kinds of error, as tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    counts = collections.Counter(r.status.value for r in results)
    console.print(f"[bold]{escape(name)}[/]: {len(results)} tasks")
    table = Table("status", "tasks", title="by status")
    for status, n in counts.most_common():
        table.add_row(status, str(n))
    console.print(table)
    if results and slowest > 0:
        table = Table("index", "item", "status", "seconds", "attempts", title="slowest")
        for r in sorted(results, key=lambda r: r.duration, reverse=True)[:slowest]:
            table.add_row(
                str(r.index),
                escape(str(r.item)),
                r.status.value,
                f"{r.duration:.3f}",
                str(r.attempts),
            )
        console.print(table)
    errors = collections.Counter(str(r.error).split(":", 1)[0] for r in results if r.error)
    if errors:
        table = Table("error", "tasks", title="errors")
        for kind, n in errors.most_common():
            table.add_row(escape(kind), str(n))
        console.print(table)
