// Gossamer dashboard, the Routes view: every HTTPRoute (GET /v1/resources?kind=HTTPRoute), its
// rules' matches and weighted backends, and each rule's traffic from GET /v1/stats?by=route.
// Loaded before app.js, whose helpers ($, cell, fmt*) it uses when called.
"use strict";

// Stats rows are per compiled rule: the translator names a rule "<namespace>/<route>#<index>"
// (control/translate_routes.py, as `gossamer stat routes` shows them) and a service without any
// HTTPRoute gets one rule named "default".
const ruleName = (route, index) => routeId(route) + "#" + index;
const DEFAULT_RULE = "default";
// The store keeps what was written: a namespace left out is the default one (config/models.py).
const DEFAULT_NAMESPACE = "default";

const routeNamespace = (route) => route.metadata.namespace || DEFAULT_NAMESPACE;
const routeId = (route) => routeNamespace(route) + "/" + route.metadata.name;

function qualify(name, namespace) {
  return name + "." + namespace;
}

// Several stats rows can share a rule (one per destination service): add them up. The success
// rate is weighted by requests; p99 cannot be combined, so the highest is shown (an upper bound).
function sumRows(rows) {
  if (!rows.length) return null;
  let requests = 0, successes = 0, rps = 0, p99 = null;
  for (const r of rows) {
    requests += r.requests || 0;
    successes += (r.requests || 0) * (r.successRate || 0);
    rps += r.rps || 0;
    if (r.p99 != null) p99 = p99 == null ? r.p99 : Math.max(p99, r.p99);
  }
  return { rps, successRate: requests > 0 ? successes / requests : null, p99 };
}

function statsByRule(items) {
  const by = new Map();
  for (const row of items) {
    const key = row.name === DEFAULT_RULE ? DEFAULT_RULE + "|" + row.service : row.name;
    if (!by.has(key)) by.set(key, []);
    by.get(key).push(row);
  }
  return by;
}

function describeMatch(m) {
  const parts = [];
  if (m.method) parts.push(m.method);
  if (m.path) {
    const type = m.path.type || "PathPrefix";
    const value = m.path.value ?? "/";
    parts.push(type === "Exact" ? "= " + value : type === "RegularExpression" ? "~ " + value : value + "*");
  }
  for (const h of m.headers || []) parts.push(h.name + (h.type === "RegularExpression" ? " ~ " : ": ") + h.value);
  for (const q of m.queryParams || []) parts.push("?" + q.name + (q.type === "RegularExpression" ? "~" : "=") + q.value);
  return parts.length ? parts.join(" ") : "everything";
}

function describeExtras(rule) {
  const bits = (rule.filters || []).map((f) => f.type);
  if (rule.timeouts && rule.timeouts.request != null) bits.push("timeout " + rule.timeouts.request);
  if (rule.retry) bits.push("retry ×" + (rule.retry.attempts ?? 2));
  if (rule.fallback) bits.push("fallback");
  return bits.join(" · ");
}

// The backends of a rule with their share of its traffic; a rule without backendRefs sends
// everything to its parent service (or answers itself when it redirects).
function ruleBackends(route, rule, parent) {
  const ns = routeNamespace(route);
  const refs = rule.backendRefs || [];
  if (!refs.length) {
    if ((rule.filters || []).some((f) => f.type === "RequestRedirect")) return { redirect: true, items: [] };
    return { items: [{ label: parent, key: parent, weight: 1 }] };
  }
  return {
    items: refs.map((b) => {
      const service = qualify(b.name, b.namespace || ns);
      const label = service + (b.subset ? " / " + b.subset : "");
      return { label, key: service + (b.subset ? "/" + b.subset : ""), weight: b.weight ?? 1 };
    }),
  };
}

function backendsCell(td, backends) {
  td.className = "backends";
  if (backends.redirect) {
    td.textContent = "redirect (the sidecar answers)";
    td.classList.add("muted");
    return;
  }
  const total = backends.items.reduce((sum, b) => sum + b.weight, 0);
  if (total === 0) {
    td.textContent = "all weights are 0: no traffic can be routed";
    td.classList.add("bad");
    return;
  }
  for (const b of backends.items) {
    const pct = (100 * b.weight) / total;
    const text = Number.isInteger(pct) ? pct + "%" : pct.toFixed(1) + "%";
    const line = document.createElement("div");
    line.className = "backend";
    line.dataset.backend = b.key;
    line.dataset.percent = text;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = b.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    // CSSOM, not a style attribute: allowed by the page's style-src 'self'.
    fill.style.width = pct + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "pct";
    value.textContent = text;
    value.title = "weight " + b.weight + " of " + total;
    line.append(name, bar, value);
    td.appendChild(line);
  }
}

function statsCells(tr, s) {
  cell(tr, s ? fmtRps(s.rps) : "–", "num rps");
  cell(tr, s ? fmtPct(s.successRate) : "–", "num " + (s ? successClass(s.successRate) : ""));
  cell(tr, s ? fmtMs(s.p99) : "–", "num");
}

function routeTable(rows) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const h of ["rule", "matches", "backends (share of the rule)", "RPS", "success", "p99"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = table.createTBody();
  rows.forEach((tr) => body.appendChild(tr));
  return table;
}

function renderRoutes(routes, routeStats, knownServices) {
  const container = $("#routes");
  if (routes == null) return; // resources not loaded yet
  const stats = statsByRule(routeStats);
  const blocks = [];
  const parented = new Set();
  const sorted = [...routes].sort((a, b) => routeId(a).localeCompare(routeId(b)));
  for (const route of sorted) {
    const ns = routeNamespace(route);
    const id = routeId(route);
    const parents = (route.spec.parentRefs || []).map((p) => qualify(p.name, p.namespace || ns));
    parents.forEach((p) => parented.add(p));
    const rules = route.spec.rules && route.spec.rules.length ? route.spec.rules : [{}];
    const ruleStats = [];
    const rows = rules.map((rule, index) => {
      const name = ruleName(route, index);
      const s = sumRows(stats.get(name) || []);
      if (s) ruleStats.push(s);
      const tr = document.createElement("tr");
      tr.dataset.rule = name;
      const first = cell(tr, "#" + index + (rule.name ? " " + rule.name : ""));
      const extras = describeExtras(rule);
      if (extras) {
        const small = document.createElement("small");
        small.className = "muted";
        small.textContent = extras;
        first.append(document.createElement("br"), small);
      }
      cell(tr, (rule.matches && rule.matches.length ? rule.matches : [{}]).map(describeMatch).join(" or "), "matches");
      backendsCell(cell(tr, ""), ruleBackends(route, rule, parents[0]));
      statsCells(tr, s);
      return tr;
    });
    const block = document.createElement("div");
    block.className = "route";
    block.dataset.route = id;
    const title = document.createElement("h3");
    title.textContent = "HTTPRoute " + id + " → " + parents.join(", ");
    const total = document.createElement("small");
    total.className = "muted";
    total.textContent = ruleStats.length
      ? "  " + fmtRps(ruleStats.reduce((sum, s) => sum + s.rps, 0)) + " rps in all"
      : "  no traffic in this window";
    title.appendChild(total);
    block.append(title, routeTable(rows));
    blocks.push(block);
  }

  // Services no HTTPRoute is attached to still have a rule: everything to the service itself.
  const plain = [...knownServices].filter((s) => !parented.has(s)).sort();
  if (plain.length) {
    const rows = plain.map((service) => {
      const tr = document.createElement("tr");
      tr.dataset.rule = DEFAULT_RULE + "|" + service;
      cell(tr, "default");
      cell(tr, "everything", "matches");
      backendsCell(cell(tr, ""), { items: [{ label: service, key: service, weight: 1 }] });
      statsCells(tr, sumRows(stats.get(DEFAULT_RULE + "|" + service) || []));
      return tr;
    });
    const block = document.createElement("div");
    block.className = "route";
    const title = document.createElement("h3");
    title.textContent = "Services without an HTTPRoute";
    block.append(title, routeTable(rows));
    blocks.push(block);
  }
  if (!blocks.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "no HTTPRoute and no service yet";
    blocks.push(p);
  }
  container.replaceChildren(...blocks);
}
