// The job page. Recent jobs come from GET /v1/jobs (re-read every few seconds to find new ones);
// a running job's row is then changed only by its SSE stream (GET /v1/jobs/{id}/events, one
// `job` event per KV revision), so progress shows as it happens. Rows carry what tests look at:
// data-status, data-via ("list" or "sse": what last changed the row), data-final-via (what brought
// it to its final status) and data-events (SSE events received).
"use strict";

const API = new URL("v1/", document.baseURI);
const TOKEN_KEY = "jetmedia.token";
const FINAL = new Set(["ready", "failed", "cancelled", "expired"]);
const LIST_EVERY_MS = 4000;
// Browsers allow 6 HTTP/1.1 connections per host; each EventSource holds one. Keep 2 for fetches:
// jobs beyond the cap wait for a free stream (the list keeps them current meanwhile).
const MAX_STREAMS = 4;
const RETRY_STREAM_MS = 15000;

const $ = (id) => document.getElementById(id);
const rows = new Map(); // job id -> <tr>
const streams = new Map(); // job id -> EventSource
const streamBackoff = new Map(); // job id -> time before which a refused stream is not reopened
let token = null;
let listTimer = null;

// --- token ------------------------------------------------------------------------------------

function takeToken() {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    localStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete("token"); // out of the address bar and history
    history.replaceState(null, "", url);
  }
  return localStorage.getItem(TOKEN_KEY);
}

function askToken(why) {
  stopAll();
  $("app").hidden = true;
  $("token-change").hidden = true;
  $("token-form").hidden = false;
  if (why) say(why, true);
  $("token-input").focus();
}

function start() {
  $("token-form").hidden = true;
  $("app").hidden = false;
  $("token-change").hidden = false;
  refresh();
  listTimer = setInterval(() => { if (!document.hidden) refresh(); }, LIST_EVERY_MS);
}

function stopAll() {
  clearInterval(listTimer);
  for (const id of [...streams.keys()]) closeStream(id);
}

// --- API --------------------------------------------------------------------------------------

class Problem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Authorization: `Bearer ${token}`, ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(new URL(path, API), init);
  const type = resp.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await resp.json() : null; // problem+json too
  if (resp.status === 401) {
    askToken(`Token refused: ${(data && (data.detail || data.title)) || "401"}`);
  }
  if (!resp.ok) throw new Problem(resp.status, data);
  return data;
}

function jobPath(id) {
  return `jobs/${encodeURIComponent(id)}`;
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

// --- the list ---------------------------------------------------------------------------------

async function refresh() {
  let page;
  try {
    page = await api("jobs?limit=50");
  } catch (err) {
    if (err.status !== 401) say(`Could not list jobs: ${err.message}`, true);
    return;
  }
  $("dead-letters").querySelector("b").textContent = String(page.dead_letters ?? "–");
  $("dead-letters").classList.toggle("alarm", (page.dead_letters || 0) > 0);
  $("updated").textContent = `as of ${new Date().toLocaleTimeString()}`;
  const body = $("jobs").tBodies[0];
  page.jobs.forEach((view, index) => {
    if (!streams.has(view.id)) render(view, "list");
    const row = rows.get(view.id);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null); // newest first
  });
  $("empty").hidden = rows.size > 0;
  follow();
}

function follow() {
  // open streams for running jobs, newest first, up to the cap
  const now = Date.now();
  for (const row of $("jobs").tBodies[0].rows) {
    if (streams.size >= MAX_STREAMS) break;
    const id = row.dataset.jobId;
    if (FINAL.has(row.dataset.status) || streams.has(id) || (streamBackoff.get(id) || 0) > now) continue;
    openStream(id);
  }
  $("live").querySelector("b").textContent = String(streams.size);
}

// --- live progress ----------------------------------------------------------------------------

function openStream(id) {
  const url = new URL(`${jobPath(id)}/events`, API);
  url.searchParams.set("access_token", token); // EventSource cannot send headers
  const source = new EventSource(url);
  streams.set(id, source);
  source.addEventListener("job", (event) => {
    const view = JSON.parse(event.data);
    render(view, "sse");
    if (FINAL.has(view.status)) closeStream(id); // the server ends the stream after this one too
  });
  source.onerror = () => {
    // CONNECTING: the browser reconnects by itself with Last-Event-ID. CLOSED: refused (401, 404)
    if (source.readyState === EventSource.CLOSED) {
      closeStream(id);
      streamBackoff.set(id, Date.now() + RETRY_STREAM_MS);
    }
  };
  $("live").querySelector("b").textContent = String(streams.size);
}

function closeStream(id) {
  const source = streams.get(id);
  if (source) source.close();
  streams.delete(id);
  $("live").querySelector("b").textContent = String(streams.size);
  setTimeout(follow, 0); // a slot is free for the next running job
}

// --- rendering --------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function render(view, via) {
  let row = rows.get(view.id);
  // what the page shows (not `updated`: bookkeeping revisions after the end change nothing here)
  const signature = [view.status, view.stage, view.percent, view.error, (view.outputs || []).length,
    Boolean(view.download_url)].join("|");
  if (row && Date.parse(view.updated) < Number(row.dataset.updated)) return; // a list read before an SSE event
  if (row) {
    row.dataset.via = via;
    if (via === "sse") row.dataset.events = String(Number(row.dataset.events) + 1);
    if (row.dataset.signature === signature) return; // nothing visible changed
  } else {
    row = el("tr");
    row.dataset.jobId = view.id;
    row.dataset.events = via === "sse" ? "1" : "0";
    row.dataset.via = via;
    for (let i = 0; i < 6; i++) row.append(el("td"));
    rows.set(view.id, row);
    $("jobs").tBodies[0].prepend(row);
    $("empty").hidden = true;
  }
  row.dataset.signature = signature;
  row.dataset.updated = String(Date.parse(view.updated));
  if (FINAL.has(view.status) && !FINAL.has(row.dataset.status)) row.dataset.finalVia = via; // how it ended here
  row.dataset.status = view.status;
  row.className = `status-${view.status}`;
  const [idCell, kindCell, statusCell, progressCell, resultCell, actionCell] = row.cells;

  idCell.replaceChildren(el("code", { textContent: view.id }),
    el("small", { textContent: view.created ? new Date(view.created).toLocaleString() : "" }));
  kindCell.textContent = view.media ? `${view.kind} · ${view.media}` : view.kind;
  statusCell.replaceChildren(el("span", { className: "badge", textContent: view.status }));
  if (view.status === "running" && view.stage) statusCell.append(el("small", { textContent: view.stage }));
  progressCell.replaceChildren(...progress(view));
  result(resultCell, view);
  actionCell.replaceChildren(...actions(view));
}

function progress(view) {
  const bar = el("progress", { max: 100 });
  let label = "";
  if (view.status === "ready") {
    bar.value = 100;
    label = "100 %";
  } else if (FINAL.has(view.status)) {
    return []; // failed, cancelled, expired: the result column says it
  } else if (typeof view.percent === "number") {
    bar.value = view.percent;
    label = `${view.percent.toFixed(0)} %`;
  } // else: no value = an indeterminate bar
  return [bar, el("span", { className: "percent", textContent: label })];
}

function result(cell, view) {
  if (view.status === "failed" || (view.error && view.status !== "ready")) {
    cell.replaceChildren(el("span", { className: "error", textContent: view.error || "failed" }));
    return;
  }
  if (view.status !== "ready") {
    cell.replaceChildren();
    return;
  }
  const parts = [];
  if (view.download_url) {
    parts.push(el("a", { className: "download", href: view.download_url, textContent: "download", download: "" }));
  }
  const outputs = view.outputs || [];
  const thumb = thumbnail(outputs);
  if (thumb) {
    const old = cell.querySelector("img.thumb");
    const img = old && old.dataset.key === thumb.key ? old : el("img", { className: "thumb", alt: view.id, src: thumb.url, loading: "lazy" });
    img.dataset.key = thumb.key;
    const largest = outputs.filter(isImage).sort((a, b) => (b.width || 0) - (a.width || 0))[0];
    parts.push(el("a", { href: (largest || thumb).url, target: "_blank", rel: "noopener" }, img));
  }
  const shown = view.kind === "export" && outputs.length < 2 ? [] : outputs; // one archive: the download link
  const links = shown.filter((o) => o.url && o !== thumb).map((o) =>
    el("a", { href: o.url, textContent: o.name || o.key, target: "_blank", rel: "noopener" }));
  if (links.length) parts.push(el("span", { className: "outputs" }, ...links.flatMap((a) => [a, " "])));
  cell.replaceChildren(...parts);
}

function isImage(output) {
  return output.url && (output.content_type || "").startsWith("image/");
}

function thumbnail(outputs) {
  // the 400 px variant (`thumb`), else the smallest image there is
  const images = outputs.filter(isImage);
  return images.find((o) => o.name === "thumb")
    || images.sort((a, b) => (a.width || 1e9) - (b.width || 1e9))[0] || null;
}

function actions(view) {
  if (view.status === "running" || view.status === "queued") {
    return [button("cancel", () => api(jobPath(view.id), { method: "DELETE" }), `cancel asked for ${view.id}`)];
  }
  if (view.status === "failed" || view.status === "cancelled") {
    return [button("retry", () => api(`${jobPath(view.id)}/retry`, { method: "POST" }), `${view.id} runs again`)];
  }
  return [];
}

function button(label, act, done) {
  return el("button", {
    type: "button",
    textContent: label,
    onclick: async () => {
      try {
        await act();
        say(done);
        refresh();
      } catch (err) {
        say(`${label}: ${err.message}`, true);
      }
    },
  });
}

function say(text, error = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", error);
}

// --- submitting -------------------------------------------------------------------------------

async function submitted(accepted) {
  say(`job ${accepted.job_id} accepted`);
  await refresh();
}

async function uploadFile(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const contentType = file.type || "application/octet-stream";
  try {
    say(`uploading ${file.name}…`);
    const target = await api("uploads", { method: "POST", body: { filename: file.name, content_type: contentType } });
    const put = await fetch(target.url, {
      method: target.method || "PUT", body: file, headers: target.headers || { "Content-Type": contentType },
    });
    if (!put.ok) throw new Error(`upload refused by S3: HTTP ${put.status}`);
    await submitted(await api("assets", {
      method: "POST", body: { key: target.key }, headers: { "Idempotency-Key": newId() },
    }));
    $("upload-form").reset();
  } catch (err) {
    say(`upload: ${err.message}`, true);
  }
}

async function requestExport(event) {
  event.preventDefault();
  const keys = $("export-keys").value.split("\n").map((k) => k.trim()).filter(Boolean);
  const prefix = $("export-prefix").value.trim();
  const name = $("export-name").value.trim();
  const body = { keys };
  if (prefix) body.prefix = prefix;
  if (name) body.name = name;
  if (!keys.length && !prefix) {
    say("export: give keys or a prefix", true);
    return;
  }
  try {
    await submitted(await api("exports", { method: "POST", body, headers: { "Idempotency-Key": newId() } }));
    $("export-form").reset();
  } catch (err) {
    say(`export: ${err.message}`, true);
  }
}

// --- wiring -----------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  say("");
  start();
});
$("token-change").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  token = null;
  askToken();
});
$("upload-form").addEventListener("submit", uploadFile);
$("export-form").addEventListener("submit", requestExport);
document.addEventListener("visibilitychange", () => { if (!document.hidden && token) refresh(); });

token = takeToken();
if (token) start(); else askToken();
