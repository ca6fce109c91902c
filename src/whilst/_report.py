"""Journal reports for the command line: a summary, or records as JSON lines or CSV."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import sys
from collections.abc import Sequence

from ._result import Result

FIELDS = ("index", "item", "status", "attempts", "start", "end", "duration", "mode", "worker")


def _row(r: Result) -> dict[str, object]:
    row: dict[str, object] = {name: getattr(r, name) for name in FIELDS}
    row["status"] = r.status.value
    row["error"] = None if r.error is None else str(r.error)
    row["value"] = _plain(r.value) if r.ok else None
    return row


def _plain(value: object) -> object:
    """A value as JSON other tools read: a dataclass (``whilst run``'s jobs) as
    its fields, bytes as text, NaN and infinities as their names (JSON has none),
    anything else unknown as its repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return repr(value)


def print_records(results: Sequence[Result], fmt: str) -> None:
    """One record per task on stdout, as JSON lines or CSV."""
    if fmt == "jsonl":
        for r in results:
            sys.stdout.write(json.dumps(_row(r), allow_nan=False) + "\n")
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=[*FIELDS, "error", "value"])
    writer.writeheader()
    for r in results:
        row = _row(r)
        row["value"] = json.dumps(row["value"], allow_nan=False)
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
