// The dashboard page (design/dashboard.md): routes "/" (hosts, summary charts, episodes) and
// "/episodes/<id>" without reloading, keeps ONE EventSource for the tab (live.js) and hands its
// events to the view on screen.

import {h, fill, refreshAges} from "./dom.js";
import {get, whenUnreachable} from "./api.js";
import {Live, seekLeader} from "./live.js";
import {renderHosts} from "./hosts.js";
import {Charts} from "./charts.js";
import {EpisodesView} from "./episodes.js";
import {EpisodeView} from "./episode.js";
import {token, setToken} from "./cancel.js";

const main = document.getElementById("view");
const banner = document.getElementById("banner");
const message = document.getElementById("message");
const liveBadge = document.getElementById("live");
const SUMMARY_POLL_MS = 3000;
const SUMMARY_AFTER_MS = 1000;
let hosts = {hosts: [], left: []};
let view = null; // {kind, refresh(), on(kind, data), destroy()}

// ---- messages ---------------------------------------------------------------------------

let messageTimer = null;
function say(text, kind = "bad") {
  clearTimeout(messageTimer);
  fill(message, h("span", null, text), h("button", {type: "button", class: "link", "aria-label": "dismiss", onclick: () => (message.hidden = true)}, "×"));
  message.className = `message ${kind}`;
  message.hidden = false;
  if (kind === "ok") messageTimer = setTimeout(() => (message.hidden = true), 6000);
}

function notFound(title, detail) {
  document.title = "not found · openrange-mesh";
  fill(main, h("section", {class: "not-found"}, h("h2", null, title), detail ? h("p", {class: "muted"}, detail) : null,
    h("p", null, h("a", {href: "/", "data-route": true}, "back to the overview"))));
}

// ---- views ------------------------------------------------------------------------------

class Overview {
  constructor() {
    this.kind = "overview";
    const hostsBox = h("section", {id: "hosts"});
    const summaryBox = h("section", {id: "summary"});
    const listBox = h("section", {id: "episodes"});
    fill(main, hostsBox, summaryBox, listBox);
    this.hostsBox = hostsBox;
    renderHosts(hostsBox, hosts);
    this.charts = new Charts(summaryBox, {onState: (state) => navigate(`/?state=${encodeURIComponent(state)}`)});
    this.list = new EpisodesView(listBox, {navigate, say, hosts: () => hosts.hosts.map((x) => x.id)});
    this.pushedAt = 0;
    this.poller = setInterval(() => this.poll(), SUMMARY_POLL_MS);
    this.refresh();
  }

  refresh() {
    this.readSummary();
    this.list.load();
  }

  // The stream may carry no summary: then it is read every SUMMARY_POLL_MS while the tab shows.
  poll() {
    if (!document.hidden && Date.now() - this.pushedAt > SUMMARY_POLL_MS) this.readSummary();
  }

  readSummary() {
    this.readAt = Date.now();
    get("/api/summary").then((s) => this.charts.update(s), (exc) => this.charts.unavailable(exc));
  }

  // Episodes changed: the counts and charts follow within SUMMARY_AFTER_MS, at most that often.
  summarySoon() {
    if (this.soon) return;
    const wait = Math.max(0, SUMMARY_AFTER_MS - (Date.now() - (this.readAt || 0)));
    this.soon = setTimeout(() => { this.soon = null; this.readSummary(); }, wait);
  }

  on(kind, data) {
    if (kind === "hello") this.list.since(data?.revision);
    else if (kind === "hosts") renderHosts(this.hostsBox, data);
    else if (kind === "summary") {
      this.pushedAt = Date.now();
      this.charts.update(data);
    } else if (kind === "episode") {
      this.list.update(data);
      this.summarySoon();
    }
  }

  destroy() {
    clearTimeout(this.soon);
    clearInterval(this.poller);
    this.charts.destroy();
    this.list.destroy();
  }
}

class Episode {
  constructor(id) {
    this.kind = "episode";
    this.episode = new EpisodeView(main, id, {say, notFound});
    this.refresh();
  }

  refresh() {
    this.episode.load();
  }

  on(kind, data) {
    if (kind === "hello") this.episode.since(data?.revision);
    else if (kind === "episode") this.episode.update(data);
  }

  destroy() {
    this.episode.destroy();
  }
}

// ---- routing ----------------------------------------------------------------------------

function route() {
  const path = location.pathname;
  if (path === "/" || path === "/index.html") {
    document.title = "openrange-mesh";
    if (view?.kind === "overview") { // only the query or the #section changed
      if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView();
      return view.list.load();
    }
    return show(() => new Overview());
  }
  const match = path.match(/^\/episodes\/([^/]+)\/?$/);
  let id = null;
  try {
    id = match ? decodeURIComponent(match[1]) : null;
  } catch {
    id = null;
  }
  if (id !== null) return show(() => new Episode(id));
  view?.destroy();
  view = null;
  notFound("no such page", path);
}

function show(make) {
  view?.destroy();
  message.hidden = true;
  view = make();
  if (location.hash) requestAnimationFrame(() => document.getElementById(location.hash.slice(1))?.scrollIntoView());
  else window.scrollTo(0, 0);
}

function navigate(url, replace = false, state = {page: 1}) {
  if (replace) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
  route();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-route]");
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  const target = a.getAttribute("href");
  if (target.startsWith("/#") && view?.kind === "overview") return document.getElementById(target.slice(2))?.scrollIntoView();
  if (target !== location.pathname + location.search) navigate(target);
});
window.addEventListener("popstate", route);

// ---- live -------------------------------------------------------------------------------

function setHosts(data) {
  hosts = data;
  live.knownAgents((data.hosts || []).map((x) => x.url));
  const leader = (data.hosts || []).find((x) => x.leader);
  document.getElementById("leader").textContent = leader ? `leader ${leader.id}` : "no leader";
}

const pending = new Map(); // episode summaries waiting for the next frame, the latest per id
let frame = null;

function onEvent(kind, data) {
  if (kind === "hosts") setHosts(data);
  if (kind === "reset") return resync(); // the server no longer has the changes we missed
  if (kind === "episodes" && Array.isArray(data)) data.forEach((s) => onEvent("episode", s));
  if (kind !== "episode") return view?.on(kind, data);
  if (!data || typeof data.id !== "string") return;
  pending.set(data.id, data);
  frame ??= requestAnimationFrame(() => {
    frame = null;
    const batch = [...pending.values()];
    pending.clear();
    for (const s of batch) view?.on("episode", s);
  });
}

function onStatus(state, detail) {
  liveBadge.dataset.state = state;
  liveBadge.textContent = state === "moving" ? "searching" : state;
  banner.hidden = state !== "moving";
  if (state === "moving") fill(banner, "leader moved, reconnecting... ", h("span", {class: "small muted"}, `(${detail})`));
}

function readHosts() {
  return get("/api/hosts").then((data) => onEvent("hosts", data), (exc) => say(`hosts: ${exc.message}`));
}

function resync() {
  readHosts();
  view?.refresh();
}

const live = new Live({onEvent, onStatus, onResync: resync});
whenUnreachable(() => live.broken());

// ---- start ------------------------------------------------------------------------------

const tokenInput = document.getElementById("token");
tokenInput.value = token();
tokenInput.addEventListener("input", () => setToken(tokenInput.value));
tokenInput.form.addEventListener("submit", (e) => e.preventDefault());

if (location.pathname.startsWith("/static/") && location.hash.startsWith("#seek=")) {
  // Opened on another agent by a tab whose leader died (live.js): find the leader from here.
  fill(main, h("p", {class: "muted"}, "looking for the mesh's leader..."));
  seekLeader(onStatus);
} else {
  if (history.state === null) history.replaceState({page: new URLSearchParams(location.search).has("cursor") ? 0 : 1}, "");
  route();
  readHosts();
  live.start();
  setInterval(() => refreshAges(), 5000);
}
