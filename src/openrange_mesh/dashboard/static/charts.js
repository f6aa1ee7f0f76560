// Charts of /api/summary (and of the stream's "summary" event, every 2 s), drawn with the
// vendored uPlot (window.uPlot, loaded by index.html), and the errors table.

import {h, fill, table, td, episodeLink, stateBadge, fmtDuration, fmtNumber, STATES} from "./dom.js";

export const STATE_COLORS = {
  pending: "#c9a227", running: "#3b8fd9", succeeded: "#3aa655",
  failed: "#d64545", cancelled: "#a05cc8", lost: "#e07b24",
};
const KEEP_POINTS = 1800; // durations seen since the page opened: one an event, an hour at 2 s

export class Charts {
  constructor(root, {onState}) {
    this.onState = onState; // a click on a state's count: filter the list by it
    this.counts = h("div", {class: "counts"});
    this.durations = h("div", {class: "stats"});
    this.boxes = {
      finished: chartBox("finished per second"),
      states: chartBox("episodes by state"),
      hosts: chartBox("running vs capacity per host"),
      durations: chartBox("duration percentiles (since this page opened)"),
    };
    this.errors = h("div");
    this.grid = h("div", {class: "charts", hidden: true}, Object.values(this.boxes).map((b) => b.box));
    this.errorsBox = h("div", {hidden: true}, h("h2", null, "Errors by reason"), this.errors);
    this.plots = {};
    this.hostIds = [];
    this.seen = [[], [], [], []];
    fill(root,
      h("h2", null, "Summary ", this.revision = h("span", {class: "muted small"})),
      this.counts,
      this.grid,
      this.durations,
      this.errorsBox);
    this.resize = () => this.sizeAll();
    window.addEventListener("resize", this.resize);
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    for (const plot of Object.values(this.plots)) plot.destroy();
  }

  // /api/summary failed: say so in place of the numbers (a server without it answers 404).
  unavailable(exc) {
    const text = exc.status === 404 ? "this server has no /api/summary" : `summary: ${exc.message}`;
    this.revision.textContent = text;
    this.revision.className = exc.status === 404 ? "muted small" : "bad small";
  }

  update(s) {
    this.grid.hidden = this.errorsBox.hidden = false; // shown from the first answer on: the plots need a width
    this.revision.className = "muted small";
    this.revision.textContent = `revision ${s.revision ?? "?"}`;
    this.renderCounts(s.counts || {});
    this.renderErrors(s.errors || []);
    const d = s.durations || {};
    const r = s.retries || {};
    fill(this.durations, ["p50", "p90", "p99", "max"].map((k) => h("span", {class: "stat"}, h("b", null, k), " ", fmtDuration(d[k]))),
      h("span", {class: "stat"}, h("b", null, "count"), " ", fmtNumber(d.count)),
      s.retries ? h("span", {class: "stat", title: "attempts after the first; released: ended by a failing host, not counted"},
        h("b", null, "retries"), ` ${fmtNumber(r.attempts)} over ${fmtNumber(r.episodes)} episodes, ${fmtNumber(r.released)} released`) : null,
      s.lost != null ? h("span", {class: "stat"}, h("b", null, "lost"), " ", fmtNumber(s.lost)) : null);
    if (typeof uPlot === "undefined") return; // the vendored script did not load: numbers only
    const fin = sinceActive(s.finished_per_s || [], (n) => n > 0);
    this.draw("finished", [fin.map((p) => p[0]), fin.map((p) => p[1])], () => timeOpts([{label: "finished/s", stroke: STATE_COLORS.succeeded, fill: "rgba(58,166,85,0.15)"}]));
    const st = sinceActive(s.states || [], (counts) => Object.values(counts || {}).some((n) => n > 0));
    this.draw("states", [st.map((p) => p[0]), ...STATES.map((k) => st.map((p) => p[1]?.[k] ?? 0))],
      () => timeOpts(STATES.map((k) => ({label: k, stroke: STATE_COLORS[k]}))));
    this.drawHosts(s.hosts || []);
    if (d.count) {
      const now = Date.now() / 1000;
      [now, d.p50, d.p90, d.p99].forEach((v, i) => this.seen[i].push(v ?? null));
      if (this.seen[0].length > KEEP_POINTS) this.seen.forEach((a) => a.shift());
    }
    if (this.seen[0].length) this.draw("durations", this.seen, () => timeOpts([
      {label: "p50", stroke: "#3b8fd9"}, {label: "p90", stroke: "#c9a227"}, {label: "p99", stroke: "#d64545"},
    ], {y: (u, v) => v.map((x) => fmtDuration(x))}));
  }

  // One plot per box, built on the first data and given new data afterwards.
  draw(name, data, options) {
    const plot = this.plots[name];
    if (plot) return plot.setData(data);
    const box = this.boxes[name];
    this.plots[name] = new uPlot({...options(), ...size(box.body)}, data, box.body);
  }

  drawHosts(hosts) {
    const ids = hosts.map((x) => String(x.id));
    const data = [ids.map((_, i) => i), hosts.map((x) => x.capacity ?? 0), hosts.map((x) => x.running ?? 0)];
    if (this.plots.hosts && ids.join("\n") === this.hostIds.join("\n")) return this.plots.hosts.setData(data);
    this.plots.hosts?.destroy();
    this.hostIds = ids;
    const box = this.boxes.hosts;
    const bars = uPlot.paths.bars;
    const opts = {
      ...size(box.body),
      scales: {x: {time: false, range: () => [-0.5, Math.max(ids.length - 0.5, 0.5)]}, y: {range: (u, lo, hi) => [0, Math.max(hi, 1)]}},
      series: [
        {label: "host", value: (u, i) => (i == null ? "-" : ids[i] ?? "")},
        {label: "capacity", stroke: "#888", fill: "rgba(136,136,136,0.25)", paths: bars({size: [0.7, 80]}), points: {show: false}},
        {label: "running", stroke: STATE_COLORS.running, fill: "rgba(59,143,217,0.7)", paths: bars({size: [0.4, 40]}), points: {show: false}},
      ],
      axes: [
        {...axisStyle(), splits: () => ids.map((_, i) => i), values: (u, splits) => splits.map((i) => ids[i] ?? "")},
        {...axisStyle()},
      ],
    };
    this.plots.hosts = new uPlot(opts, data, box.body);
  }

  sizeAll() {
    for (const [name, plot] of Object.entries(this.plots)) plot.setSize(size(this.boxes[name].body));
  }

  renderCounts(counts) {
    const total = Object.values(counts).reduce((a, b) => a + (b || 0), 0);
    fill(this.counts, h("span", {class: "stat"}, h("b", null, "total"), " ", fmtNumber(total)),
      STATES.map((k) => h("button", {class: "stat link", type: "button", title: `list the ${k} episodes`, onclick: () => this.onState(k)},
        stateBadge(k), " ", fmtNumber(counts[k] ?? 0))));
  }

  renderErrors(errors) {
    if (!errors.length) return fill(this.errors, h("p", {class: "muted"}, "no errors"));
    const rows = errors.map((e) => h("tr", null,
      td(h("span", {class: "error-text"}, e.reason ?? "?")),
      td(fmtNumber(e.count), "num"),
      td((e.examples || []).map((id) => [episodeLink(id), " "]))));
    fill(this.errors, table([["reason"], ["count", "num"], ["examples"]], rows, {class: "errors"}));
  }
}

// The points from a little before the first active one: an hour's window of a mesh that started
// a minute ago is mostly zeros, which would squeeze what happened into the right edge.
function sinceActive(points, active, margin = 6) {
  const first = points.findIndex((p) => active(p[1]));
  return first <= margin ? points : points.slice(first - margin);
}

function chartBox(title) {
  const body = h("div", {class: "chart-body"});
  return {body, box: h("figure", {class: "chart"}, h("figcaption", null, title), body)};
}

function size(el) {
  return {width: Math.max(el.clientWidth, 240), height: 180};
}

function axisStyle() {
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue("--muted").trim() || "#888";
  const grid = css.getPropertyValue("--grid").trim() || "rgba(128,128,128,0.2)";
  return {stroke: fg, grid: {stroke: grid, width: 1}, ticks: {stroke: grid, width: 1}};
}

function timeOpts(series, {y} = {}) {
  return {
    scales: {x: {time: true}},
    series: [{}, ...series.map((s) => ({width: 1.5, points: {show: false}, ...s}))],
    axes: [axisStyle(), {...axisStyle(), ...(y ? {values: y, size: 60} : {})}],
  };
}
