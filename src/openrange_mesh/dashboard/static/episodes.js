// The episodes list: filters and the page cursor live in the URL query (the API's own names),
// so back/forward and deep links work; the query goes to /api/episodes as it is, and a bad
// one comes back as the server's 400 message.

import {h, fill, table, td, timeCell, episodeLink, stateBadge, labelsText, firstLine, fmtDuration, fmtNumber, STATES, ACTIVE} from "./dom.js";
import {get} from "./api.js";
import {confirmCancel, cancelOutcome} from "./cancel.js";

export const FILTERS = ["state", "host", "runtime", "label", "submitter", "since", "until", "q"];
const LIMITS = ["50", "100", "200", "500"];
const RETRY_MS = 2000; // a 5xx or no answer (a leader between keepalives, or moving) is tried again

export class EpisodesView {
  constructor(root, {navigate, say, hosts}) {
    this.navigate = navigate; // (url, replace?) pushes the URL and routes
    this.say = say;           // one-line message
    this.hosts = hosts;       // () => known host ids, for the host filter's suggestions
    this.rows = new Map();    // id -> tr of the shown page
    this.changed = new Set(); // ids matching the filter, not on this page, changed since it loaded
    this.streamFrom = -1;     // the revision the stream's changes start after (since())
    this.form = this.buildForm();
    this.head = h("div", {class: "list-head"});
    this.body = h("div", {class: "list-body"});
    this.pager = h("div", {class: "pager"});
    fill(root, h("h2", null, "Episodes"), this.form, this.head, this.body, this.pager);
  }

  params() {
    return new URLSearchParams(location.search);
  }

  // Only the newest load renders: an older answer that comes late would show another query.
  async load() {
    clearTimeout(this.retry);
    const seq = (this.seq = (this.seq || 0) + 1);
    const params = this.params();
    this.fillForm(params);
    this.changed.clear();
    fill(this.head, h("span", {class: "muted"}, "loading..."));
    let data;
    try {
      data = await get(`/api/episodes${location.search}`);
    } catch (exc) {
      if (seq !== this.seq) return;
      const transient = exc.status === 0 || exc.status >= 500;
      const text = exc.status === 400 ? `bad query: ${exc.message}` : exc.message;
      fill(this.head, h("span", {class: "bad"}, transient ? `${text} (trying again)` : text));
      this.say(text);
      fill(this.body);
      fill(this.pager);
      this.shown = null;
      if (transient) this.retry = setTimeout(() => this.load(), RETRY_MS);
      return;
    }
    if (seq !== this.seq) return;
    if (Number.isInteger(data.revision) && data.revision < this.streamFrom) return this.load(); // see since()
    this.shown = data;
    this.renderHead();
    this.renderRows(data.episodes || []);
    this.renderPager(params, data);
  }

  destroy() {
    clearTimeout(this.retry);
    this.seq = (this.seq || 0) + 1; // a load under way renders nothing
  }

  // The stream sends what changes after `revision` (its hello). The list is another request:
  // one read at an older revision lacks what changed in between (a run submitted as the tab
  // opened, never shown while nothing of it changes), so it is read again. A list asked for
  // after the hello is never older: the leader's index only moves on.
  since(revision) {
    if (!Number.isInteger(revision)) return;
    this.streamFrom = revision;
    if (this.shown && Number.isInteger(this.shown.revision) && this.shown.revision < revision) this.load();
  }

  renderHead() {
    const data = this.shown;
    const page = history.state?.page || (this.params().has("cursor") ? "?" : 1);
    const newer = this.changed.size
      ? h("button", {type: "button", class: "link", onclick: () => this.load()}, `${this.changed.size} new or changed since this page loaded: reload`)
      : null;
    fill(this.head,
      h("span", null, h("b", null, fmtNumber(data.total)), " matching · page ", String(page), " · revision ", String(data.revision ?? "?")),
      newer,
      h("button", {type: "button", class: "danger small", onclick: () => this.cancelMatching()}, "Cancel matching..."));
  }

  renderRows(episodes) {
    this.rows.clear();
    if (!episodes.length) return fill(this.body, h("p", {class: "muted"}, "no episodes match"));
    const rows = episodes.map((s) => this.row(s));
    fill(this.body, table(COLUMNS, rows, {class: "episodes"}));
  }

  row(s) {
    const tr = h("tr", null, cells(s));
    this.rows.set(s.id, tr);
    return tr;
  }

  renderPager(params, data) {
    const first = new URLSearchParams(params);
    first.delete("cursor");
    const page = history.state?.page || 1;
    fill(this.pager,
      params.has("cursor") ? h("button", {type: "button", onclick: () => this.navigate(`/?${first}`)}, "« First page") : null,
      page > 1 ? h("button", {type: "button", onclick: () => history.back()}, "‹ Previous") : null,
      data.next != null ? h("button", {type: "button", onclick: () => this.nextPage(data.next)}, "Next ›") : null);
  }

  nextPage(cursor) {
    const params = this.params();
    params.set("cursor", cursor);
    this.navigate(`/?${params}`, false, {page: (history.state?.page || 1) + 1});
  }

  // A summary from the stream: a row on this page is redrawn. On the first page, one that would
  // match the filter joins it in id order (newest first), so a run shows up as it goes; on a
  // later page, or below a full first page, it is counted for the "reload" hint instead, so
  // no page shifts under its reader.
  update(s) {
    const tr = this.rows.get(s.id);
    if (tr && s.deleted) {
      tr.classList.add("deleted");
      tr.title = "deleted (collected after its retention)";
    } else if (tr) {
      fill(tr, cells(s));
      tr.classList.add("flash");
      setTimeout(() => tr.classList.remove("flash"), 800);
    } else if (this.shown && !s.deleted && matches(s, this.params())) {
      if (this.params().has("cursor") || !this.insert(s)) this.changed.add(s.id);
      this.renderHead();
    }
  }

  // Into the first page at its place; false when it falls below a full page.
  insert(s) {
    const limit = Number(this.params().get("limit") || 50);
    const ids = [...this.rows.keys()];
    const at = ids.findIndex((id) => id < s.id);
    if (at < 0 && ids.length >= limit) return false;
    this.shown.total = (this.shown.total || 0) + 1;
    const body = this.body.querySelector("table.episodes tbody");
    if (!body) {
      this.renderRows([s]);
      return true;
    }
    const tr = this.row(s);
    if (at < 0) body.append(tr);
    else this.rows.get(ids[at]).before(tr);
    const order = at < 0 ? [...ids, s.id] : [...ids.slice(0, at), s.id, ...ids.slice(at)];
    this.rows = new Map(order.map((id) => [id, id === s.id ? tr : this.rows.get(id)]));
    tr.classList.add("flash");
    setTimeout(() => tr.classList.remove("flash"), 800);
    for (const id of order.slice(limit)) {
      this.rows.get(id).remove();
      this.rows.delete(id);
    }
    return true;
  }

  buildForm() {
    const field = (name, label, input) => h("label", null, label, input || h("input", {name, type: "search", spellcheck: "false"}));
    const hostList = h("datalist", {id: "host-ids"});
    const form = h("form", {class: "filters", onsubmit: (e) => { e.preventDefault(); this.apply(); }},
      field("state", "state", h("select", {name: "state"}, h("option", {value: ""}, "any"), STATES.map((s) => h("option", {value: s}, s)))),
      field("q", "id prefix", h("input", {name: "q", type: "search", spellcheck: "false", placeholder: "000000002a-"})),
      field("host", "host", h("input", {name: "host", type: "search", list: "host-ids", spellcheck: "false", onfocus: () => this.suggestHosts(hostList)})),
      hostList,
      field("runtime", "runtime"),
      field("label", "label", h("input", {name: "label", type: "search", placeholder: "k=v", spellcheck: "false"})),
      field("submitter", "submitter"),
      field("since", "created since", h("input", {name: "since", type: "datetime-local", step: 1})),
      field("until", "until", h("input", {name: "until", type: "datetime-local", step: 1})),
      field("limit", "per page", h("select", {name: "limit"}, LIMITS.map((n) => h("option", {value: n}, n)))),
      h("div", {class: "filter-buttons"},
        h("button", {type: "submit"}, "Apply"),
        h("button", {type: "button", onclick: () => this.navigate("/")}, "Clear")));
    return form;
  }

  suggestHosts(list) {
    fill(list, this.hosts().map((id) => h("option", {value: id})));
  }

  fillForm(params) {
    for (const el of this.form.elements) {
      if (!el.name) continue;
      const raw = params.get(el.name) ?? "";
      if (el.type === "datetime-local") el.value = /^\d+(\.\d+)?$/.test(raw) ? toLocalInput(Number(raw)) : "";
      else if (el.tagName === "SELECT" && raw && ![...el.options].some((o) => o.value === raw)) {
        el.append(h("option", {value: raw}, raw)); // e.g. state=pending,running from a deep link
        el.value = raw;
      } else if (el.name === "limit") el.value = raw || "50";
      else el.value = raw;
    }
  }

  apply() {
    const params = new URLSearchParams();
    for (const el of this.form.elements) {
      if (!el.name || !el.value.trim()) continue;
      if (el.name === "limit" && el.value === "50") continue;
      const value = el.type === "datetime-local" ? String(Math.floor(new Date(el.value).getTime() / 1000)) : el.value.trim();
      params.set(el.name, value);
    }
    const query = params.toString();
    this.navigate(query ? `/?${query}` : "/");
  }

  // Every pending or running episode matching the current filter: count them, confirm, POST.
  async cancelMatching() {
    const filter = this.params();
    for (const key of [...filter.keys()]) if (!FILTERS.includes(key)) filter.delete(key);
    const asked = listOf(filter.get("state"));
    const states = asked.length ? asked.filter((s) => ACTIVE.has(s)) : [...ACTIVE];
    const counts = {};
    try {
      for (const state of states) {
        const q = new URLSearchParams(filter);
        q.set("state", state);
        q.set("limit", "1");
        counts[state] = (await get(`/api/episodes?${q}`)).total ?? 0;
      }
    } catch (exc) {
      return this.say(`could not count what matches: ${exc.message}`);
    }
    const count = Object.values(counts).reduce((a, b) => a + b, 0);
    const described = [...filter].map(([k, v]) => h("li", null, h("b", null, k), " ", v));
    const what = [
      h("p", null, described.length ? "Episodes matching:" : "Every episode in the mesh (no filter)."),
      described.length ? h("ul", null, described) : null,
      h("p", null, Object.entries(counts).map(([k, n]) => [stateBadge(k), ` ${fmtNumber(n)}  `])),
    ];
    const body = {};
    for (const key of new Set(filter.keys())) body[key] = filter.getAll(key);
    const answer = await confirmCancel({what, count, body: {filter: body}});
    if (answer) {
      this.say(cancelOutcome(answer), "ok");
      this.load();
    }
  }
}

const COLUMNS = [["id"], ["state"], ["host"], ["attempt", "num"], ["runtime"], ["labels"], ["submitter"], ["created"], ["duration", "num"], ["error"]];

function cells(s) {
  const ended = s.finished_at ?? (s.state === "running" ? Date.now() / 1000 : null);
  return [
    td(episodeLink(s.id), "mono"),
    td(stateBadge(s.state)),
    td(s.host ?? "-", "mono"),
    td(fmtNumber(s.attempt), "num"),
    td(s.runtime ?? "-"),
    td(labelsText(s.labels) || "-", "labels"),
    td(s.submitter ?? "-"),
    td(timeCell(s.created_at)),
    td(s.started_at != null && ended != null ? fmtDuration(ended - s.started_at) : "-", "num"),
    td(s.error ? h("span", {class: "error-text", title: s.error}, firstLine(s.error, 80)) : h("span", {class: "muted"}, "-")),
  ];
}

// Whether a summary passes the URL's filter (as the server would judge it, for the hint only).
function matches(s, params) {
  const eq = (key, value) => !params.get(key) || listOf(params.get(key)).includes(value);
  if (!eq("state", s.state) || !eq("host", s.host) || !eq("runtime", s.runtime) || !eq("submitter", s.submitter)) return false;
  for (const kv of params.getAll("label")) {
    const at = kv.indexOf("=");
    if (at < 0 || (s.labels || {})[kv.slice(0, at)] !== kv.slice(at + 1)) return false;
  }
  if (params.has("since") && !(s.created_at >= Number(params.get("since")))) return false;
  if (params.has("until") && !(s.created_at <= Number(params.get("until")))) return false;
  return !params.has("q") || String(s.id).startsWith(params.get("q"));
}

// "a,b" -> ["a", "b"]: the API takes a comma list for state, host and runtime.
function listOf(value) {
  return (value || "").split(",").map((x) => x.trim()).filter(Boolean);
}

function toLocalInput(epoch) {
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
