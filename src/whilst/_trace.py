"""A run as Chrome Trace Event JSON: open it in Perfetto or ``chrome://tracing``.

One track (``tid``) per worker slot, named by a metadata event; each attempt is
a complete event (``"ph": "X"``) with times in microseconds from the run's
first start, its category the attempt's status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._timeline import Timeline

PID = 1


def trace_events(timeline: Timeline, title: str = "whilst run") -> dict[str, Any]:
    t0 = min(timeline.start, default=0.0)
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": title}}
    ]
    names, place = timeline.lane_order()
    for tid, name in enumerate(names, 1):
        events.append(
            {"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}}
        )
        events.append(  # Perfetto and chrome://tracing order tracks by this
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": PID,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
    for bar in timeline.bars():
        args: dict[str, Any] = {"index": bar.index, "attempt": bar.attempt, "item": bar.item}
        if bar.error is not None:
            args["error"] = bar.error
        events.append(
            {
                "name": bar.item,
                "cat": bar.status.value,
                "ph": "X",
                "ts": round((bar.start - t0) * 1e6, 3),
                "dur": round((bar.end - bar.start) * 1e6, 3),
                "pid": PID,
                "tid": place[bar.lane] + 1,
                "args": args,
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"tool": "whilst"}}


def write_trace(path: str | os.PathLike[str], timeline: Timeline) -> Path:
    """Write the trace of a run to ``path``."""
    target = Path(path)
    with open(target, "w", encoding="utf-8") as f:
        json.dump(trace_events(timeline), f, ensure_ascii=False, separators=(",", ":"))
    return target
