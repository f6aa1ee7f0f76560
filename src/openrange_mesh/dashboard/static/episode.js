// One episode (/episodes/<id>): its record (as `show -o json`), spec, result, every attempt,
// a timeline, artifact locations, and its events (events.js). The stream's "episode" event
// for this id re-reads the record; the events viewer keeps its place.

import {h, fill, table, td, timeCell, stateBadge, labelsText, fmtDuration, jsonBlock, href, localTime, ACTIVE} from "./dom.js";
import {get, enc} from "./api.js";
import {confirmCancel, cancelOutcome} from "./cancel.js";
import {EventsViewer} from "./events.js";

const REREAD_MS = 500; // at most one re-read of the record this often, however fast it changes

export class EpisodeView {
  constructor(root, id, {say, notFound}) {
    this.root = root;
    this.id = id;
    this.say = say;
    this.notFound = notFound;
    this.streamFrom = -1; // the revision the stream's changes start after (since())
    this.head = h("div", {class: "episode-head"});
    this.fields = h("section");
    this.attempts = h("section");
    this.timeline = h("section");
    this.artifacts = h("section");
    this.specs = h("section", {class: "two"});
    this.eventsBox = h("section");
    fill(root, h("p", {class: "muted"}, "loading..."));
  }

  async load() {
    let data;
    try {
      data = await get(`/api/episodes/${enc(this.id)}`);
    } catch (exc) {
      if (this.gone) return; // the tab moved to another view meanwhile
      if (exc.status === 404) return this.notFound(`episode ${this.id} not found`, exc.message);
      if (!this.record) fill(this.root, h("p", {class: "bad"}, exc.message));
      else this.say(exc.message);
      // A 5xx or no answer passes (a leader between keepalives, or moving): read again.
      if ((exc.status === 0 || exc.status >= 500) && !this.timer) this.timer = setTimeout(() => { this.timer = null; this.load(); }, REREAD_MS * 4);
      return;
    }
    if (this.gone) return;
    if (Number.isInteger(data.revision) && data.revision < this.streamFrom) return this.load(); // see since()
    const first = !this.record;
    this.record = data.record;
    this.revision = data.revision;
    if (first) {
      fill(this.root, this.head, this.fields, this.specs, this.attempts, this.timeline, this.artifacts, this.eventsBox);
      this.events = new EventsViewer(this.eventsBox, this.id);
    }
    this.render();
  }

  // As the list's (episodes.js): a record read before the stream's start misses what changed since.
  since(revision) {
    if (!Number.isInteger(revision)) return;
    this.streamFrom = revision;
    if (this.record && Number.isInteger(this.revision) && this.revision < revision) this.load();
  }

  update(summary) {
    if (summary.id !== this.id || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.load();
    }, REREAD_MS);
  }

  destroy() {
    this.gone = true;
    clearTimeout(this.timer);
  }

  render() {
    const r = this.record;
    const spec = r.spec || {};
    const active = ACTIVE.has(r.state);
    document.title = `${r.id} · openrange-mesh`;
    fill(this.head,
      h("h2", null, h("span", {class: "mono"}, r.id), " ", stateBadge(r.state)),
      h("span", {class: "muted small"}, `revision ${this.revision ?? "?"}`),
      active ? h("button", {type: "button", class: "danger", onclick: () => this.cancel()}, "Cancel episode...") : null);
    const now = Date.now() / 1000;
    const duration = r.started_at != null ? (r.finished_at ?? (r.state === "running" ? now : null)) : null;
    const rows = [
      ["runtime", spec.runtime ?? r.runtime],
      ["attempt", `${r.attempt ?? "?"} of ${spec.max_attempts ?? "?"}`],
      ["host", r.host ?? "-"],
      ["owner", r.owner ? `${r.owner}${r.claim ? ` (claim ${r.claim})` : ""}` : "-"],
      ["submitter", r.submitter ?? "-"],
      ["labels", labelsText(r.labels || spec.labels) || "-"],
      ["created", timeCell(r.created_at)],
      ["started", timeCell(r.started_at)],
      ["finished", timeCell(r.finished_at)],
      ["duration", duration != null ? fmtDuration(duration - r.started_at) : "-"],
      ["acked", timeCell(r.acked_at)],
      ["error", r.error ? h("pre", {class: "error-text"}, r.error) : "-"],
    ];
    fill(this.fields, h("dl", {class: "fields"}, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])));
    fill(this.specs,
      h("div", null, h("h3", null, "Spec"), jsonBlock(r.spec)),
      h("div", null, h("h3", null, "Result"), jsonBlock(r.result)));
    this.renderAttempts(r.history || [], now);
    this.renderTimeline(r);
    this.renderArtifacts(r.artifacts);
    this.events.setAttempts(r.attempt || (r.history || []).length);
    this.events.setActive(active);
  }

  renderAttempts(history, now) {
    const hasToken = history.some((a) => tokenOf(a) != null);
    const columns = [["#", "num"], ["outcome"], ["host"], ["started"], ["finished"], ["duration", "num"],
      hasToken ? ["fencing token", "num"] : null, ["error"]].filter(Boolean);
    const rows = history.map((a) => h("tr", null,
      td(String(a.n), "num"),
      td(a.outcome ? stateBadge(a.outcome) : stateBadge("running")),
      td(a.host ?? "-", "mono"),
      td(timeCell(a.started_at)),
      td(timeCell(a.finished_at)),
      td(a.started_at != null ? fmtDuration((a.finished_at ?? now) - a.started_at) : "-", "num"),
      hasToken ? td(tokenOf(a) ?? "-", "num mono") : null,
      td(a.error ? h("pre", {class: "error-text"}, a.error) : "-")));
    fill(this.attempts, h("h3", null, "Attempts"),
      rows.length ? table(columns, rows, {class: "attempts"}) : h("p", {class: "muted"}, "not started yet"));
  }

  renderTimeline(r) {
    const items = Array.isArray(r.timeline) ? r.timeline.map((x) => [x.at, x.event]) : timelineOf(r);
    fill(this.timeline, h("h3", null, "Timeline"),
      h("ol", {class: "timeline"}, items.map(([at, what]) =>
        h("li", null, h("time", {class: "mono"}, localTime(at)), " ", h("span", null, String(what))))));
  }

  renderArtifacts(artifacts) {
    if (!Array.isArray(artifacts) || !artifacts.length) return fill(this.artifacts);
    fill(this.artifacts, h("h3", null, "Artifacts"),
      h("ul", {class: "artifacts"}, artifacts.map((item) => h("li", null,
        `attempt ${item.attempt}: `, linkOrText(item.url, item.location),
        item.files?.length ? h("ul", null, item.files.map((f) => h("li", null, fileEntry(f, item)))) : h("span", {class: "muted"}, " (nothing stored)")))));
  }

  async cancel() {
    const r = this.record;
    const where = r.state === "running" ? ` running on ${r.owner ?? r.host ?? "?"}` : " pending";
    const answer = await confirmCancel({
      what: h("p", null, "Episode ", h("span", {class: "mono"}, r.id), where, "."),
      count: 1,
      body: {ids: [r.id]},
    });
    if (answer) {
      this.say(cancelOutcome(answer), "ok");
      this.load();
    }
  }
}

// The fencing token of an attempt, under whichever name the server gives it.
function tokenOf(a) {
  return a.token ?? a.fencing_token ?? null;
}

function linkOrText(url, text) {
  const target = href(url);
  return target ? h("a", {href: target, rel: "noopener"}, text ?? url) : h("span", {class: "mono"}, text ?? "-");
}

function fileEntry(f, item) {
  if (f && typeof f === "object") return linkOrText(f.url, f.name ?? f.path ?? f.url);
  const base = href(item.url);
  return base ? linkOrText(base.replace(/\/?$/, "/") + encodeURI(String(f)), String(f)) : h("span", {class: "mono"}, String(f));
}

// The same sentences as the CLI's `show` (cli/records.timeline), when the server sends none.
function timelineOf(r) {
  const items = [[r.created_at, `submitted by ${r.submitter ?? "?"}`]];
  for (const a of r.history || []) {
    items.push([a.started_at, `attempt ${a.n} started on ${a.host}`]);
    if (a.finished_at != null) items.push([a.finished_at, `attempt ${a.n} ended ${a.outcome ?? "?"}${a.error ? ": " + a.error.split("\n", 1)[0] : ""}`]);
  }
  if (r.acked_at) items.push([r.acked_at, "result acknowledged"]);
  return items.sort((x, y) => x[0] - y[0]);
}
