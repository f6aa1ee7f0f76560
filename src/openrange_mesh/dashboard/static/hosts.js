// The hosts panel: the /api/hosts answer (also sent whole as the stream's "hosts" event).

import {h, fill, href, table, td, timeCell, labelsText, fmtNumber} from "./dom.js";

const STALE_S = 10; // a heartbeat older than this is worth a look (the agent default ttl)

export function renderHosts(root, data) {
  const hosts = [...(data.hosts || [])].sort((a, b) => String(a.id).localeCompare(String(b.id)));
  const left = data.left || [];
  const columns = [
    ["host"], ["status"], ["running", "num"], ["capacity", "num"], ["labels"], ["version"],
    ["heartbeat", "num"], ["started"], ["dashboard"],
  ];
  const rows = hosts.map((host) =>
    h("tr", {class: host.draining ? "draining" : null},
      td([h("span", {class: "mono"}, host.id), host.leader ? h("span", {class: "badge leader", title: "the leader"}, "leader") : null]),
      td(status(host)),
      td(fmtNumber(host.running), "num"),
      td([fmtNumber(host.capacity), " ", meter(host.running, host.capacity)], "num"),
      td(labelsText(host.labels) || "-", "labels"),
      td(host.version || "-", "mono"),
      td(heartbeat(host.heartbeat_age_s), "num"),
      td(timeCell(host.started_at)),
      td(agentLink(host)),
    ));
  const parts = [
    h("h2", null, "Hosts ", h("span", {class: "muted small"}, `${hosts.length} live · revision ${data.revision ?? "?"}`)),
    hosts.length ? table(columns, rows, {class: "hosts"}) : h("p", {class: "muted"}, "no live hosts"),
  ];
  if (left.length) {
    parts.push(h("h3", null, "Left in the last hour"));
    parts.push(table([["host"], ["left"]], left.map((x) => h("tr", null, td(h("span", {class: "mono"}, x.id)), td(timeCell(x.left_at))))));
  }
  fill(root, parts);
}

function status(host) {
  if (!host.draining) return h("span", {class: "ok"}, "alive");
  return h("span", {class: "warn", title: host.reason || "asked to drain"}, host.reason ? `draining: ${host.reason}` : "draining");
}

function heartbeat(age) {
  if (age === null) return h("span", {class: "warn", title: "its lease is gone: it leaves the list shortly"}, "expired");
  if (age === undefined) return "-";
  return h("span", {class: age > STALE_S ? "warn" : null}, `${Number(age).toFixed(0)} s`);
}

function meter(running, capacity) {
  if (!capacity) return null;
  return h("meter", {min: 0, max: capacity, value: Math.min(running || 0, capacity), title: `${running} of ${capacity} busy`});
}

function agentLink(host) {
  const target = href(host.url);
  if (!target) return host.url || host.address || "-";
  return h("a", {href: target, class: "mono"}, host.url);
}
