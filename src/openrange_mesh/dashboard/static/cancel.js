// Cancelling: the token (typed by the user, kept in sessionStorage for this tab), a
// confirmation dialog that says what will be cancelled and how many, and POST /api/cancel.

import {h, fill} from "./dom.js";
import {post} from "./api.js";

const TOKEN_KEY = "openrange-mesh.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  for (const input of document.querySelectorAll("input.token-input, #token")) if (input.value !== value) input.value = value;
}

function tokenField() {
  return h("input", {class: "token-input", type: "password", autocomplete: "off", value: token(),
    placeholder: "dashboard token", oninput: (e) => setToken(e.target.value)});
}

// Ask, then POST. `what` describes the episodes (elements or strings), `count` how many;
// `body` is {"ids": [...]} or {"filter": {...}}. Resolves to the server's answer, or null when
// the user kept them.
export function confirmCancel({what, count, body}) {
  const dialog = document.getElementById("confirm");
  const status = h("p", {class: "dialog-status", role: "alert"});
  const go = h("button", {type: "button", class: "danger", disabled: count === 0},
    count === 1 ? "Cancel 1 episode" : `Cancel ${count} episodes`);
  const keep = h("button", {type: "button"}, "Keep them");
  fill(dialog,
    h("h3", null, "Cancel episodes?"),
    h("div", {class: "dialog-what"}, what),
    h("p", null, count === 0 ? "Nothing pending or running matches: nothing to cancel."
      : `${count} pending or running episode${count === 1 ? "" : "s"} will be asked to stop; running ones end as cancelled once their host sees it.`),
    h("label", {class: "token"}, "token ", tokenField()),
    status,
    h("div", {class: "dialog-buttons"}, keep, go));
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.close();
      resolve(value);
    };
    keep.onclick = () => done(null);
    dialog.oncancel = () => resolve(null);
    go.onclick = async () => {
      go.disabled = true;
      status.textContent = "asking the server...";
      status.className = "dialog-status";
      try {
        done(await post("/api/cancel", body, token()));
      } catch (exc) {
        status.textContent = refusal(exc);
        status.className = "dialog-status bad";
        go.disabled = false;
      }
    };
    dialog.showModal();
  });
}

// 401: no token sent; 403: none configured (read-only) or a wrong one; the server's words first.
function refusal(exc) {
  const said = exc.message || "";
  const plus = (label) => (said && said.toLowerCase() !== label ? `${label} (the server says: ${said})` : label);
  if (exc.status === 401) return plus("token required: type the dashboard token");
  if (exc.status === 403) {
    if (/read-only|no token|not configured|disabled/i.test(said)) return plus("read-only dashboard: no token configured");
    if (/wrong|invalid|bad|mismatch/i.test(said)) return plus("wrong token");
    if (/origin/i.test(said)) return plus("refused: not a same-origin request");
    return plus("refused");
  }
  return said || `failed (${exc.status})`;
}

// What the server says it did, in one line.
export function cancelOutcome(answer) {
  if (answer && answer.outcomes && typeof answer.outcomes === "object") {
    const tally = {};
    for (const outcome of Object.values(answer.outcomes)) tally[outcome] = (tally[outcome] || 0) + 1;
    const parts = Object.entries(tally).map(([outcome, n]) => `${n} ${outcome}`);
    return `cancel: ${answer.count ?? 0} of ${Object.keys(answer.outcomes).length} taken (${parts.join(", ") || "none matched"})`;
  }
  if (answer && Array.isArray(answer.cancelled)) return `cancel asked for ${answer.cancelled.length} episode(s)`;
  if (answer && typeof answer.cancelled === "number") return `cancel asked for ${answer.cancelled} episode(s)`;
  return "cancel sent";
}
