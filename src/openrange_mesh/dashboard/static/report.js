// The report page: reads the data from its JSON element and draws charts (uPlot) and tables.
// Every string from an episode (ids, hosts, error reasons) goes in as text (textContent), never
// as HTML: an error message is whatever a program printed.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var STATES = ["pending", "running", "succeeded", "failed", "cancelled", "lost"];
  var style = getComputedStyle(document.documentElement);

  function color(name) {
    return style.getPropertyValue("--" + name).trim() || "#888";
  }

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function span(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 1) return (seconds * 1000).toFixed(0) + " ms";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 2 : 1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(seconds / 86400) + "d" + String(Math.floor((seconds % 86400) / 3600)).padStart(2, "0") + "h";
  }

  function when(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleString() : "-";
  }

  function table(parent, columns, rows) {
    if (!rows.length) {
      parent.appendChild(el("p", "none", "empty"));
      return;
    }
    var t = el("table");
    var head = el("tr");
    columns.forEach(function (c) { head.appendChild(el("th", c.title, c.cls)); });
    t.appendChild(el("thead")).appendChild(head);
    var body = t.appendChild(el("tbody"));
    rows.forEach(function (row) {
      var tr = el("tr");
      columns.forEach(function (c) { tr.appendChild(el("td", c.value(row), c.cls)); });
      body.appendChild(tr);
    });
    parent.appendChild(t);
  }

  function axes(xValues) {
    var fg = color("muted"), grid = color("line");
    var x = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    if (xValues) x.values = xValues;
    return [x, { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, size: 60 }];
  }

  function chart(id, opts, columns) {
    var target = document.getElementById(id);
    if (!columns[0].length) {
      target.appendChild(el("p", "no data", "empty"));
      return;
    }
    opts.width = Math.max(target.clientWidth - 16, 300);
    opts.height = opts.height || 240;
    new uPlot(opts, columns, target);
  }

  // header and counts
  var meta = ["namespace " + data.namespace, "generated " + when(data.generated_at), "etcd revision " + data.revision];
  if (data.since) meta.push("since " + when(data.since));
  meta.push(data.total + " episodes");
  document.getElementById("meta").textContent = meta.join(" · ");
  document.title = "openrange-mesh report: " + data.namespace;
  var counts = document.getElementById("counts");
  STATES.forEach(function (state) {
    var card = el("div", null, "card");
    card.appendChild(el("div", data.counts[state] || 0, "n")).style.color = color(state);
    card.appendChild(el("div", state, "label"));
    counts.appendChild(card);
  });

  // throughput and states over time
  var times = data.finished_per_s.map(function (p) { return p[0]; });
  chart("throughput", {
    scales: { x: { time: true } },
    axes: axes(),
    series: [{}, { label: "finished/s (" + span(data.bucket_s) + " buckets)", stroke: color("finished"), fill: color("finished") + "33", width: 1.5 }],
  }, [times, data.finished_per_s.map(function (p) { return p[1]; })]);

  var stateTimes = data.states.map(function (p) { return p[0]; });
  var stateSeries = [{}], stateColumns = [stateTimes];
  STATES.forEach(function (state) {
    stateSeries.push({ label: state, stroke: color(state), width: 1.5 });
    stateColumns.push(data.states.map(function (p) { return p[1][state] || 0; }));
  });
  chart("states", { scales: { x: { time: true } }, axes: axes(), series: stateSeries }, stateColumns);

  // durations
  var d = data.durations;
  document.getElementById("duration-summary").textContent = d.count
    ? "p50 " + span(d.p50) + " · p90 " + span(d.p90) + " · p99 " + span(d.p99) + " · max " + span(d.max) + " · " + d.count + " finished (histogram buckets 4.4% wide)"
    : "no finished episodes";
  var hist = data.histogram;
  chart("histogram", {
    scales: { x: { time: false } },
    axes: axes(function (u, splits) {
      return splits.map(function (i) { return hist[i] ? span(hist[i][0]) : ""; });
    }),
    series: [{ label: "from", value: function (u, i) { return i === null || !hist[i] ? "-" : span(hist[i][0]); } },
      { label: "episodes", stroke: color("bars"), fill: color("bars") + "99", paths: uPlot.paths.bars({ size: [0.9, 40] }), points: { show: false } }],
  }, [hist.map(function (_, i) { return i; }), hist.map(function (b) { return b[2]; })]);

  // tables
  table(document.getElementById("hosts"), [
    { title: "host", value: function (h) { return h.id + (h.live ? "" : " (gone)"); } },
    { title: "running", cls: "num", value: function (h) { return h.running; } },
    { title: "capacity", cls: "num", value: function (h) { return h.capacity === null ? "-" : h.capacity; } },
    { title: "attempts", cls: "num", value: function (h) { return h.attempts; } },
    { title: "succeeded", cls: "num", value: function (h) { return h.succeeded; } },
    { title: "failed", cls: "num", value: function (h) { return h.failed; } },
    { title: "busy", cls: "num", value: function (h) { return span(h.busy_s); } },
  ], data.hosts);

  var r = data.retries;
  document.getElementById("retries").textContent = r.attempts + " attempts retried over " + r.episodes +
    " episodes; " + r.released + " attempts released (not counted); " + data.lost + " episodes lost";

  table(document.getElementById("errors"), [
    { title: "count", cls: "num", value: function (e) { return e.count; } },
    { title: "reason", cls: "reason", value: function (e) { return e.reason; } },
    { title: "examples", cls: "ids", value: function (e) { return e.examples.join(" "); } },
  ], data.errors);
})();
