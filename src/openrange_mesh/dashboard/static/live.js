// The live part: ONE EventSource per tab on /api/stream, and finding the leader again when the
// stream breaks for good.
//
// While the server is up, the browser's EventSource reconnects by itself and resends
// Last-Event-ID (the etcd revision), so the server resumes with no gap. When it stays down
// (the leader died, or it was deposed and now redirects elsewhere), after GRACE_MS we ask,
// every RETRY_MS: this origin's /api/leader (a deposed leader still answers it), then every
// agent the hosts list named (each host carries its url). The first that names a leader on
// another origin gets the page: we navigate there with the same path and query. The server
// does not promise CORS, so reading another agent's answer may be refused. An agent that
// answers at all (an opaque reply) serves /static/ itself, leader or not: we go to its
// /static/index.html#seek=<path and query>, where the page reads that agent's /api/leader from
// its own origin until it names a leader, and moves there (seekLeader). Going straight to a
// follower's /<path> would work too (it answers with a 307 to the leader), but while no leader
// is elected it answers 503 with JSON, and the reader would be left with that.

// What /api/stream sends (design/dashboard.md): "episodes" (the latest summary of each episode changed since the last message),
// "hosts" (the /api/hosts answer), "reset" (list again), "hello"; "episode" and "summary" too,
// should a server send them.
const KINDS = ["hello", "episodes", "episode", "hosts", "summary", "reset"];
const GRACE_MS = 4000;
const RETRY_MS = 2000;
const SEEK_MS = 1000;
const SKIP_FROM_MS = 60000;

export class Live {
  constructor({onEvent, onStatus, onResync}) {
    this.onEvent = onEvent;     // (kind, data) for each kind in KINDS
    this.onStatus = onStatus;   // ("live" | "reconnecting" | "moving", detail)
    this.onResync = onResync;   // after a new EventSource: data may have been missed
    this.agents = [];           // urls of the agents we know
    this.source = null;
    this.brokeAt = null;
    this.timer = null;
    this.opened = false;
    this.searching = false;
  }

  start() {
    this.open(false);
  }

  knownAgents(urls) {
    this.agents = urls.filter((u) => typeof u === "string" && /^https?:\/\//.test(u));
  }

  open(isReopen) {
    const source = new EventSource("/api/stream");
    this.source = source;
    for (const kind of KINDS) {
      source.addEventListener(kind, (e) => {
        let data;
        try {
          data = JSON.parse(e.data);
        } catch {
          return;
        }
        this.onEvent(kind, data);
      });
    }
    source.onopen = () => {
      const wasBroken = this.brokeAt !== null;
      this.brokeAt = null;
      this.searching = false;
      this.rounds = 0;
      clearTimeout(this.timer);
      this.timer = null;
      this.onStatus("live", "live");
      if (isReopen || (wasBroken && this.opened)) this.onResync();
      this.opened = true;
      isReopen = false;
    };
    source.onerror = () => this.broken();
  }

  // The stream broke, or a request got no answer: give the browser GRACE_MS to reconnect.
  broken() {
    if (this.brokeAt === null) this.brokeAt = Date.now();
    if (this.source && this.source.readyState === EventSource.OPEN) return;
    if (!this.searching) this.onStatus("reconnecting", "reconnecting"); // the banner stays up while we search
    if (this.timer === null) this.timer = setTimeout(() => this.search(), GRACE_MS);
  }

  async search() {
    this.timer = null;
    if (this.source && this.source.readyState === EventSource.OPEN) return;
    this.searching = true;
    this.rounds = (this.rounds || 0) + 1;
    const others = this.agents.filter((a) => !sameOrigin(a));
    this.onStatus("moving", `asking this server and ${others.length} other agent(s), round ${this.rounds}`);
    const here = await leaderFrom("");
    if (here && sameOrigin(here)) {
      // This server leads (again): a closed EventSource never retries, so open a new one.
      if (this.source.readyState === EventSource.CLOSED) this.open(true);
    } else if (here) {
      return moveTo(here);
    } else {
      let alive = null;
      for (const agent of others) {
        const leader = await leaderFrom(agent);
        if (leader && !sameOrigin(leader)) return moveTo(leader);
        if (leader === undefined && alive === null && (await answers(agent))) alive = agent;
      }
      if (alive) return seekVia(alive);
      if (this.source.readyState === EventSource.CLOSED) this.open(true);
    }
    this.timer = setTimeout(() => this.search(), RETRY_MS);
  }
}

// The leader's url as `base`'s /api/leader names it; null when it answered without one (no
// leader yet, 503); undefined when it could not be asked or read.
async function leaderFrom(base) {
  try {
    const response = await fetch(`${base}/api/leader`, {cache: "no-store", signal: AbortSignal.timeout(3000)});
    if (!response.ok) return null;
    const data = await response.json();
    return typeof data.url === "string" && /^https?:\/\//.test(data.url) ? data.url : null;
  } catch {
    return undefined;
  }
}

async function answers(base) {
  try {
    await fetch(`${base}/api/leader`, {mode: "no-cors", cache: "no-store", signal: AbortSignal.timeout(3000)});
    return true;
  } catch {
    return false;
  }
}

function sameOrigin(url) {
  try {
    return new URL(url).origin === location.origin;
  } catch {
    return false;
  }
}

function moveTo(base) {
  const target = new URL(location.pathname + location.search + location.hash, base);
  location.replace(target.href);
}

function seekVia(agent) {
  const seek = new URLSearchParams({seek: location.pathname + location.search, from: location.origin});
  location.replace(new URL(`/static/index.html#${seek}`, agent).href);
}

// The page opened as /static/index.html#seek=<path>&from=<origin>: ask this agent's /api/leader
// until it names a leader, then go to <leader url><path>. Until the dead leader's key expires
// (ttl) the agent still names it: a leader at `from` is skipped for SKIP_FROM_MS. Only a path
// is accepted as the place to go ("//x" is not).
export function seekLeader(onStatus) {
  const hash = new URLSearchParams(location.hash.slice(1));
  const wanted = hash.get("seek") || "/";
  const path = /^\/(?![\/\\])/.test(wanted) ? wanted : "/";
  const from = hash.get("from");
  const started = Date.now();
  onStatus("moving", "waiting for this agent to name the new leader");
  const look = async () => {
    const leader = await leaderFrom("");
    const stale = leader && new URL(leader).origin === from && Date.now() - started < SKIP_FROM_MS;
    if (leader && !stale) return location.replace(new URL(path, leader).href);
    setTimeout(look, SEEK_MS);
  };
  look();
}
