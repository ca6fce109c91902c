// whilst's timeline page: draws the run embedded in #data on two canvases.
// Every text from tasks reaches the page through textContent, never as HTML.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const n = data.start.length;
  const lanes = data.lanes;
  const COLORS = data.colors;
  // Worst first: a pixel column holding several bars takes the colour of the worst.
  const RANK = data.worst_first;
  const gantt = document.getElementById("gantt");
  const curve = document.getElementById("curve");
  const tip = document.getElementById("tip");
  const note = document.getElementById("drawn");
  const state = { from: data.t0, to: data.t1 };
  const report = (window.whilstReport = { total: n, bars: 0, merged: 0, lanes: lanes.length });

  // Bars of each lane, in order of start, for hit-testing.
  const byLane = lanes.map(() => []);
  for (let i = 0; i < n; i++) byLane[data.lane[i]].push(i);
  for (const list of byLane) list.sort((a, b) => data.start[a] - data.start[b]);

  function laneHeight() {
    return Math.max(3, Math.min(18, Math.floor(600 / Math.max(1, lanes.length))));
  }

  function setup(canvas, height) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.parentElement.clientWidth || 800;
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { ctx, width, height };
  }

  function drawGantt() {
    const h = laneHeight();
    const { ctx, width } = setup(gantt, Math.max(h * lanes.length, 20));
    const span = Math.max(state.to - state.from, 1e-9);
    const scale = width / span;
    let bars = 0;
    let merged = 0;
    for (let lane = 0; lane < lanes.length; lane++) {
      const y = lane * h;
      if (lane % 2) {
        ctx.fillStyle = "#f4f5f7";
        ctx.fillRect(0, y, width, h);
      }
      // Pixel columns for bars narrower than a pixel: the worst status and how
      // much of the pixel the bars cover.
      const worst = new Int8Array(width + 1).fill(-1);
      const cover = new Float32Array(width + 1);
      for (const i of byLane[lane]) {
        const s = data.start[i];
        const e = data.end[i];
        if (e < state.from || s > state.to) continue;
        const x0 = (s - state.from) * scale;
        const x1 = (e - state.from) * scale;
        const status = data.status[i];
        if (x1 - x0 >= 1) {
          ctx.fillStyle = COLORS[status];
          ctx.fillRect(x0, y + 1, Math.max(x1 - x0 - 0.5, 0.5), h - 2);
          bars++;
        } else {
          const px = Math.max(0, Math.min(width, Math.floor(x0)));
          if (worst[px] < 0 || RANK[status] < RANK[worst[px]]) worst[px] = status;
          cover[px] += x1 - x0;
          merged++;
        }
      }
      for (let px = 0; px <= width; px++) {
        if (worst[px] < 0) continue;
        ctx.globalAlpha = Math.max(0.35, Math.min(1, cover[px]));
        ctx.fillStyle = COLORS[worst[px]];
        ctx.fillRect(px, y + 1, 1, h - 2);
      }
      ctx.globalAlpha = 1;
    }
    report.bars = bars;
    report.merged = merged;
    note.textContent = merged
      ? `${bars} bars drawn one by one; ${merged} bars narrower than a pixel are merged ` +
        "into pixel columns (the worst status among them, shaded by how much of the pixel " +
        "they fill). Drag across the timeline to zoom in; double-click to zoom out."
      : `${bars} bars, each drawn on its own. Drag across the timeline to zoom in; ` +
        "double-click to zoom out.";
  }

  // A small run also gets one row per task, in input order: sync draws a
  // staircase, async bars stacked in parallel.
  const tasks = [...new Set(data.index)].sort((a, b) => a - b);
  const taskRows = document.getElementById("task-rows");
  const byTask = tasks.length <= 40 && tasks.length > 0;
  if (!byTask) taskRows.hidden = true;

  function drawTasks() {
    if (!byTask) return;
    const canvas = document.getElementById("tasks");
    const h = 14;
    const { ctx, width } = setup(canvas, h * tasks.length);
    const row = new Map(tasks.map((t, k) => [t, k]));
    const span = Math.max(state.to - state.from, 1e-9);
    const scale = width / span;
    for (let i = 0; i < n; i++) {
      const y = row.get(data.index[i]) * h;
      const x0 = (data.start[i] - state.from) * scale;
      const x1 = (data.end[i] - state.from) * scale;
      if (x1 < 0 || x0 > width) continue;
      ctx.fillStyle = COLORS[data.status[i]];
      ctx.fillRect(x0, y + 2, Math.max(x1 - x0 - 0.5, 1), h - 4);
    }
    const labels = document.getElementById("task-labels");
    labels.replaceChildren();
    for (const t of tasks) {
      const div = document.createElement("div");
      const text = data.items[t] || String(t);
      // Long labels (URLs, paths) differ at their ends: keep both, cut the middle.
      div.textContent = text.length > 30 ? text.slice(0, 12) + "…" + text.slice(-17) : text;
      div.title = text;
      div.style.height = h + "px";
      div.style.lineHeight = h + "px";
      labels.appendChild(div);
    }
  }

  function drawCurve() {
    const { ctx, width, height } = setup(curve, 90);
    const edges = [];
    for (let i = 0; i < n; i++) {
      edges.push([data.start[i], 1]);
      edges.push([data.end[i], -1]);
    }
    edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let running = 0;
    let peak = 0;
    const points = [];
    for (const [t, step] of edges) {
      running += step;
      points.push([t, running]);
      peak = Math.max(peak, running);
    }
    report.peak = peak;
    const span = Math.max(state.to - state.from, 1e-9);
    const x = (t) => ((t - state.from) / span) * width;
    const y = (c) => height - 4 - (c / Math.max(peak, 1)) * (height - 16);
    ctx.fillStyle = "#cfe3f7";
    ctx.strokeStyle = "#2f6fb3";
    ctx.beginPath();
    ctx.moveTo(0, y(0));
    let last = 0;
    for (const [t, c] of points) {
      ctx.lineTo(x(t), y(last));
      ctx.lineTo(x(t), y(c));
      last = c;
    }
    ctx.lineTo(width, y(last));
    ctx.lineTo(width, y(0));
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
    ctx.fillStyle = "#333";
    ctx.font = "12px sans-serif";
    ctx.fillText(`peak ${peak}`, 4, 12);
    // A time axis: five ticks from the run's first start (or the zoomed span).
    ctx.fillStyle = "#666";
    ctx.font = "11px sans-serif";
    for (let k = 1; k <= 4; k++) {
      const t = state.from + (span * k) / 5;
      const label = seconds(t);
      ctx.fillRect(x(t), height - 4, 1, 4);
      ctx.fillText(label, x(t) - ctx.measureText(label).width / 2, height - 6);
    }
  }

  function laneLabels() {
    const box = document.getElementById("lanes");
    box.replaceChildren();
    const h = laneHeight();
    if (h >= 10) {
      for (const name of lanes) {
        const div = document.createElement("div");
        div.textContent = name;
        div.style.height = h + "px";
        div.style.lineHeight = h + "px";
        box.appendChild(div);
      }
    }
    // The other charts start where the lanes do, so all share one time axis.
    const labels = Math.max(box.getBoundingClientRect().width, 120);
    box.style.width = labels + "px";
    document.getElementById("spacer").style.width = labels + "px";
    document.getElementById("task-labels").style.width = labels + "px";
  }

  function seconds(us) {
    if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
    if (us >= 1000) return (us / 1000).toFixed(1) + " ms";
    return us.toFixed(0) + " µs";
  }

  function barAt(event) {
    const rect = gantt.getBoundingClientRect();
    const lane = Math.floor((event.clientY - rect.top) / laneHeight());
    if (lane < 0 || lane >= lanes.length) return -1;
    const span = state.to - state.from;
    const t = state.from + ((event.clientX - rect.left) / rect.width) * span;
    const slack = (2 / rect.width) * span; // two pixels either side
    const list = byLane[lane];
    let lo = 0;
    let hi = list.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (data.start[list[mid]] <= t + slack) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    for (let k = found; k >= 0 && k > found - 8; k--) {
      const i = list[k];
      if (data.end[i] >= t - slack) return i;
    }
    return -1;
  }

  gantt.addEventListener("mousemove", (event) => {
    const i = barAt(event);
    if (i < 0) {
      tip.hidden = true;
      return;
    }
    const lines = [
      `item ${data.index[i]}: ${data.items[data.index[i]] || ""}`,
      `${data.statuses[data.status[i]]}, attempt ${data.attempt[i]}, ` +
        `${seconds(data.end[i] - data.start[i])}, on ${lanes[data.lane[i]]}`,
    ];
    const error = data.errors[i];
    if (error) lines.push(error);
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    tip.style.left = event.pageX + 12 + "px";
    tip.style.top = event.pageY + 12 + "px";
  });
  gantt.addEventListener("mouseleave", () => (tip.hidden = true));

  let dragFrom = null;
  gantt.addEventListener("mousedown", (event) => (dragFrom = event.clientX));
  gantt.addEventListener("mouseup", (event) => {
    if (dragFrom === null) return;
    const rect = gantt.getBoundingClientRect();
    const a = Math.min(dragFrom, event.clientX) - rect.left;
    const b = Math.max(dragFrom, event.clientX) - rect.left;
    dragFrom = null;
    if (b - a < 4) return;
    const span = state.to - state.from;
    [state.from, state.to] = [state.from + (a / rect.width) * span, state.from + (b / rect.width) * span];
    draw();
  });
  gantt.addEventListener("dblclick", () => {
    state.from = data.t0;
    state.to = data.t1;
    draw();
  });

  function draw() {
    drawCurve();
    drawGantt();
    drawTasks();
  }
  laneLabels();
  draw();
  window.addEventListener("resize", draw);
})();
