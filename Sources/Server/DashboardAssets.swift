/// The dashboard's files, served by the gateway itself (no external fetch: it works offline).
enum DashboardAssets {
    static let script = #"""
// Switchyard dashboard: reads /dashboard/data every few seconds and draws SVG charts. Every name shown comes from
// callers (tenants, users, features): it is only ever set as text, never as markup.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const palette = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const range = document.getElementById("range");
  const status = document.getElementById("status");

  function usd(nano) {
    const value = Number(nano) / 1e9;
    if (Math.abs(value) >= 100) return "$" + value.toFixed(2);
    if (Math.abs(value) >= 1) return "$" + value.toFixed(3);
    return "$" + value.toFixed(6);
  }
  function el(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function setText(id, text, value) {
    const node = document.getElementById(id);
    if (!node) return;
    node.textContent = text;
    if (value !== undefined) node.dataset.value = String(value);
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // A line chart of several series over the same times: {name, values, color}.
  function lines(id, times, series, format) {
    const box = document.getElementById(id);
    clear(box);
    const width = 560, height = 180, left = 64, bottom = 22;
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": box.dataset.title || id });
    let max = 0;
    for (const s of series) for (const v of s.values) max = Math.max(max, v);
    if (max <= 0) max = 1;
    const x = (i) => left + (times.length <= 1 ? 0 : (i * (width - left - 8)) / (times.length - 1));
    const y = (v) => height - bottom - (v / max) * (height - bottom - 10);
    svg.appendChild(el("line", { x1: left, y1: height - bottom, x2: width - 4, y2: height - bottom, class: "axis" }));
    svg.appendChild(el("text", { x: left - 6, y: 14, class: "tick", "text-anchor": "end" }, format(max)));
    svg.appendChild(el("text", { x: left - 6, y: height - bottom, class: "tick", "text-anchor": "end" }, format(0)));
    if (times.length > 0) {
      const label = (t) => new Date(t * 1000).toISOString().slice(11, 16);
      svg.appendChild(el("text", { x: left, y: height - 6, class: "tick" }, label(times[0])));
      svg.appendChild(el("text", { x: width - 8, y: height - 6, class: "tick", "text-anchor": "end" }, label(times[times.length - 1])));
    }
    series.forEach((s, index) => {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(Math.max(v, 0)).toFixed(1)}`).join(" ");
      svg.appendChild(el("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 2, class: "series", "data-series": s.name }));
      svg.appendChild(el("text", { x: left + 8 + index * 98, y: 12, fill: s.color, class: "legend" }, s.label || s.name));
    });
    box.appendChild(svg);
  }

  // Horizontal bars: [{label, value}], highest first.
  function bars(id, items, format) {
    const box = document.getElementById(id);
    clear(box);
    const rows = items.slice(0, 8);
    const width = 560, row = 24, height = Math.max(rows.length, 1) * row + 6, left = 170;
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": box.dataset.title || id });
    const max = Math.max(1, ...rows.map((r) => Math.abs(r.value)));
    if (rows.length === 0) svg.appendChild(el("text", { x: 8, y: 18, class: "empty" }, "no data yet"));
    rows.forEach((r, i) => {
      const w = Math.max(1, (Math.abs(r.value) / max) * (width - left - 110));
      const label = r.label.length > 24 ? r.label.slice(0, 23) + "…" : r.label;
      svg.appendChild(el("text", { x: left - 8, y: i * row + 17, class: "label", "text-anchor": "end" }, label));
      svg.appendChild(el("rect", { x: left, y: i * row + 5, width: w.toFixed(1), height: row - 8, rx: 3, fill: palette[i % palette.length],
                                   class: "bar", "data-label": r.label, "data-value": String(r.value) }));
      svg.appendChild(el("text", { x: left + w + 6, y: i * row + 17, class: "value" }, format(r.value)));
    });
    box.appendChild(svg);
  }

  function table(id, head, rows) {
    const box = document.getElementById(id);
    clear(box);
    const t = document.createElement("table");
    const tr = document.createElement("tr");
    for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
    t.appendChild(tr);
    for (const r of rows) {
      const row = document.createElement("tr");
      for (const c of r) { const td = document.createElement("td"); td.textContent = String(c); row.appendChild(td); }
      t.appendChild(row);
    }
    if (rows.length === 0) { const row = document.createElement("tr"); const td = document.createElement("td"); td.colSpan = head.length; td.textContent = "none"; row.appendChild(td); t.appendChild(row); }
    box.appendChild(t);
  }

  const count = (n) => String(Math.round(n));
  const ms = (n) => (n === null || n === undefined ? "–" : Number(n).toFixed(1) + " ms");
  const pct = (n) => (Number(n) * 100).toFixed(1) + "%";
  const entries = (object) => Object.keys(object || {}).map((k) => ({ label: k, value: object[k] })).sort((a, b) => b.value - a.value);

  function render(data) {
    const t = data.totals;
    const requests = t.requests;
    setText("spend", usd(t.cost_nano_usd), t.cost_nano_usd);
    setText("saved", usd(data.saved_nano_usd), data.saved_nano_usd);
    setText("requests", count(requests), requests);
    const hits = t.exact_hits + t.semantic_hits;
    setText("hit-rate", requests ? pct(hits / requests) : "–", hits);
    setText("error-rate", requests ? pct(t.errors / requests) : "–", t.errors);
    setText("latency-p50", ms(data.live.latency.p50), data.live.latency.p50);
    setText("latency-p99", ms(data.live.latency.p99), data.live.latency.p99);
    setText("ttft-p50", ms(data.live.ttft.p50), data.live.ttft.p50);
    setText("ttft-p99", ms(data.live.ttft.p99), data.live.ttft.p99);
    setText("degraded", count(t.degraded), t.degraded);
    setText("escalations", count(data.escalations), data.escalations);

    const times = data.series.map((p) => p.t);
    lines("chart-spend", times, [
      { name: "spend", values: data.series.map((p) => p.cost), color: palette[0] },
      { name: "saved", values: data.series.map((p) => p.saved), color: palette[1] },
    ], usd);
    lines("chart-cache", times, [
      { name: "hit rate", values: data.series.map((p) => (p.requests ? p.hits / p.requests : 0)), color: palette[5] },
      { name: "error rate", values: data.series.map((p) => (p.requests ? p.errors / p.requests : 0)), color: palette[3] },
    ], pct);
    const split = document.getElementById("split").value;
    lines("chart-split", times, data.series_by[split].map((line, index) => ({
      name: line.name, label: line.name.length > 14 ? line.name.slice(0, 13) + "…" : line.name, values: line.cost, color: palette[index % palette.length],
    })), usd);
    for (const dimension of ["tenant", "user", "feature", "model"]) {
      bars("by-" + dimension, data.by[dimension].map((r) => ({ label: r.name, value: r.cost })), usd);
    }
    bars("savings-levers", entries(data.savings), usd);
    bars("route-mix", entries(data.live.routes), count);
    bars("errors", entries(data.live.errors), count);
    bars("refusals", entries(Object.assign({}, data.live.refusals, data.live.degraded)), count);
    table("queues", ["deployment", "P0", "P1", "P2"], Object.keys(data.queues).sort().map((k) => [k].concat(data.queues[k])));
    table("deployments", ["deployment", "breaker"], data.deployments.map((d) => [d.id, d.state]));
    status.textContent = "updated " + new Date(data.now * 1000).toISOString().slice(11, 19) + " UTC";
    document.body.dataset.loaded = "true";
  }

  async function refresh() {
    try {
      const response = await fetch("/dashboard/data?minutes=" + encodeURIComponent(range.value), { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.assign("/dashboard"); return; }
      if (!response.ok) { status.textContent = "the gateway answered " + response.status; return; }
      render(await response.json());
    } catch (error) {
      status.textContent = "cannot reach the gateway";
    }
  }
  range.addEventListener("change", refresh);
  document.getElementById("split").addEventListener("change", refresh);
  refresh();
  setInterval(refresh, 5000);
})();
"""#

    static let style = #"""
:root { --ink: #111827; --muted: #6b7280; --line: #e5e7eb; --card: #ffffff; --page: #f3f4f6; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--page); }
header { display: flex; align-items: center; gap: 16px; padding: 12px 24px; background: #111827; color: #fff; }
header h1 { font-size: 18px; margin: 0; flex: 1; }
header select, header button { font: inherit; padding: 4px 8px; border-radius: 6px; border: 1px solid #374151; background: #1f2937; color: #fff; }
#status { color: #9ca3af; font-size: 12px; }
main { padding: 16px 24px; display: grid; gap: 16px; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); }
.cards { grid-column: 1 / -1; display: grid; gap: 12px; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
.card, section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.card .name { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .number { font-size: 22px; font-weight: 600; margin-top: 4px; }
section h2 { font-size: 14px; margin: 0 0 8px; }
section h2 select { font: inherit; padding: 0 4px; border: 1px solid var(--line); border-radius: 4px; }
svg { width: 100%; height: auto; display: block; }
svg .axis { stroke: var(--line); }
svg .tick, svg .value, svg .label, svg .legend, svg .empty { font-size: 11px; fill: var(--muted); }
svg .label { fill: var(--ink); }
table { width: 100%; border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid var(--line); }
.login { max-width: 360px; margin: 12vh auto; background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 24px; }
.login h1 { font-size: 20px; margin: 0 0 16px; }
.login input[type=password] { width: 100%; font: inherit; padding: 8px; border: 1px solid var(--line); border-radius: 6px; }
.login button { margin-top: 12px; width: 100%; font: inherit; padding: 8px; border: 0; border-radius: 6px; background: var(--accent); color: #fff; }
.error { color: #b91c1c; margin: 0 0 12px; }
"""#
}

extension DashboardHandler {
    /// The dashboard; `{{csrf}}` is the session's token (for the logout form).
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Switchyard dashboard</title>
<link rel="stylesheet" href="/dashboard/app.css">
</head>
<body>
<header>
  <h1>Switchyard</h1>
  <span id="status">loading…</span>
  <select id="range" aria-label="period">
    <option value="15">last 15 minutes</option>
    <option value="60" selected>last hour</option>
    <option value="1440">last day</option>
    <option value="10080">last week</option>
  </select>
  <form method="post" action="/dashboard/logout"><input type="hidden" name="csrf" value="{{csrf}}"><button type="submit">Log out</button></form>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="name">Spend</div><div class="number" id="spend">–</div></div>
    <div class="card"><div class="name">Saved</div><div class="number" id="saved">–</div></div>
    <div class="card"><div class="name">Requests</div><div class="number" id="requests">–</div></div>
    <div class="card"><div class="name">Cache hit rate</div><div class="number" id="hit-rate">–</div></div>
    <div class="card"><div class="name">Error rate</div><div class="number" id="error-rate">–</div></div>
    <div class="card"><div class="name">Latency p50 / p99</div><div class="number"><span id="latency-p50">–</span> / <span id="latency-p99">–</span></div></div>
    <div class="card"><div class="name">TTFT p50 / p99</div><div class="number"><span id="ttft-p50">–</span> / <span id="ttft-p99">–</span></div></div>
    <div class="card"><div class="name">Degraded</div><div class="number" id="degraded">–</div></div>
    <div class="card"><div class="name">Escalations</div><div class="number" id="escalations">–</div></div>
  </div>
  <section><h2>Spend and savings over time</h2><div id="chart-spend" data-title="spend and savings over time"></div></section>
  <section><h2>Spend over time by <select id="split" aria-label="split by">
    <option value="tenant">tenant</option><option value="user">user</option><option value="feature">feature</option>
    <option value="model" selected>model</option></select></h2><div id="chart-split" data-title="spend over time by dimension"></div></section>
  <section><h2>Cache hit rate and error rate</h2><div id="chart-cache" data-title="cache hit rate and error rate over time"></div></section>
  <section><h2>Spend by tenant</h2><div id="by-tenant" data-title="spend by tenant"></div></section>
  <section><h2>Spend by user</h2><div id="by-user" data-title="spend by user"></div></section>
  <section><h2>Spend by feature</h2><div id="by-feature" data-title="spend by feature"></div></section>
  <section><h2>Spend by model</h2><div id="by-model" data-title="spend by model"></div></section>
  <section><h2>Savings by lever</h2><div id="savings-levers" data-title="savings by lever"></div></section>
  <section><h2>Route mix (this instance)</h2><div id="route-mix" data-title="route mix"></div></section>
  <section><h2>Errors by kind (this instance)</h2><div id="errors" data-title="errors by kind"></div></section>
  <section><h2>Limit refusals and degradations (this instance)</h2><div id="refusals" data-title="refusals and degradations"></div></section>
  <section><h2>Queue depth by priority</h2><div id="queues"></div></section>
  <section><h2>Deployment health</h2><div id="deployments"></div></section>
</main>
<script src="/dashboard/app.js"></script>
</body>
</html>
"""#

    /// The login form; `{{csrf}}` is the form's token, `{{error}}` a message (escaped) or nothing.
    static let loginHTML = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Switchyard dashboard: log in</title>
<link rel="stylesheet" href="/dashboard/app.css">
</head>
<body>
<form class="login" method="post" action="/dashboard/login">
  <h1>Switchyard dashboard</h1>
  {{error}}
  <label for="key">Admin key</label>
  <input type="password" id="key" name="key" autocomplete="current-password" required autofocus>
  <input type="hidden" name="csrf" value="{{csrf}}">
  <button type="submit" id="login">Log in</button>
</form>
</body>
</html>
"""#
}
