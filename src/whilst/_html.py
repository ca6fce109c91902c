"""The timeline page: ONE self-contained HTML file (no network, no CDN).

The run travels as JSON in a ``<script type="application/json">`` block, with
``<``, ``>``, ``&`` and the line separators escaped, and is drawn by one inline
script that only ever puts task text into the page as ``textContent``. A
Content-Security-Policy lets that one script run (by its hash) and nothing
else, so an item named ``<script>...`` stays text even if escaping failed.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ._result import Status
from ._summary import Summary
from ._timeline import STATUSES, Timeline

COLORS = {
    Status.OK: "#3a9d5d",
    Status.FAILED: "#d64545",
    Status.TIMED_OUT: "#e08a1e",
    Status.CANCELLED: "#9a9a9a",
    Status.CRASHED: "#8e44ad",
    Status.POISONED: "#4a235a",
}
WORST_FIRST = [
    Status.POISONED,
    Status.CRASHED,
    Status.FAILED,
    Status.TIMED_OUT,
    Status.CANCELLED,
    Status.OK,
]

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; }
h2 { font-size: 1em; margin: 1.2em 0 .3em; }
table.summary td { padding: 1px 12px 1px 0; vertical-align: top; }
table.summary td:first-child { font-weight: 600; white-space: nowrap; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  vertical-align: -1px; }
.chart { display: flex; }
#lanes, #task-labels { font: 11px monospace; color: #555; padding-right: 6px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
#lanes, #task-labels, #spacer { box-sizing: border-box; flex: none; max-width: 30%; }
.plot { flex: 1; min-width: 0; }
canvas { display: block; cursor: crosshair; }
#tip { position: absolute; background: #fff; border: 1px solid #888; padding: 4px 6px;
  font: 12px monospace; white-space: pre-wrap; max-width: 60em; pointer-events: none;
  box-shadow: 0 1px 4px rgba(0,0,0,.2); }
.note { color: #555; font-size: 12px; }
"""


def write_report(
    path: str | os.PathLike[str], timeline: Timeline, summary: Summary, title: str = "whilst run"
) -> Path:
    """Write the timeline page of a run to ``path``."""
    page = render(timeline, summary, title)
    target = Path(path)
    target.write_text(page, encoding="utf-8")
    return target


def render(timeline: Timeline, summary: Summary, title: str = "whilst run") -> str:
    script = resources.files("whilst").joinpath("report.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(figure)}</td></tr>"
        for label, figure in summary.rows()
    )
    legend = "".join(
        f'<span><i style="background:{COLORS[s]}"></i>{html.escape(s.value)}</span>'
        for s in STATUSES
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<table class="summary">{rows}</table>
<h2>Tasks running at once</h2>
<div class="chart">
<div id="spacer"></div><div class="plot"><canvas id="curve"></canvas></div>
</div>
<h2>Timeline: one lane per worker; each attempt is a bar (retries are bars of their own)</h2>
<div class="legend">{legend}</div>
<p class="note" id="drawn"></p>
<div class="chart"><div id="lanes"></div><div class="plot"><canvas id="gantt"></canvas></div></div>
<div id="task-rows">
<h2>One row per task, in input order</h2>
<div class="chart">
<div id="task-labels"></div><div class="plot"><canvas id="tasks"></canvas></div>
</div>
</div>
<div id="tip" role="tooltip" hidden></div>
<script type="application/json" id="data">{_json(_data(timeline, summary))}</script>
<script>{script}</script>
</body>
</html>
"""


def _data(timeline: Timeline, summary: Summary) -> dict[str, Any]:
    t0 = min(timeline.start, default=0.0)
    t1 = max(timeline.end, default=t0)

    def us(times: Any) -> list[int]:  # whole microseconds: exact enough, and compact
        return [int((t - t0) * 1e6) for t in times]

    names, place = timeline.lane_order()
    return {
        "t0": 0,
        "t1": max(int((t1 - t0) * 1e6), 1),
        "lanes": names,
        "lane": [place[lane] for lane in timeline.lane],
        "start": us(timeline.start),
        "end": us(timeline.end),
        "status": list(timeline.status),
        "index": list(timeline.index),
        "attempt": list(timeline.attempt),
        "items": {str(k): v for k, v in timeline.items.items()},
        "errors": {str(k): v for k, v in timeline.errors.items()},
        "statuses": [s.value for s in STATUSES],
        "colors": [COLORS[s] for s in STATUSES],
        "worst_first": [WORST_FIRST.index(s) for s in STATUSES],
    }


def _json(data: Any) -> str:
    """JSON that is safe inside a <script> block: no way to end it or open a comment."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
