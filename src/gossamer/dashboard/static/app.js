// Gossamer dashboard: polls the control plane's API with an operator token and draws the mesh.
"use strict";

const POLL_MS = 2000;
const RESOURCES_MS = 10000; // routes change rarely: re-read them less often than the stats
const HISTORY = 180; // points kept per service: 6 minutes at one poll every 2 s
const TOKEN_KEY = "gossamer.token";

const $ = (sel) => document.querySelector(sel);
const state = {
  token: null,
  history: new Map(), // service -> [{t, rps, success, p50, p95, p99}]
  selected: null, // a service name to chart alone, or null for all
  timer: null,
  charts: {},
  routes: null, // the HTTPRoutes as /v1/resources returns them, once read
  routesReadAt: 0,
};

// --- the token: from #token=... (then dropped from the URL), else this tab's sessionStorage ------

function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fromUrl = params.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    // Keep the secret out of the address bar, the history and screenshots.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showLogin(message) {
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  setStatus(message || "a token is needed", true);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const resp = await fetch(path, { headers: { authorization: "Bearer " + state.token } });
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(resp.status, path + ": " + message);
  }
  return resp.json();
}

// --- formatting -----------------------------------------------------------------------------------

const fmtRps = (v) => (v == null ? "–" : v.toFixed(v < 10 ? 2 : 1));
const fmtPct = (v) => (v == null ? "–" : (v * 100).toFixed(v === 1 ? 0 : 2) + "%");
const fmtMs = (s) => (s == null ? "–" : s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms" : s.toFixed(2) + " s");
const successClass = (v) => (v == null ? "" : v >= 0.99 ? "ok" : v >= 0.95 ? "warn" : "bad");

function fmtUntil(unixSeconds) {
  if (unixSeconds == null) return "–";
  const left = unixSeconds - Date.now() / 1000;
  if (left <= 0) return "expired";
  if (left < 3600) return "in " + Math.round(left / 60) + " min";
  if (left < 172800) return "in " + (left / 3600).toFixed(1) + " h";
  return "in " + Math.round(left / 86400) + " d";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillTable(selector, items, build) {
  const body = $(selector + " tbody");
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    build(tr, item);
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, "nothing yet");
    td.colSpan = $(selector + " thead tr").children.length;
    td.className = "muted";
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

// Tooltips drawn on the canvas: ECharts' HTML tooltips carry inline style attributes, which the
// page's Content-Security-Policy (style-src 'self') refuses.
const TOOLTIP = { renderMode: "richText" };

// --- views ----------------------------------------------------------------------------------------

function renderTopology(services, edges) {
  const names = new Set(services.map((s) => s.name));
  edges.forEach((e) => { names.add(e.source); names.add(e.destination); });
  const bySvc = new Map(services.map((s) => [s.name, s]));
  const nodes = [...names].sort().map((name) => {
    const s = bySvc.get(name);
    const sr = s ? s.successRate : null;
    return {
      name,
      value: s ? s.rps : 0,
      symbolSize: 46,
      itemStyle: { color: sr == null ? "#98a2b3" : sr >= 0.99 ? "#12b76a" : sr >= 0.95 ? "#f79009" : "#f04438" },
      label: { show: true, formatter: s ? name + "\n" + fmtRps(s.rps) + " rps" : name },
    };
  });
  const links = edges.map((e) => ({
    source: e.source,
    target: e.destination,
    value: e.rps,
    label: { show: true, formatter: fmtRps(e.rps) + " rps · " + fmtPct(e.successRate) },
    lineStyle: { width: 1 + Math.min(6, Math.log10(1 + e.rps) * 2), color: e.successRate != null && e.successRate < 0.95 ? "#f04438" : "#98a2b3" },
  }));
  const el = $("#topology");
  el.dataset.nodes = nodes.map((n) => n.name).join(" ");
  el.dataset.edges = edges.map((e) => e.source + ">" + e.destination).join(" ");
  state.charts.topology.setOption({
    animation: false,
    tooltip: TOOLTIP,
    series: [{
      type: "graph",
      layout: "circular",
      circular: { rotateLabel: false },
      roam: true,
      edgeSymbol: ["none", "arrow"],
      edgeSymbolSize: 10,
      autoCurveness: true, // a self-edge (a published port into its own service) gets a loop
      label: { position: "bottom" },
      edgeLabel: { fontSize: 11 },
      data: nodes,
      links,
    }],
  }, { replaceMerge: ["series"] });

  fillTable("#edges", edges, (tr, e) => {
    cell(tr, e.source);
    cell(tr, e.destination);
    cell(tr, fmtRps(e.rps), "num rps");
    cell(tr, fmtPct(e.successRate), "num " + successClass(e.successRate));
    cell(tr, fmtMs(e.p99), "num");
  });
}

function renderServices(services) {
  fillTable("#services", services, (tr, s) => {
    tr.dataset.service = s.name;
    if (s.name === state.selected) tr.classList.add("selected");
    cell(tr, s.name);
    cell(tr, fmtPct(s.successRate), "num " + successClass(s.successRate));
    cell(tr, fmtRps(s.rps), "num rps");
    cell(tr, fmtMs(s.p50), "num");
    cell(tr, fmtMs(s.p95), "num");
    cell(tr, fmtMs(s.p99), "num");
    tr.addEventListener("click", () => {
      state.selected = state.selected === s.name ? null : s.name;
      renderServices(services);
      renderCharts();
    });
  });
}

function record(services, t) {
  for (const s of services) {
    let points = state.history.get(s.name);
    if (!points) state.history.set(s.name, (points = []));
    points.push({ t, rps: s.rps, success: s.successRate, p99: s.p99 });
    if (points.length > HISTORY) points.splice(0, points.length - HISTORY);
  }
}

function lineChart(chart, title, field, axis) {
  const series = [];
  for (const [name, points] of [...state.history.entries()].sort()) {
    if (state.selected && name !== state.selected) continue;
    series.push({
      name, type: "line", showSymbol: false,
      data: points.map((p) => [p.t, p[field] == null ? null : axis.scale * p[field]]),
    });
  }
  chart.setOption({
    animation: false,
    title: { text: title, textStyle: { fontSize: 13 } },
    tooltip: { ...TOOLTIP, trigger: "axis" },
    legend: { bottom: 0, type: "scroll" },
    grid: { left: 50, right: 16, top: 40, bottom: 56 },
    xAxis: { type: "time", splitNumber: 3, axisLabel: { hideOverlap: true } },
    yAxis: { type: "value", name: axis.unit, min: axis.min, max: axis.max },
    series,
  }, { replaceMerge: ["series"] });
}

function renderCharts() {
  lineChart(state.charts.rps, "Requests per second", "rps", { scale: 1, unit: "rps" });
  lineChart(state.charts.success, "Success rate", "success", { scale: 100, unit: "%", max: 100 });
  lineChart(state.charts.latency, "p99 latency", "p99", { scale: 1000, unit: "ms" });
}

function renderProxies(proxies) {
  const items = [...proxies].sort((a, b) => (a.service + a.proxyId).localeCompare(b.service + b.proxyId));
  fillTable("#proxies", items, (tr, p) => {
    cell(tr, p.proxyId);
    cell(tr, p.service + "." + p.namespace + (p.subset ? " (" + p.subset + ")" : ""));
    cell(tr, p.state, p.state === "ACK" ? "ok" : p.state === "NACK" || p.state === "STALE" ? "bad" : "warn");
    cell(tr, (p.ackedVersion ?? "–") + " / " + (p.sentVersion ?? "–"));
    const svid = cell(tr, fmtUntil(p.svid ? p.svid.notAfter : null));
    if (p.svid) svid.title = p.svid.spiffeId;
    cell(tr, p.error || "", p.error ? "bad" : "");
  });
}

function setStatus(text, error) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", !!error);
}

// --- the poll loop --------------------------------------------------------------------------------

async function poll() {
  const win = encodeURIComponent($("#window").value);
  try {
    const readRoutes = Date.now() - state.routesReadAt >= RESOURCES_MS;
    const [services, edges, routeStats, proxies, routes] = await Promise.all([
      api("/v1/stats?by=service&window=" + win),
      api("/v1/stats?by=edge&window=" + win),
      api("/v1/stats?by=route&window=" + win),
      api("/v1/proxies"),
      readRoutes ? api("/v1/resources?kind=HTTPRoute") : null,
    ]);
    const now = Date.now();
    if (routes) {
      state.routes = routes.items;
      state.routesReadAt = now;
    }
    const known = new Set(services.items.map((s) => s.name));
    proxies.items.forEach((p) => known.add(p.service + "." + p.namespace));
    record(services.items, now);
    renderTopology(services.items, edges.items);
    renderServices(services.items);
    renderCharts();
    renderRoutes(state.routes, routeStats.items, known);
    updateTapServices(known);
    renderProxies(proxies.items);
    const failing = services.failing || [];
    const note = failing.length ? " · not scraped: " + failing.map((f) => f.proxyId + " (" + f.error + ")").join(", ") : "";
    setStatus("updated " + new Date(now).toLocaleTimeString() + " · " + proxies.items.length + " proxies" + note, failing.length > 0);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      stop();
      tapStop();
      showLogin("the token was refused: " + err.message);
      return;
    }
    setStatus("cannot reach the control plane: " + err.message, true);
  }
}

function stop() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function loop() {
  poll().finally(() => {
    if (state.token) state.timer = setTimeout(loop, POLL_MS);
  });
}

function start() {
  state.token = takeToken();
  if (!state.token) {
    showLogin("");
    return;
  }
  $("#login").hidden = true;
  $("#main").hidden = false;
  // Charts measure their container, so they are made once it is visible.
  if (!state.charts.topology) {
    state.charts.topology = echarts.init($("#topology"));
    state.charts.rps = echarts.init($("#chart-rps"));
    state.charts.success = echarts.init($("#chart-success"));
    state.charts.latency = echarts.init($("#chart-latency"));
    window.addEventListener("resize", () => Object.values(state.charts).forEach((c) => c.resize()));
  }
  initTap();
  stop();
  state.routesReadAt = 0;
  loop();
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  start();
});
$("#forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  stop();
  tapStop();
  showLogin("");
});
$("#window").addEventListener("change", () => { state.history.clear(); stop(); if (state.token) loop(); });
window.addEventListener("hashchange", start);
start();
