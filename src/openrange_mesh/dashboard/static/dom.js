// Building DOM and formatting values. Every string that came from the mesh (ids, errors,
// labels, params, results, events) goes in as a text node or an attribute value, never as
// HTML: h() has no way to set innerHTML, and href() only lets http(s) and same-origin paths through.

export const STATES = ["pending", "running", "succeeded", "failed", "cancelled", "lost"];
export const ACTIVE = new Set(["pending", "running"]);

// h("a", {href: "/x", class: "c", onclick: f}, "text", child...): an element; null/false are skipped.
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  add(el, children);
  return el;
}

export function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function fill(el, ...children) {
  el.replaceChildren();
  return add(el, children);
}

// A link target built from data: only http(s) URLs and paths on this server; anything else
// (javascript:, data:) gives null, and the caller shows text instead of a link.
export function href(value) {
  if (typeof value !== "string") return null;
  if (value.startsWith("/") && !value.startsWith("//")) return value;
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

export function episodeLink(id) {
  return h("a", {href: `/episodes/${encodeURIComponent(id)}`, "data-route": true, class: "id"}, id);
}

export function stateBadge(state) {
  return h("span", {class: `state s-${STATES.includes(state) ? state : "other"}`}, state ?? "?");
}

export function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
}

export function firstLine(text, width = 120) {
  if (text == null) return "";
  const line = String(text).split("\n", 1)[0];
  return line.length > width ? line.slice(0, width - 1) + "…" : line;
}

export function fmtNumber(n) {
  return n == null ? "-" : Number(n).toLocaleString();
}

export function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "-";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} m`;
}

const DATE = {year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false};

export function localTime(epoch) {
  return epoch == null ? "-" : new Date(epoch * 1000).toLocaleString(undefined, DATE);
}

export function clockTime(epoch) {
  if (epoch == null || !isFinite(epoch)) return "-";
  const d = new Date(epoch * 1000);
  return d.toLocaleTimeString(undefined, {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function ago(epoch, now = Date.now() / 1000) {
  if (epoch == null) return "";
  const d = now - epoch;
  const a = Math.abs(d);
  const text = a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.floor(a / 60)} m` : a < 86400 ? `${Math.floor(a / 3600)} h` : `${Math.floor(a / 86400)} d`;
  return d >= -1 ? `${text} ago` : `in ${text}`;
}

// Local time with its relative age, which refreshAges() keeps current.
export function timeCell(epoch) {
  if (epoch == null) return h("span", {class: "muted"}, "-");
  const iso = new Date(epoch * 1000).toISOString();
  return h("time", {datetime: iso, title: iso}, localTime(epoch), " ", h("span", {class: "age", "data-epoch": epoch}, ago(epoch)));
}

export function refreshAges(root = document) {
  const now = Date.now() / 1000;
  for (const el of root.querySelectorAll("[data-epoch]")) el.textContent = ago(Number(el.dataset.epoch), now);
}

// Pretty JSON for a <pre>, or "-" for nothing.
export function jsonBlock(value) {
  return h("pre", {class: "json"}, value == null ? "-" : JSON.stringify(value, null, 2));
}

export function table(columns, rows, opts = {}) {
  const head = h("tr", null, columns.map(([name, cls]) => h("th", {class: cls}, name)));
  return h("table", {class: `grid ${opts.class || ""}`}, h("thead", null, head), h("tbody", null, rows));
}

export function td(content, cls) {
  return h("td", {class: cls}, content);
}
