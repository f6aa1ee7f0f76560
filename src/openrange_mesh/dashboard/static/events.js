// An attempt's events, paged from /api/episodes/{id}/events: a page of PAGE events is fetched
// when the reader scrolls near the end of what is loaded, and only the rows in view are in the
// DOM (fixed-height rows in a scroll box), so a 50k-event episode never freezes the tab.

import {h, fill, clockTime} from "./dom.js";
import {get, enc} from "./api.js";

const PAGE = 500;
const ROW_H = 22;   // px, as .events-row in app.css
const OVERSCAN = 10;
const VIEW_H = 440; // px: the box's height once it is full

export class EventsViewer {
  constructor(root, id) {
    this.id = id;
    this.attempt = "";  // "" = the latest attempt with events (the API's default)
    this.picker = h("select", {onchange: () => this.reset(this.picker.value)});
    this.status = h("span", {class: "muted small"});
    this.more = h("button", {type: "button", class: "small", hidden: true, onclick: () => this.fetchMore()}, "Load newer events");
    this.spacer = h("div", {class: "events-spacer"});
    this.rows = h("div", {class: "events-rows"});
    this.scroller = h("div", {class: "events-scroll", onscroll: () => this.schedule()}, this.spacer, this.rows);
    this.detail = h("pre", {class: "json event-detail", hidden: true});
    fill(root,
      h("h2", null, "Events ", h("label", {class: "small"}, "attempt ", this.picker), " ", this.status, " ", this.more),
      this.scroller, this.detail);
    this.reset("");
  }

  setAttempts(count) {
    if (this.picker.options.length === count + 1) return;
    fill(this.picker, h("option", {value: ""}, "latest"),
      Array.from({length: count}, (_, i) => h("option", {value: String(i + 1)}, String(i + 1))));
    this.picker.value = this.attempt;
  }

  reset(attempt) {
    this.attempt = attempt;
    this.events = [];
    this.next = 0;        // the offset of the next page; null when the log ended (for now)
    this.loading = false;
    this.selected = -1;
    this.generation = (this.generation || 0) + 1;
    this.detail.hidden = true;
    this.scroller.scrollTop = 0;
    this.render();
    this.fetchMore();
  }

  async fetchMore() {
    if (this.loading) return;
    const offset = this.next ?? this.events.length; // after the end: ask again from there (it may have grown)
    const generation = this.generation;
    this.loading = true;
    this.more.hidden = true;
    this.status.textContent = `${this.events.length.toLocaleString()} loaded, loading...`;
    const q = new URLSearchParams({offset: String(offset), limit: String(PAGE)});
    if (this.attempt) q.set("attempt", this.attempt);
    try {
      const data = await get(`/api/episodes/${enc(this.id)}/events?${q}`);
      if (generation !== this.generation) return;
      for (const event of data.events || []) this.events.push(event);
      this.next = data.next ?? null;
      this.total = typeof data.total === "number" ? data.total : null;
      this.error = null;
    } catch (exc) {
      if (generation !== this.generation) return;
      this.error = exc.status === 404 ? "no events stored for this attempt" : exc.message;
      this.next = null;
    } finally {
      if (generation === this.generation) this.loading = false;
    }
    this.render();
  }

  // Whether the episode may still write events: then the end of the log offers "load newer".
  setActive(active) {
    this.active = active;
    this.render();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  render() {
    const n = this.events.length;
    this.spacer.style.height = `${n * ROW_H}px`;
    this.scroller.style.height = `${Math.min(VIEW_H, Math.max(n, 2) * ROW_H + 2)}px`; // short logs take little room
    const top = this.scroller.scrollTop;
    const height = this.scroller.clientHeight || VIEW_H;
    const start = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const end = Math.min(n, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    this.rows.style.transform = `translateY(${start * ROW_H}px)`;
    const rows = [];
    for (let i = start; i < end; i++) rows.push(this.row(i));
    fill(this.rows, rows);
    const ended = this.next === null;
    this.status.textContent = this.error ? this.error
      : n === 0 && ended ? "no events"
      : ended ? `${n.toLocaleString()} events`
      : `${n.toLocaleString()} of ${this.total != null ? this.total.toLocaleString() : "?"} loaded, more as you scroll`;
    this.more.hidden = !(ended && this.active && !this.loading);
    if (!ended && !this.loading && end >= n - OVERSCAN * 2) this.fetchMore();
  }

  row(i) {
    const event = this.events[i];
    const {t, type, ...rest} = event && typeof event === "object" ? event : {value: event};
    return h("div", {class: `events-row${i === this.selected ? " selected" : ""}`, onclick: () => this.select(i)},
      h("span", {class: "ev-n"}, String(i)),
      h("span", {class: "ev-t"}, typeof t === "number" ? clockTime(t) : "-"),
      h("span", {class: "ev-type"}, type == null ? "-" : String(type)),
      h("span", {class: "ev-rest"}, compact(rest)));
  }

  select(i) {
    this.selected = i;
    this.detail.hidden = false;
    this.detail.textContent = `event ${i}\n${JSON.stringify(this.events[i], null, 2)}`;
    this.render();
  }
}

function compact(value) {
  const text = JSON.stringify(value);
  return text.length > 400 ? text.slice(0, 399) + "…" : text;
}
