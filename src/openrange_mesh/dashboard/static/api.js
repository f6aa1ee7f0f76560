// The JSON API (design/dashboard.md): every answer is JSON, errors are {"error": "<one line>"}.
// A request that never got an answer (the server is gone, or a deposed leader redirected us to
// another origin that does not allow the read) is status 0, and tells the live part to check
// where the leader went.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let onLost = () => {};

export function whenUnreachable(callback) {
  onLost = callback;
}

async function request(path, init) {
  let response;
  try {
    response = await fetch(path, {...init, headers: {Accept: "application/json", ...(init?.headers || {})}});
  } catch (exc) {
    onLost();
    throw new ApiError(0, `the dashboard server did not answer (${exc.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const said = body && typeof body.error === "string" ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, said);
  }
  if (body === null) throw new ApiError(response.status, `${path}: the answer is not JSON`);
  return body;
}

export function get(path) {
  return request(path, {method: "GET"});
}

export function post(path, value, token) {
  const headers = {"Content-Type": "application/json"};
  if (token) headers.Authorization = `Bearer ${token}`;
  return request(path, {method: "POST", headers, body: JSON.stringify(value)});
}

export function enc(id) {
  return encodeURIComponent(id);
}
