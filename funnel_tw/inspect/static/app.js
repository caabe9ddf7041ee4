// The inspector page: a live list of captured requests, their details, replay and curl.
// Captured bytes are only ever shown as text (textContent), never parsed as markup.
"use strict";

const API = "/api/requests/http";
const entries = new Map(); // id -> summary, as the API and the live events give it
let selected = null; // the detail shown: a full entry

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function pathOf(uri) {
  return uri.split("?")[0];
}

function duration(ns, done) {
  if (!done) return "…";
  const ms = ns / 1e6;
  return ms < 10 ? ms.toFixed(2) + " ms" : ms < 1000 ? ms.toFixed(0) + " ms" : (ms / 1000).toFixed(2) + " s";
}

function clock(start) {
  const d = new Date(start);
  return isNaN(d) ? start : d.toLocaleTimeString();
}

// --- filters ------------------------------------------------------------------------------

function matches(e) {
  const path = $("f-path").value.trim();
  const status = $("f-status").value.trim().toLowerCase();
  const method = $("f-method").value;
  if (path && !e.request.uri.includes(path)) return false;
  if (method && e.request.method !== method) return false;
  if (status) {
    const code = e.response ? String(e.response.status_code) : "";
    const wanted = status.replace(/x+$/, "");
    if (!code.startsWith(wanted)) return false;
  }
  return true;
}

// --- the list -----------------------------------------------------------------------------

function row(e) {
  const tr = document.createElement("tr");
  tr.dataset.id = e.id;
  const code = e.response ? e.response.status_code : null;
  const status = e.error ? (code ? code + " (lost)" : "lost") : code === null ? "…" : code;
  const cells = [
    clock(e.start),
    e.client,
    e.request.method,
    e.request.uri,
    status,
    duration(e.duration, e.response !== null || e.error),
    e.mount,
    (e.funnel ? "funnel" : "tailnet") + (e.replay_of ? " (replay)" : ""),
    e.user,
  ];
  cells.forEach((text, i) => {
    const td = el("td", text, i === 3 ? "path" : "");
    if (i === 3) td.title = text;
    if (i === 4) td.className = e.error ? "err" : code ? "s" + String(code)[0] : "";
    tr.appendChild(td);
  });
  if (selected && selected.id === e.id) tr.classList.add("selected");
  if (e.replay_of) tr.classList.add("replay");
  tr.addEventListener("click", () => select(e.id));
  return tr;
}

function redraw() {
  const body = $("list").tBodies[0];
  body.replaceChildren();
  let shown = 0;
  for (const e of [...entries.values()].reverse()) {
    if (!matches(e)) continue;
    body.appendChild(row(e));
    shown++;
  }
  $("empty").hidden = entries.size > 0;
  if (entries.size > 0 && shown === 0) {
    $("empty").hidden = false;
    $("empty").textContent = "No request matches the filters.";
  } else {
    $("empty").textContent = "No requests yet. They appear here as they arrive.";
  }
}

async function load() {
  const answer = await fetch(API + "?summary=1");
  const data = await answer.json();
  entries.clear();
  for (const e of data.requests.reverse()) entries.set(e.id, e);
  redraw();
}

function live() {
  const source = new EventSource("/api/events");
  source.onopen = () => {
    $("live").textContent = "live";
    $("live").className = "badge";
    load();
  };
  source.onerror = () => {
    $("live").textContent = "reconnecting";
    $("live").className = "badge off";
  };
  const upsert = (event) => {
    const e = JSON.parse(event.data);
    entries.delete(e.id);
    entries.set(e.id, e);
    redraw();
    if (selected && selected.id === e.id && event.type === "finished") select(e.id);
  };
  source.addEventListener("started", upsert);
  source.addEventListener("finished", upsert);
  source.addEventListener("cleared", () => {
    entries.clear();
    redraw();
  });
  source.addEventListener("resync", load);
}

// --- details ------------------------------------------------------------------------------

function bytesOf(b64) {
  const text = atob(b64 || "");
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

function headerOf(headers, name) {
  for (const key of Object.keys(headers || {})) {
    if (key.toLowerCase() === name) return headers[key][0];
  }
  return "";
}

function hexdump(data) {
  const lines = [];
  const shown = Math.min(data.length, 4096);
  for (let i = 0; i < shown; i += 16) {
    const chunk = data.slice(i, Math.min(i + 16, shown));
    const hex = [...chunk].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...chunk].map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(i.toString(16).padStart(8, "0") + "  " + hex.padEnd(48) + "  " + ascii);
  }
  if (shown < data.length) lines.push("… " + (data.length - shown) + " more bytes");
  return lines.join("\n");
}

function bodyView(part, headers) {
  const box = document.createDocumentFragment();
  if (!part || !part.body || part.body.size === 0) {
    box.appendChild(el("p", "no body", "note"));
    return box;
  }
  const body = part.body;
  const data = bytesOf(body.data);
  const type = headerOf(headers, "content-type").toLowerCase();
  let text = null;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(data);
    if (/[\x00-\x08\x0e-\x1f]/.test(text)) text = null;
  } catch (err) {
    text = null;
  }
  let note = body.size + " bytes";
  if (body.truncated) note = "showing the first " + body.captured + " of " + body.size + " bytes (truncated at inspect-body-limit)";
  if (text !== null && type.includes("json")) {
    try {
      text = JSON.stringify(JSON.parse(text), null, 2);
      note += ", JSON";
    } catch (err) {
      note += body.truncated ? ", JSON (cut short)" : ", not valid JSON: " + err.message;
    }
  }
  if (text !== null && type.startsWith("application/x-www-form-urlencoded")) {
    const table = el("table", null, "headers");
    for (const [k, v] of new URLSearchParams(text)) {
      const tr = table.insertRow();
      tr.appendChild(el("td", k));
      tr.appendChild(el("td", v));
    }
    box.appendChild(el("p", note + ", form fields", "note"));
    box.appendChild(table);
    return box;
  }
  box.appendChild(el("p", text === null ? note + ", binary (hex)" : note, "note"));
  box.appendChild(el("pre", text === null ? hexdump(data) : text));
  return box;
}

function headersTable(table, headers) {
  table.replaceChildren();
  for (const name of Object.keys(headers || {})) {
    for (const value of headers[name]) {
      const tr = table.insertRow();
      tr.appendChild(el("td", name));
      tr.appendChild(el("td", value));
    }
  }
}

function show(e) {
  selected = e;
  $("detail").hidden = false;
  $("d-title").textContent = e.request.method + " " + e.request.uri;
  const summary = $("d-summary");
  summary.replaceChildren();
  const facts = [
    ["id", e.id],
    ["start", e.start],
    ["client", e.client + (e.funnel ? " (funnel)" : " (tailnet)")],
    ["site", e.host + ":" + e.port],
    ["mount", e.mount],
    ["user", e.user || "—"],
    ["status", e.response ? e.response.status : e.error || "waiting"],
    ["duration", duration(e.duration, e.response !== null || e.error)],
  ];
  if (e.replay_of) facts.push(["replay of", e.replay_of]);
  if (e.error) facts.push(["error", e.error]);
  for (const [k, v] of facts) {
    summary.appendChild(el("dt", k));
    summary.appendChild(el("dd", v));
  }
  const query = e.request.uri.includes("?") ? e.request.uri.split("?").slice(1).join("?") : "";
  const q = $("d-query");
  q.replaceChildren();
  if (query) {
    q.appendChild(el("p", "query", "note"));
    const table = el("table", null, "headers");
    for (const [k, v] of new URLSearchParams(query)) {
      const tr = table.insertRow();
      tr.appendChild(el("td", k));
      tr.appendChild(el("td", v));
    }
    q.appendChild(table);
  }
  headersTable($("d-req-headers"), e.request.headers);
  $("d-req-body").replaceChildren(bodyView(e.request, e.request.headers));
  headersTable($("d-resp-headers"), e.response ? e.response.headers : {});
  $("d-resp-body").replaceChildren(e.response ? bodyView(e.response, e.response.headers) : el("p", "no response yet", "note"));
  $("replay").disabled = !e.replayable;
  $("replay").title = e.replayable ? "send it to the backend again" : "its body was truncated, or it is an upgrade";
  for (const tr of $("list").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === e.id);
}

async function select(id) {
  const answer = await fetch(API + "/" + encodeURIComponent(id));
  if (!answer.ok) return;
  show(await answer.json());
}

// --- replay and curl ----------------------------------------------------------------------

async function replay(raw) {
  const message = $("d-message");
  message.textContent = "replaying…";
  const payload = { id: selected.id };
  if (raw !== undefined) payload.raw = raw;
  const answer = await fetch(API, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
  if (answer.status === 204) {
    message.textContent = "replayed: the new request is at the top of the list";
  } else {
    const data = await answer.json().catch(() => ({}));
    message.textContent = "not replayed: " + (data.error || answer.status);
  }
}

function rawText(e) {
  const data = bytesOf(e.request.raw);
  return new TextDecoder("utf-8").decode(data);
}

function toBase64(text) {
  const data = new TextEncoder().encode(text);
  let binary = "";
  for (const b of data) binary += String.fromCharCode(b);
  return btoa(binary);
}

function quote(s) {
  return "'" + String(s).replace(/'/g, "'\\''") + "'";
}

function curlOf(e) {
  const port = e.port === 443 ? "" : ":" + e.port;
  const parts = ["curl", "-X", e.request.method, quote("https://" + e.host + port + e.request.uri)];
  const skip = new Set(["host", "content-length", "connection", "transfer-encoding"]);
  for (const name of Object.keys(e.request.headers)) {
    if (skip.has(name.toLowerCase())) continue;
    for (const value of e.request.headers[name]) parts.push("-H", quote(name + ": " + value));
  }
  if (e.request.body && e.request.body.size > 0) {
    const data = bytesOf(e.request.body.data);
    let text = null;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(data);
    } catch (err) {
      text = null;
    }
    if (text === null) parts.push("--data-binary", "@body.bin");
    else parts.push("--data-binary", quote(text));
  }
  return parts.join(" ");
}

async function copyCurl() {
  const command = curlOf(selected);
  const box = $("curl-text");
  box.value = command;
  box.hidden = false;
  box.select();
  try {
    await navigator.clipboard.writeText(command);
    $("d-message").textContent = "curl command copied";
  } catch (err) {
    $("d-message").textContent = "select the command below and copy it";
  }
}

function init() {
  for (const id of ["f-path", "f-status", "f-method"]) $(id).addEventListener("input", redraw);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("clear").addEventListener("click", async () => {
    await fetch(API, { method: "DELETE" });
    $("detail").hidden = true;
    selected = null;
  });
  $("replay").addEventListener("click", () => replay());
  $("edit").addEventListener("click", () => {
    $("editor").hidden = false;
    $("edit-text").value = rawText(selected);
  });
  $("edit-cancel").addEventListener("click", () => {
    $("editor").hidden = true;
  });
  $("edit-send").addEventListener("click", () => {
    replay(toBase64($("edit-text").value));
    $("editor").hidden = true;
  });
  $("curl").addEventListener("click", copyCurl);
  live();
}

document.addEventListener("DOMContentLoaded", init);
