// The dashboard: the same management API a script calls, with the management key kept
// in this tab's sessionStorage (never a cookie or a URL). No library: the DOM API is enough.
"use strict";

const STORAGE = "keyservice.managementKey";
const $ = (id) => document.getElementById(id);
let cursor = null;

function managementKey() { return sessionStorage.getItem(STORAGE); }

// Paths are the API's ("/keys..."), called relative to this page: under the prefix a host app
// mounted keyservice at, if any (the page is <prefix>/dashboard).
async function api(method, path, body) {
  const response = await fetch(`.${path}`, {
    method,
    headers: { "Authorization": `Bearer ${managementKey()}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(describe(status, problem || {}));
    this.status = status;
  }
}

function describe(status, problem) {
  if (status === 401) return `Your management key was refused (${problem.code || "unauthorized"}): sign in again with a valid key.`;
  if (status === 403) return "Your management key lacks the scope this needs (keys:write to create, rotate or revoke).";
  if (status === 404) return "That key does not exist, or belongs to another client.";
  if (status === 422 && problem.errors) {
    const fields = Object.values(problem.errors).flatMap((location) => fieldErrors(location, []));
    return `Please check: ${fields.join("; ")}`;
  }
  return problem.detail || `The request failed (${status}).`;
}

// A 422's errors, by where the input came from, nest by field and list position:
// {"scopes": {"0": ["Must be ..."]}} reads "scopes 1: Must be ...".
function fieldErrors(messages, path) {
  if (Array.isArray(messages) && messages.every((m) => typeof m === "string")) {
    return [`${fieldLabel(path)}${messages.join(" ")}`];
  }
  if (messages !== null && typeof messages === "object") {
    return Object.entries(messages).flatMap(([name, inner]) => fieldErrors(inner, [...path, name]));
  }
  return [`${fieldLabel(path)}${messages}`];
}

function fieldLabel(path) {
  const words = path.filter((step) => step !== "_schema")
    .map((step) => (/^\d+$/.test(step) ? String(Number(step) + 1) : step));
  return words.length ? `${words.join(" ")}: ` : "";
}

function showError(error) {
  $("error").textContent = error.message;
  $("error").hidden = false;
  if (error.status === 401) signOut(false);
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

const COLUMNS = ["Name", "Id", "Client", "Status", "Last used"];

function cell(text, label) {
  const td = document.createElement("td");
  td.textContent = text;
  td.dataset.label = label;  // shown before the value where the table is laid out as cards
  return td;
}

function button(label, title, onClick) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.title = title; b.addEventListener("click", onClick);
  return b;
}

function row(key) {
  const tr = document.createElement("tr");
  tr.dataset.name = key.name.toLowerCase();
  tr.dataset.id = key.id;
  const when = key.last_used_at ? new Date(key.last_used_at).toLocaleString() : "never";
  [key.name, key.id, key.external_client_id, key.status, when].forEach((text, n) => tr.append(cell(text, COLUMNS[n])));
  const actions = document.createElement("td");
  actions.append(button("Usage", `Usage of ${key.name}`, () => showUsage(key)));
  if (!key.revoked_at) {
    actions.append(button("Rotate", `Rotate ${key.name}`, () => rotate(key)));
    actions.append(button("Revoke", `Revoke ${key.name}`, () => revoke(key)));
  }
  tr.append(actions);
  return tr;
}

// Each listing's number: an older listing's answer that arrives after a newer one was asked for
// (the filter changed meanwhile) is dropped, so the table shows what the filters now say.
let keysListing = 0;

async function loadKeys(more = false) {
  const listing = ++keysListing;
  clearError();
  const params = new URLSearchParams({ limit: "50" });
  const client = $("client-filter").value.trim();
  if (client) params.set("external_client_id", client);
  if ($("include-revoked").checked) params.set("include_revoked", "true");
  if (more && cursor) params.set("cursor", cursor);
  try {
    const page = await api("GET", `/keys?${params}`);
    if (listing !== keysListing) return;
    const body = $("keys").tBodies[0];
    if (!more) body.replaceChildren();
    page.items.forEach((key) => body.append(row(key)));
    cursor = page.next_cursor;
    $("more").hidden = !cursor;
    applySearch();
  } catch (error) { showError(error); }
}

// The client filtered by, as a customer: its identity's shared limits and its keys' use (7 days).
let identityShown = 0;

function limitRow(limit) {
  const tr = document.createElement("tr");
  const rate = limit.period !== undefined;
  const now = rate
    ? `${limit.limit} per ${limit.period} s`
    : `${limit.remaining} left` + (limit.refill ? `, ${limit.refill.amount} ${limit.refill.interval}` : "")
      + (limit.low_threshold ? `, alert below ${limit.low_threshold}` : "");
  tr.append(
    cell(limit.name, "Shared limit"),
    cell(rate ? "rate limit" : "credits", "Kind"),
    cell(now, "Now"),
    cell(limit.auto_apply ? "every check" : "when named", "Counted"),
  );
  return tr;
}

async function loadIdentity() {
  const shown = ++identityShown;
  const client = $("client-filter").value.trim();
  $("identity").hidden = !client;
  if (!client) return;
  try {
    const [identity] = (await api("GET", `/identities?external_client_id=${encodeURIComponent(client)}`)).items;
    if (shown !== identityShown) return;
    $("identity-title").textContent = `Customer ${client}`;
    $("no-identity").hidden = Boolean(identity);
    $("identity-limits").hidden = !identity || !identity.limits.length;
    $("identity-limits").tBodies[0].replaceChildren(...(identity ? identity.limits.map(limitRow) : []));
    $("identity-chart").replaceChildren();
    if (!identity) return;
    const since = new Date(Date.now() - 7 * 24 * 3600 * 1000).toISOString();
    const path = `/identities/${encodeURIComponent(identity.id)}/usage?granularity=day&since=${encodeURIComponent(since)}`;
    const usage = await api("GET", path);
    if (shown === identityShown) $("identity-chart").replaceChildren(chart(usage.items));
  } catch (error) { if (shown === identityShown) showError(error); }
}

function applySearch() {
  const wanted = $("search").value.trim().toLowerCase();
  let shown = 0;
  for (const tr of $("keys").tBodies[0].rows) {
    tr.hidden = wanted !== "" && !tr.dataset.name.includes(wanted);
    if (!tr.hidden) shown += 1;
  }
  $("empty").hidden = shown > 0;
}

// How to trade the key for an access token: the key id filled in, the key itself left as $KEY.
function tokenCommand(key) {
  const endpoint = new URL("oauth/token", location.href.replace(/dashboard.*$/, ""));
  return `curl -u ${key.split("_")[1]}:$KEY -d grant_type=client_credentials ${endpoint}`;
}

function showNewKey(key) {
  $("new-key-value").textContent = key;
  $("token-command").textContent = tokenCommand(key);
  $("new-key").hidden = false;
  $("copy-key").focus();
}

async function create(event) {
  event.preventDefault();
  clearError();
  const scopes = $("create-scopes").value.split(/[\s,]+/).filter(Boolean);
  try {
    const created = await api("POST", "/keys", {
      name: $("create-name").value, external_client_id: $("create-client").value, scopes });
    $("create").reset();
    showNewKey(created.key);
    await loadKeys();
  } catch (error) { showError(error); }
}

async function rotate(key) {
  if (!confirm(`Rotate "${key.name}"? The old key stops working at once.`)) return;
  clearError();
  try {
    const rotated = await api("POST", `/keys/${encodeURIComponent(key.id)}/rotate`, {});
    showNewKey(rotated.key);
    await loadKeys();
  } catch (error) { showError(error); }
}

async function revoke(key) {
  if (!confirm(`Revoke "${key.name}"? Every request with it is refused within a second. This cannot be undone.`)) return;
  clearError();
  try {
    await api("DELETE", `/keys/${encodeURIComponent(key.id)}`);
    await loadKeys();
  } catch (error) { showError(error); }
}

async function showUsage(key) {
  clearError();
  const since = new Date(Date.now() - 7 * 24 * 3600 * 1000).toISOString();
  try {
    const usage = await api("GET", `/keys/${encodeURIComponent(key.id)}/usage?granularity=day&since=${encodeURIComponent(since)}`);
    $("usage-title").textContent = `Usage of ${key.name}, last 7 days`;
    $("usage-chart").replaceChildren(chart(usage.items));
    $("usage").hidden = false;
  } catch (error) { showError(error); }
}

function chart(items) {
  // One bar a day, as tall as its verifications; each bar's label says the counts.
  const days = [];
  for (let n = 6; n >= 0; n -= 1) {
    const day = new Date(Date.now() - n * 24 * 3600 * 1000).toISOString().slice(0, 10);
    const item = items.find((i) => i.start.slice(0, 10) === day);
    days.push({ day, total: item ? item.total : 0, counts: item ? item.counts : {} });
  }
  const most = Math.max(1, ...days.map((d) => d.total));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 700 240");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", days.map((d) => `${d.day}: ${d.total}`).join(", "));
  days.forEach((d, i) => {
    const height = Math.round((d.total / most) * 180);
    const bar = document.createElementNS(svg.namespaceURI, "rect");
    Object.entries({ x: i * 100 + 20, y: 200 - height, width: 60, height, class: "bar" })
      .forEach(([name, value]) => bar.setAttribute(name, value));
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `${d.day}: ${Object.entries(d.counts).map(([c, n]) => `${c} ${n}`).join(", ") || "none"}`;
    bar.append(title);
    const label = document.createElementNS(svg.namespaceURI, "text");
    Object.entries({ x: i * 100 + 50, y: 225, "text-anchor": "middle" }).forEach(([n, v]) => label.setAttribute(n, v));
    label.textContent = `${d.day.slice(5)} (${d.total})`;
    svg.append(bar, label);
  });
  return svg;
}

// The operator's view of webhooks: every endpoint and its recent deliveries. A client's
// manager sees its own client's endpoints; a key without keys:read sees none (403: hidden).
async function loadEndpoints() {
  let endpoints;
  try { endpoints = (await api("GET", "/webhooks")).items; } catch (error) { $("webhooks").hidden = true; return; }
  const body = $("endpoints").tBodies[0];
  body.replaceChildren();
  const columns = ["URL", "Id", "Client", "Events"];
  endpoints.forEach((endpoint) => {
    const tr = document.createElement("tr");
    [endpoint.url, endpoint.id, endpoint.external_client_id || "every client", endpoint.events.join(" ") || "every event"]
      .forEach((text, n) => tr.append(cell(text, columns[n])));
    const actions = document.createElement("td");
    actions.append(button("Deliveries", `Deliveries to ${endpoint.url}`, () => showDeliveries(endpoint)));
    tr.append(actions);
    body.append(tr);
  });
  $("no-endpoints").hidden = endpoints.length > 0;
  $("webhooks").hidden = false;
}

async function showDeliveries(endpoint) {
  clearError();
  try {
    const deliveries = (await api("GET", `/webhooks/${encodeURIComponent(endpoint.id)}/deliveries`)).items;
    const columns = ["Event", "Key", "Status", "Attempts", "Last answer", "At"];
    $("deliveries").tBodies[0].replaceChildren(...deliveries.map((d) => {
      const tr = document.createElement("tr");
      [d.type, d.key_id || "", d.status, String(d.attempts), d.last_status ? `HTTP ${d.last_status}` : (d.last_error || ""),
        new Date(d.created_at).toLocaleString()].forEach((text, n) => tr.append(cell(text, columns[n])));
      return tr;
    }));
    $("deliveries-title").textContent = `Recent deliveries to ${endpoint.url}`;
    $("deliveries-title").hidden = false;
    $("deliveries").hidden = false;
  } catch (error) { showError(error); }
}

function signOut(clear = true) {
  sessionStorage.removeItem(STORAGE);
  $("keys").tBodies[0].replaceChildren();
  $("new-key").hidden = true;
  $("usage").hidden = true;
  $("identity").hidden = true;
  $("webhooks").hidden = true;
  $("deliveries").hidden = true;
  $("deliveries-title").hidden = true;
  $("signed-in").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  if (clear) clearError();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(STORAGE, $("management-key").value.trim());
  $("management-key").value = "";
  await start();
}

async function start() {
  if (!managementKey()) return;
  $("sign-in").hidden = true;
  $("signed-in").hidden = false;
  $("sign-out").hidden = false;
  await loadKeys();
  await loadEndpoints();
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("create").addEventListener("submit", create);
  $("search").addEventListener("input", applySearch);
  $("client-filter").addEventListener("change", () => { loadKeys(); loadIdentity(); });
  $("include-revoked").addEventListener("change", () => loadKeys());
  $("more").addEventListener("click", () => loadKeys(true));
  $("copy-key").addEventListener("click", () => navigator.clipboard.writeText($("new-key-value").textContent));
  $("dismiss-key").addEventListener("click", () => {
    $("new-key").hidden = true;
    $("new-key-value").textContent = "";
    $("token-command").textContent = "";
  });
  start();
});
