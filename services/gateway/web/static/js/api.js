// The public API from the same origin, and the session. The token is kept in this module's memory
// only (no localStorage, no cookie): a reload of the page logs out, and no other site can make the
// browser send it (no CSRF surface).

export const API = "/api/v1";

let session = null; // {token, userId, role, name}
const listeners = new Set();

export function currentSession() {
  return session;
}

export function onSessionChange(listener) {
  listeners.add(listener);
}

function setSession(value) {
  session = value;
  for (const listener of listeners) listener(session);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code || "http_" + status;
    this.problem = problem;
  }
}

function claimsOf(token) {
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
}

export async function request(method, path, { json, form, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json" }, signal };
  if (session) init.headers.Authorization = `Bearer ${session.token}`;
  Object.assign(init.headers, headers);
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = new URLSearchParams(form);
  }
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { detail: text };
    }
  }
  if (!response.ok) {
    if (response.status === 401 && session && !path.startsWith("auth/")) {
      setSession(null); // expired or revoked: ask to log in again
    }
    throw new ApiError(response.status, body);
  }
  return body;
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, json, options = {}) => request("POST", path, { ...options, json });
export const put = (path, json, options = {}) => request("PUT", path, { ...options, json });

export async function logIn(username, password, displayName = null) {
  const answer = await request("POST", "auth/token", { form: { username, password } });
  const claims = claimsOf(answer.access_token);
  let name = displayName || username;
  if (!displayName) {
    try {
      const headers = { Authorization: `Bearer ${answer.access_token}` };
      name = (await request("GET", `users/${claims.sub}`, { headers })).username;
    } catch {
      // the name is only for display
    }
  }
  // Set once: every change of the session redraws the page, which would lose what is being typed.
  setSession({ token: answer.access_token, userId: claims.sub, role: claims.role, name });
  return session;
}

export async function signUp(email, username, password) {
  await request("POST", "users", { json: { email, username, password } });
  return logIn(email, password, username);
}

export function logOut() {
  setSession(null);
}

// Every page of a paginated listing, up to `max` items.
export async function allPages(path, max = 500) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

export function money(cents, currency = "USD") {
  if (cents === null || cents === undefined) return "—";
  return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "USD" }).format(cents / 100);
}
