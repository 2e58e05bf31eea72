// Gossamer dashboard, the Live tap view: streams GET /v1/tap (NDJSON) with fetch() and a stream
// reader (EventSource cannot send the Authorization header) into a table of the newest rows.
// Loaded before app.js, whose helpers ($, cell, state, ApiError) it uses when called.
"use strict";

const TAP_ROWS = 200; // rows kept on the page: the newest, so it never grows without bound
const TAP_MAX_LINE = 1 << 20; // a partial line longer than this is dropped, not buffered forever

const tap = {
  controller: null, // the running tap's AbortController, or null
  service: "",
  dropped: new Map(), // who dropped records ("" = the control plane) -> how many so far
};

function setTapState(text, error) {
  const el = $("#tap-state");
  el.textContent = text;
  el.classList.toggle("error", !!error);
  el.classList.toggle("muted", !error);
}

function tapRunning(running) {
  $("#tap-start").disabled = running;
  $("#tap-stop").disabled = !running;
  $("#tap").dataset.running = running ? "1" : "";
}

// The services the page knows (from the stats and the proxies), for the tap's picker.
function updateTapServices(services) {
  const select = $("#tap-service");
  const wanted = [...services].sort();
  const have = [...select.options].map((o) => o.value);
  if (wanted.join(" ") === have.join(" ")) return;
  const current = select.value;
  select.replaceChildren(...wanted.map((name) => new Option(name, name)));
  if (wanted.includes(current)) select.value = current;
  else if (wanted.includes("frontend.default")) select.value = "frontend.default";
}

function tapQuery() {
  const service = $("#tap-service").value;
  const dot = service.lastIndexOf(".");
  const q = new URLSearchParams();
  q.set("service", dot > 0 ? service.slice(0, dot) : service);
  if (dot > 0) q.set("namespace", service.slice(dot + 1));
  const filters = {
    path: $("#tap-path").value.trim(),
    method: $("#tap-method").value,
    status: $("#tap-status").value.trim(),
    direction: $("#tap-direction").value,
  };
  for (const [key, value] of Object.entries(filters)) if (value) q.set(key, value);
  return q;
}

// "spiffe://gossamer.local/ns/default/sa/pricing" -> "default/pricing" (the full ID in the title).
function shortIdentity(id) {
  const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/(.+)$/.exec(id || "");
  return m ? m[1] + "/" + m[2] : id || "?";
}

function fmtTime(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return iso || "–";
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function tapRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.status = String(r.status);
  tr.dataset.direction = r.direction || "";
  cell(tr, fmtTime(r.time), "mono");
  cell(tr, r.proxyId || "");
  cell(tr, r.direction === "inbound" ? "in" : r.direction === "outbound" ? "out" : r.direction || "");
  cell(tr, r.method || "–");
  const target = cell(tr, (r.authority || "") + (r.path || ""), "trunc");
  target.title = target.textContent;
  cell(tr, String(r.status), "num " + (r.status >= 500 || r.status === 0 ? "bad" : r.status >= 400 ? "warn" : "ok"));
  cell(tr, r.flags || "", r.flags ? "warn" : "");
  cell(tr, r.durationMs == null ? "–" : fmtMs(r.durationMs / 1000), "num");
  // Outbound: the destination is the upstream's verified identity, else the cluster it went to.
  const dst = r.destinationIdentity ? shortIdentity(r.destinationIdentity) : r.upstreamCluster || "?";
  const ids = cell(tr, (r.sourceIdentity ? shortIdentity(r.sourceIdentity) : "plaintext") + " → " + dst);
  ids.title = (r.sourceIdentity || "no verified source") + " → " + (r.destinationIdentity || r.upstreamCluster || "?");
  const trace = cell(tr, r.traceId || "", "mono trunc");
  trace.title = r.traceId || "";
  return tr;
}

function noteDropped(record) {
  tap.dropped.set(record.proxyId || "", record.tapDropped);
  const parts = [...tap.dropped].map(([who, n]) => n + (who ? " by proxy " + who : " by the control plane"));
  const note = $("#tap-notice");
  note.textContent = "records dropped so far (this page read more slowly than the traffic came): " + parts.join(", ");
  note.hidden = false;
}

// Put the records of one chunk on top of the table, newest first, and keep TAP_ROWS rows.
function showRecords(records) {
  const body = $("#tap tbody");
  const muted = body.querySelector("td.muted");
  if (muted) muted.parentElement.remove();
  const rows = records.slice(-TAP_ROWS).reverse().map(tapRow);
  body.prepend(...rows);
  while (body.rows.length > TAP_ROWS) body.lastElementChild.remove();
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: the status line will do */ }
  return resp.status + " " + resp.statusText;
}

async function tapStart() {
  tapStop();
  const service = $("#tap-service").value;
  if (!service || !state.token) return;
  const controller = new AbortController();
  tap.controller = controller;
  tap.service = service;
  tap.dropped.clear();
  $("#tap-notice").hidden = true;
  $("#tap tbody").replaceChildren();
  tapRunning(true);
  setTapState("connecting to the proxies of " + service + "…");
  let count = 0;
  try {
    const resp = await fetch("/v1/tap?" + tapQuery(), {
      headers: { authorization: "Bearer " + state.token },
      signal: controller.signal,
    });
    if (!resp.ok) {
      setTapState("cannot tap " + service + ": " + (await errorMessage(resp)), true);
      return;
    }
    setTapState("tapping " + service + " (waiting for requests)");
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const lines = (pending + value).split("\n");
      pending = lines.pop();
      if (pending.length > TAP_MAX_LINE) pending = "";
      const records = [];
      for (const line of lines) {
        if (!line.trim()) continue;
        let record;
        try {
          record = JSON.parse(line);
        } catch (_) {
          continue; // a line cut by a proxy that went away: skip it
        }
        if ("tapDropped" in record) noteDropped(record);
        else records.push(record);
      }
      if (records.length) {
        count += records.length;
        showRecords(records);
        setTapState("tapping " + service + " · " + count + " requests seen");
      }
    }
    setTapState("the control plane ended the tap of " + service + " after " + count + " requests", true);
  } catch (err) {
    if (err.name === "AbortError") setTapState("stopped after " + count + " requests");
    else setTapState("the tap of " + service + " failed: " + err.message, true);
  } finally {
    if (tap.controller === controller) {
      tap.controller = null;
      tapRunning(false);
    }
  }
}

function tapStop() {
  if (tap.controller) {
    tap.controller.abort();
    tap.controller = null;
  }
  tapRunning(false);
}

function initTap() {
  if (initTap.done) return;
  initTap.done = true;
  $("#tap-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    tapStart();
  });
  $("#tap-stop").addEventListener("click", tapStop);
  // Switching service while a tap runs restarts it on the new one.
  $("#tap-service").addEventListener("change", () => { if (tap.controller) tapStart(); });
}
