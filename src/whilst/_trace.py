"""A run as Chrome Trace Event JSON: open it in Perfetto or ``chrome://tracing``.

One track (``tid``) per worker slot, named by a metadata event; each attempt is
a complete event (``"ph": "X"``) with times in microseconds from the run's
first start, its category the attempt's status.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ._timeline import Timeline

PID = 1
#: A lone surrogate: a byte of a file name that was not UTF-8 (no UTF-8 file holds one).
_LONE = re.compile("[\ud800-\udfff]")


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
    text = json.dumps(trace_events(timeline), ensure_ascii=False, separators=(",", ":"))
    target.write_text(_LONE.sub(_escaped, text), encoding="utf-8")
    return target


def _escaped(lone: re.Match[str]) -> str:
    """A lone surrogate as the text ``\\xNN`` (the byte it stands for), in JSON, as
    ``--results`` writes such a byte; any other as ``\\uNNNN``."""
    code = ord(lone.group())
    return f"\\\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\\\u{code:04x}"
