/**
 * The OrgGraph dashboard: organizations, billing and usage across the five providers, and the
 * providers' health, from the gateway's public GraphQL API (api.js) with the user's key.
 *
 * One overview document per refresh (queries.js: provider health and one page of
 * organizations), one detail document for the organization open at `#/org/<id>`. The page
 * keeps to the DOM contract the browser tests use (docs/dashboard-contract.md): ids, data-*
 * attributes and texts named there are not to be renamed.
 */

import { h, render } from "preact";
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import htm from "htm";
import { query, RequestFailed, storedKey, storeKey } from "./api.js";
import { DEFAULT_PAGE_SIZE, DETAIL, OVERVIEW, OVERVIEW_SUBSCRIPTIONS, PAGE_SIZES } from "./queries.js";
import {
  ATTENTION_STATUSES,
  formatAge,
  formatAmount,
  formatDate,
  formatDateTime,
  formatMs,
  formatPercent,
  isNearLimit,
  level,
  metricFraction,
  NEAR_LIMIT,
  ORGANIZATION_STATUSES,
  PROVIDERS,
  providerName,
  statusLabel,
  topMetric,
} from "./format.js";
import { HistoryChart } from "./chart.js";

const html = htm.bind(h);

const REFRESH_SECONDS = 30;
const THEME_STORAGE = "orggraph.theme";
const THEMES = ["auto", "light", "dark"];

/** What the browser tests (and anyone curious, from the console) can read or call. */
const probe = { firstRenderMs: null, refresh: () => {} };
window.orggraphDashboard = probe;

// ------------------------------------------------------------------------------ small hooks

function routeId() {
  const match = /^#\/org\/(.+)$/.exec(window.location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function orgHref(id) {
  return `#/org/${encodeURIComponent(id)}`;
}

/** The organization id in the URL's fragment (`#/org/<id>`), or null. */
function useRoute() {
  const [id, setId] = useState(routeId);
  useEffect(() => {
    const changed = () => setId(routeId());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return id;
}

/** Date.now(), re-rendered every second (the "updated N s ago" line, stale ages). */
function useNow() {
  const [now, setNow] = useState(Date.now);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

function useTheme() {
  const [theme, setTheme] = useState(() => {
    try {
      return THEMES.includes(localStorage.getItem(THEME_STORAGE)) ? localStorage.getItem(THEME_STORAGE) : "auto";
    } catch {
      return "auto";
    }
  });
  useLayoutEffect(() => {
    const root = document.documentElement;
    if (theme === "auto") delete root.dataset.theme;
    else root.dataset.theme = theme;
    try {
      localStorage.setItem(THEME_STORAGE, theme);
    } catch {
      /* storage disabled: the choice lasts for this page */
    }
  }, [theme]);
  const next = () => setTheme(THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length]);
  return [theme, next];
}

// ------------------------------------------------------------------------------ derived data

/** Each failing provider with its error codes, and the errors no provider is named in. */
function splitErrors(errors) {
  const byProvider = new Map();
  const general = [];
  for (const error of errors || []) {
    const ext = error.extensions || {};
    if (ext.provider) {
      if (!byProvider.has(ext.provider)) byProvider.set(ext.provider, new Set());
      byProvider.get(ext.provider).add(ext.code || "INTERNAL");
    } else {
      general.push({ code: ext.code || "INTERNAL", message: error.message });
    }
  }
  const failing = [...byProvider]
    .sort(([a], [b]) => PROVIDERS.indexOf(a) - PROVIDERS.indexOf(b))
    .flatMap(([provider, codes]) => [...codes].map((code) => ({ provider, code })));
  return { failing, general };
}

function summarize(nodes, providers, failing) {
  const byProvider = Object.fromEntries(PROVIDERS.map((p) => [p, 0]));
  const byStatus = Object.fromEntries(ORGANIZATION_STATUSES.map((s) => [s, 0]));
  const attention = Object.fromEntries(ATTENTION_STATUSES.map((s) => [s, 0]));
  const nearLimit = [];
  let truncatedSubscriptions = false;
  for (const org of nodes) {
    byProvider[org.provider] = (byProvider[org.provider] || 0) + 1;
    byStatus[org.status] = (byStatus[org.status] || 0) + 1;
    for (const sub of org.subscriptions.nodes) {
      if (sub.status in attention) attention[sub.status] += 1;
    }
    if (org.subscriptions.pageInfo.hasNextPage) truncatedSubscriptions = true;
    for (const metric of (org.usage && org.usage.metrics) || []) {
      if (isNearLimit(metric)) nearLimit.push({ org, metric, fraction: metric.value / metric.limit });
    }
  }
  nearLimit.sort((a, b) => b.fraction - a.fraction);
  const down = new Set(failing.map((f) => f.provider));
  for (const p of providers || []) {
    if (p.configured && (!p.healthy || p.circuitState === "OPEN")) down.add(p.provider);
  }
  const providersFailing = PROVIDERS.filter((p) => down.has(p));
  return { byProvider, byStatus, attention, nearLimit, providersFailing, truncatedSubscriptions };
}

const SORTS = {
  name: (o) => o.name,
  provider: (o) => providerName(o.provider),
  plan: (o) => o.plan,
  status: (o) => statusLabel(o.status),
};

function compareBy(key, direction) {
  const read = SORTS[key];
  return (a, b) => {
    const x = read(a);
    const y = read(b);
    // Organizations without the value (no plan) stay last whichever way the column sorts.
    if (x == null || y == null) return (x == null) - (y == null);
    return direction * x.localeCompare(y, "en", { sensitivity: "base", numeric: true });
  };
}

// ------------------------------------------------------------------------------ pieces

function BrandMark() {
  return html`<svg class="brand-mark" viewBox="0 0 32 32" width="28" height="28" aria-hidden="true" focusable="false">
    <rect width="32" height="32" rx="7" class="brand-bg" />
    <path d="M9 22 16 10l7 12z" class="brand-edge" />
    <circle cx="16" cy="10" r="3.2" class="brand-node" />
    <circle cx="9" cy="22" r="3.2" class="brand-node" />
    <circle cx="23" cy="22" r="3.2" class="brand-node" />
  </svg>`;
}

/**
 * A metric as a bar against its limit (role=meter), or as an allowance (no value reported:
 * just the limit, no meter). `compact` is the table's single-line form.
 */
function Meter({ metric, compact = false, attribute }) {
  const { label, unit, value, limit } = metric;
  const attrs = attribute || { "data-metric": metric.key };
  if (value === null || value === undefined) {
    return html`<div class="metric allowance" ...${attrs}>
      <span class="metric-label">${label}</span>
      <span class="metric-figure">${formatAmount(limit, unit)} allowance</span>
      <span class="metric-note">no usage reported</span>
    </div>`;
  }
  const fraction = metricFraction(metric);
  const hasLimit = limit !== null && limit !== undefined && limit > 0;
  const ranged = fraction !== null;
  const max = hasLimit ? limit : unit === "RATIO" ? 1 : undefined;
  let figure;
  if (hasLimit) {
    figure = `${formatAmount(value, unit)} of ${formatAmount(limit, unit)}`;
  } else if (unit === "RATIO") {
    figure = formatAmount(value, unit);
  } else {
    figure = `${formatAmount(value, unit)}, no limit reported`;
  }
  const share = hasLimit ? formatPercent(fraction) : null;
  const text = share ? `${figure} (${share})` : figure;
  // Colour says how close to the limit; a ratio without a limit (a success rate) is no alarm.
  const tone = hasLimit ? level(fraction) : "normal";
  const width = ranged ? `${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%` : "0%";
  return html`<div
    class=${`metric meter tone-${tone}${compact ? " compact" : ""}${ranged ? "" : " unranged"}`}
    role="meter"
    aria-label=${label}
    aria-valuenow=${value}
    aria-valuemin="0"
    aria-valuemax=${max}
    aria-valuetext=${text}
    ...${attrs}
  >
    <span class="metric-label">${label}</span>
    <span class="metric-figure">${compact ? share || figure : text}</span>
    <span class="bar" aria-hidden="true"><span class="fill" style=${{ width }}></span></span>
  </div>`;
}

function StatusBadge({ status }) {
  return html`<span class=${`badge status-${(status || "UNKNOWN").toLowerCase()}`}>${statusLabel(status)}</span>`;
}

function Banners({ overview, failure, notice, now }) {
  const { failing, general } = splitErrors(overview && overview.errors);
  const stale = (overview && overview.extensions && overview.extensions.stale) || [];
  return html`
    ${failing.length > 0 &&
    html`<div id="partial-banner" class="banner banner-error" role="alert">
      <p><strong>Partial answer.</strong> ${failing.length === 1 ? "A provider" : "Some providers"} failed;
        everything else is shown.</p>
      <ul>${failing.map((f) => html`<li key=${f.provider + f.code}>${providerName(f.provider)}: ${f.code}</li>`)}</ul>
    </div>`}
    ${stale.length > 0 &&
    html`<div id="stale-notice" class="banner banner-info" role="status">
      <p>Shown from the gateway's cache because the provider could not be read just now:</p>
      <ul>
        ${stale.map(
          (s) => html`<li key=${s.provider}>
            ${`${providerName(s.provider)}: served from cache, ${formatAge(s.ageSeconds + (now - overview.receivedAt) / 1000)} old`}
          </li>`,
        )}
      </ul>
    </div>`}
    ${(failure || general.length > 0 || notice) &&
    html`<div id="error-banner" class="banner banner-error" role="alert">
      ${notice && html`<p>${notice}</p>`}
      ${failure &&
      html`<p>
        <strong>${overview ? "The last refresh failed:" : "The dashboard could not load:"}</strong>${" "}
        ${failure.message} (${failure.code})${failure.retryAfter ? `; retrying after ${failure.retryAfter} s` : ""}.
        ${overview && ` Showing the answer from ${formatAge((now - overview.receivedAt) / 1000)} ago.`}
      </p>`}
      ${general.map((g, i) => html`<p key=${i}>${g.message} (${g.code})</p>`)}
    </div>`}
  `;
}

function KeyForm({ refused, onKey }) {
  const input = useRef(null);
  useEffect(() => {
    if (input.current) input.current.focus();
  }, [refused]);
  const submit = (event) => {
    event.preventDefault();
    const key = input.current.value.trim();
    if (key) onKey(key);
  };
  return html`<section class="panel key-panel" aria-labelledby="key-title">
    <h2 id="key-title">Connect to this gateway</h2>
    <p>
      The API needs a gateway key (the one your tenant was given). It is kept in this browser tab only
      (sessionStorage) and sent to this gateway as <code>Authorization: Bearer …</code>, nowhere else.
    </p>
    <form id="key-form" onSubmit=${submit}>
      <label for="gateway-key">Gateway key</label>
      <div class="key-row">
        <input
          id="gateway-key"
          ref=${input}
          type="password"
          name="gateway-key"
          autocomplete="off"
          spellcheck="false"
          required
          aria-describedby=${refused ? "key-error" : undefined}
        />
        <button type="submit" class="primary">Connect</button>
      </div>
    </form>
    ${refused &&
    html`<p id="key-error" class="field-error" role="alert">The gateway refused this key. Check it and try again.</p>`}
  </section>`;
}

function Summary({ nodes, providers, failing, page, providerFilter }) {
  const s = useMemo(() => summarize(nodes, providers, failing), [nodes, providers, failing]);
  const scope =
    `Counts cover the ${nodes.length} organization${nodes.length === 1 ? "" : "s"} on page ${page}` +
    (providerFilter ? ` (${providerName(providerFilter)} only)` : "") +
    `; subscriptions: up to ${OVERVIEW_SUBSCRIPTIONS} per organization.`;
  return html`<section id="summary" aria-labelledby="summary-title">
    <div class="section-head">
      <h2 id="summary-title">Summary</h2>
      <p class="note" id="summary-scope">${scope}${s.truncatedSubscriptions ? " Some organizations have more." : ""}</p>
    </div>
    <div class="cards">
      <div class="card">
        <h3>Organizations by provider</h3>
        <ul class="tally">
          ${PROVIDERS.map(
            (p) => html`<li key=${p} data-summary-provider=${p}>
              <span>${providerName(p)}</span><strong>${s.byProvider[p]}</strong>
            </li>`,
          )}
        </ul>
      </div>
      <div class="card">
        <h3>Organizations by status</h3>
        <ul class="tally">
          ${ORGANIZATION_STATUSES.map(
            (st) => html`<li key=${st} data-summary-status=${st}>
              <span>${statusLabel(st)}</span><strong>${s.byStatus[st]}</strong>
            </li>`,
          )}
        </ul>
      </div>
      <div class="card" data-summary="subscriptions-attention">
        <h3>Subscriptions needing attention</h3>
        <ul class="tally">
          ${ATTENTION_STATUSES.map(
            (st) => html`<li key=${st} data-subscription-status=${st} class=${s.attention[st] ? "alert" : ""}>
              <span>${statusLabel(st)}</span><strong>${s.attention[st]}</strong>
            </li>`,
          )}
        </ul>
      </div>
      <div class="card" data-summary="usage-near-limit">
        <h3>Usage at or above ${formatPercent(NEAR_LIMIT)} of its limit</h3>
        <p class="big"><strong data-count>${s.nearLimit.length}</strong> metric${s.nearLimit.length === 1 ? "" : "s"}</p>
        ${s.nearLimit.length > 0 &&
        html`<ul class="near-list">
          ${s.nearLimit.slice(0, 5).map(
            ({ org, metric, fraction }) => html`<li key=${org.id + metric.key}>
              <a href=${orgHref(org.id)}>${org.name}</a>: ${metric.label} ${formatPercent(fraction)}
            </li>`,
          )}
          ${s.nearLimit.length > 5 && html`<li>and ${s.nearLimit.length - 5} more</li>`}
        </ul>`}
      </div>
      <div class="card" data-summary="providers-failing">
        <h3>Providers failing</h3>
        <p class="big"><strong data-count>${s.providersFailing.length}</strong> of ${PROVIDERS.length}</p>
        <p class=${s.providersFailing.length ? "alert-text" : "muted"}>
          ${s.providersFailing.length ? s.providersFailing.map(providerName).join(", ") : "None"}
        </p>
      </div>
    </div>
  </section>`;
}

/** How a provider did in the answer on screen (the health figures predate it). */
function inThisAnswer(p, failing, stale, providerFilter) {
  const codes = failing.filter((f) => f.provider === p.provider).map((f) => f.code);
  if (codes.length) return html`<span class="alert-text">failed: ${codes.join(", ")}</span>`;
  if (!p.configured) return html`<span class="muted">not configured</span>`;
  if (providerFilter && providerFilter !== p.provider) return html`<span class="muted">not asked</span>`;
  const cached = stale.find((s) => s.provider === p.provider);
  if (cached) return html`<span class="warn-text">from cache</span>`;
  return html`<span class="ok-text">ok</span>`;
}

function ProviderHealth({ providers, failing, stale, providerFilter }) {
  return html`<section id="provider-health" aria-labelledby="health-title">
    <div class="section-head">
      <h2 id="health-title">Provider health</h2>
      <p class="note">
        For this gateway key, as of just before the answer on screen; latency over the last 200 upstream calls
        (cache hits excluded).
      </p>
    </div>
    <div class="scroll-box" role="region" aria-label="Provider health table" tabindex="0">
      <table class="data">
        <thead>
          <tr>
            <th scope="col">Provider</th>
            <th scope="col">Configured</th>
            <th scope="col">Healthy</th>
            <th scope="col">Circuit</th>
            <th scope="col" class="num">p50</th>
            <th scope="col" class="num">p95</th>
            <th scope="col" class="num">Recent calls (failed)</th>
            <th scope="col">Last error</th>
            <th scope="col">In this answer</th>
          </tr>
        </thead>
        <tbody>
          ${(providers || []).map(
            (p) => html`<tr key=${p.provider} data-provider=${p.provider}>
              <th scope="row">${providerName(p.provider)}</th>
              <td data-field="configured">${p.configured ? "Yes" : "No"}</td>
              <td data-field="healthy">
                ${p.configured
                  ? html`<span class=${p.healthy ? "ok-text" : "alert-text"}>${p.healthy ? "Yes" : "No"}</span>`
                  : html`<span class="muted" title="not configured">—</span>`}
              </td>
              <td data-field="circuit"><span class=${`badge circuit-${p.circuitState.toLowerCase()}`}>${p.circuitState}</span></td>
              <td data-field="p50" class="num">${formatMs(p.latencyP50Ms)}</td>
              <td data-field="p95" class="num">${formatMs(p.latencyP95Ms)}</td>
              <td data-field="calls" class="num">${p.recentCalls} (${p.recentFailures})</td>
              <td data-field="last-error">${p.lastErrorCode ? html`<code>${p.lastErrorCode}</code>` : html`<span class="muted">none</span>`}</td>
              <td data-field="answer">${inThisAnswer(p, failing, stale, providerFilter)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
  </section>`;
}

function SortHeader({ id, label, sort, onSort }) {
  const active = sort.key === id;
  const ariaSort = active ? (sort.direction > 0 ? "ascending" : "descending") : undefined;
  return html`<th scope="col" aria-sort=${ariaSort}>
    <button type="button" class="sort" data-sort=${id} onClick=${() => onSort(id)}>
      ${label}<span class="sort-mark" aria-hidden="true">${active ? (sort.direction > 0 ? "▲" : "▼") : "↕"}</span>
    </button>
  </th>`;
}

function OrganizationList({ overview, busy, view, setView, pageSize, onPageSize, providerFilter, onProvider, page, hasPrev, onPrev, onNext, selectedId }) {
  const nodes = overview.data.organizations.nodes;
  const pageInfo = overview.data.organizations.pageInfo;
  const plans = useMemo(() => [...new Set(nodes.map((o) => o.plan).filter(Boolean))].sort(), [nodes]);
  const needle = view.search.trim().toLowerCase();
  const rows = useMemo(() => {
    let list = nodes.filter(
      (o) =>
        (!needle ||
          [o.name, o.billingEmail, o.plan].some((field) => field && field.toLowerCase().includes(needle))) &&
        (!view.status || o.status === view.status) &&
        (!view.plan || o.plan === view.plan),
    );
    if (view.sort.key) list = [...list].sort(compareBy(view.sort.key, view.sort.direction));
    return list;
  }, [nodes, needle, view]);
  const onSort = (key) =>
    setView({ ...view, sort: { key, direction: view.sort.key === key ? -view.sort.direction : 1 } });
  const filtered = rows.length !== nodes.length;

  return html`<section id="organizations" aria-labelledby="orgs-title">
    <div class="section-head">
      <h2 id="orgs-title">Organizations</h2>
      <p class="note" id="filter-note">
        The provider filter asks the API; search, status, plan and sorting work on the organizations of this page.
      </p>
    </div>
    <div class="controls">
      <div class="field grow">
        <label for="org-search">Search</label>
        <input
          id="org-search"
          type="search"
          placeholder="Name, billing email or plan"
          value=${view.search}
          onInput=${(e) => setView({ ...view, search: e.currentTarget.value })}
        />
      </div>
      <div class="field">
        <label for="filter-provider">Provider</label>
        <select id="filter-provider" value=${providerFilter} onChange=${(e) => onProvider(e.currentTarget.value)}>
          <option value="">All providers</option>
          ${PROVIDERS.map((p) => html`<option key=${p} value=${p}>${providerName(p)}</option>`)}
        </select>
      </div>
      <div class="field">
        <label for="filter-status">Status</label>
        <select id="filter-status" value=${view.status} onChange=${(e) => setView({ ...view, status: e.currentTarget.value })}>
          <option value="">All statuses</option>
          ${ORGANIZATION_STATUSES.map((s) => html`<option key=${s} value=${s}>${statusLabel(s)}</option>`)}
        </select>
      </div>
      <div class="field">
        <label for="filter-plan">Plan</label>
        <select id="filter-plan" value=${view.plan} onChange=${(e) => setView({ ...view, plan: e.currentTarget.value })}>
          <option value="">All plans</option>
          ${[...new Set([...plans, ...(view.plan ? [view.plan] : [])])].map(
            (p) => html`<option key=${p} value=${p}>${p}</option>`,
          )}
        </select>
      </div>
      <div class="field">
        <label for="page-size">Rows per page</label>
        <select id="page-size" value=${String(pageSize)} onChange=${(e) => onPageSize(Number(e.currentTarget.value))}>
          ${PAGE_SIZES.map((n) => html`<option key=${n} value=${String(n)}>${n}</option>`)}
        </select>
      </div>
    </div>
    <p class="visually-hidden" role="status">${filtered ? `${rows.length} of ${nodes.length} organizations shown` : ""}</p>
    <div class="scroll-box" role="region" aria-label="Organizations table" tabindex="0">
      <table id="org-table" class="data" aria-busy=${busy ? "true" : "false"} aria-describedby="filter-note">
        <caption class="visually-hidden">Organizations, page ${page}${filtered ? `, ${rows.length} of ${nodes.length} shown` : ""}</caption>
        <thead>
          <tr>
            <${SortHeader} id="name" label="Name" sort=${view.sort} onSort=${onSort} />
            <${SortHeader} id="provider" label="Provider" sort=${view.sort} onSort=${onSort} />
            <${SortHeader} id="plan" label="Plan" sort=${view.sort} onSort=${onSort} />
            <${SortHeader} id="status" label="Status" sort=${view.sort} onSort=${onSort} />
            <th scope="col" class="email">Billing email</th>
            <th scope="col">Most-used metric</th>
          </tr>
        </thead>
        <tbody>
          ${rows.map((o) => {
            const top = topMetric(o.usage && o.usage.metrics);
            return html`<tr
              key=${o.id}
              data-org-id=${o.id}
              data-provider=${o.provider}
              data-status=${o.status}
              class=${o.id === selectedId ? "selected" : ""}
            >
              <th scope="row">
                <a class="org-link" href=${orgHref(o.id)} aria-current=${o.id === selectedId ? "true" : undefined}>${o.name}</a>
              </th>
              <td>${providerName(o.provider)}</td>
              <td>${o.plan || html`<span class="muted">—</span>`}</td>
              <td><${StatusBadge} status=${o.status} /></td>
              <td class="email">${o.billingEmail || html`<span class="muted">—</span>`}</td>
              <td class="top-metric">
                ${top
                  ? html`<${Meter} metric=${top.metric} compact attribute=${{ "data-top-metric": top.metric.key }} />`
                  : html`<span class="muted">${o.usage ? "no limits reported" : "no usage data"}</span>`}
              </td>
            </tr>`;
          })}
          ${rows.length === 0 &&
          html`<tr class="empty">
            <td colspan="6">${nodes.length ? "No organization on this page matches the filters." : "No organizations."}</td>
          </tr>`}
        </tbody>
      </table>
    </div>
    <nav class="pager" aria-label="Organization pages">
      <button type="button" id="page-prev" disabled=${!hasPrev || busy} onClick=${onPrev}>← Previous</button>
      <span id="page-info">
        Page ${page} · ${nodes.length} organization${nodes.length === 1 ? "" : "s"}${pageInfo.hasNextPage ? " · more on the next page" : " · last page"}
      </span>
      <button type="button" id="page-next" disabled=${!pageInfo.hasNextPage || busy} onClick=${() => onNext(pageInfo.endCursor)}>
        Next →
      </button>
    </nav>
  </section>`;
}

function groupHistory(samples) {
  const groups = new Map();
  for (const s of samples || []) {
    if (!groups.has(s.key)) groups.set(s.key, []);
    groups.get(s.key).push(s);
  }
  return [...groups];
}

function OrganizationDetail({ id, detail, fallbackName, onClose }) {
  const heading = useRef(null);
  const [showSource, setShowSource] = useState(false);
  useEffect(() => {
    setShowSource(false);
    if (heading.current) heading.current.focus();
  }, [id]);
  const org = detail && detail.body && detail.body.data.node;
  const { failing, general } = splitErrors(detail && detail.body && detail.body.errors);
  const name = org ? org.name : fallbackName || "Organization";
  const onKeyDown = (event) => {
    if (event.key === "Escape") onClose();
  };
  const metrics = (org && org.usage && org.usage.metrics) || [];
  const history = groupHistory(org && org.usage && org.usage.history);
  const subscriptions = org ? org.subscriptions : null;

  return html`<section id="org-detail" class="panel" aria-labelledby="detail-title" onKeyDown=${onKeyDown}>
    <div class="detail-head">
      <div>
        <h2 id="detail-title" tabindex="-1" ref=${heading}>${name}</h2>
        ${org && html`<p class="muted detail-sub">${providerName(org.provider)} · <code>${org.providerId}</code></p>`}
      </div>
      <button type="button" id="detail-close" onClick=${onClose} aria-label="Close the organization detail">Close ✕</button>
    </div>
    ${detail && detail.failure &&
    html`<div class="banner banner-error" role="alert"><p>This organization could not be read: ${detail.failure.message} (${detail.failure.code}).</p></div>`}
    ${(failing.length > 0 || general.length > 0) &&
    html`<div class="banner banner-error detail-errors" role="alert">
      <p><strong>Partial answer.</strong> Some of this organization's data could not be read:</p>
      <ul>
        ${failing.map((f) => html`<li key=${f.provider + f.code}>${providerName(f.provider)}: ${f.code}</li>`)}
        ${general.map((g, i) => html`<li key=${i}>${g.message} (${g.code})</li>`)}
      </ul>
    </div>`}
    ${detail && detail.body && !org && !failing.length && html`<p>No organization has this id (it may have been deleted).</p>`}
    ${org &&
    html`
      <dl class="facts">
        <div><dt>Status</dt><dd><${StatusBadge} status=${org.status} /></dd></div>
        <div><dt>Plan</dt><dd>${org.plan || "—"}</dd></div>
        <div><dt>Billing email</dt><dd class="email">${org.billingEmail || "—"}</dd></div>
        <div><dt>Slug</dt><dd>${org.slug || "—"}</dd></div>
        <div><dt>Currency</dt><dd>${org.currency || "—"}</dd></div>
        <div><dt>Time zone</dt><dd>${org.timezone || "—"}</dd></div>
        <div><dt>Created</dt><dd>${org.createdAt ? html`<time datetime=${org.createdAt}>${formatDateTime(org.createdAt)}</time>` : "—"}</dd></div>
        <div><dt>Updated</dt><dd>${org.updatedAt ? html`<time datetime=${org.updatedAt}>${formatDateTime(org.updatedAt)}</time>` : "—"}</dd></div>
      </dl>

      <h3 id="subscriptions-title">Subscriptions</h3>
      <div class="scroll-box" role="region" aria-label="Subscriptions table" tabindex="0">
        <table id="subscriptions" class="data">
          <thead>
            <tr>
              <th scope="col">Status</th>
              <th scope="col">Plan</th>
              <th scope="col">Period end</th>
              <th scope="col">Trial ends</th>
              <th scope="col">Cancels</th>
              <th scope="col">As the provider says</th>
              <th scope="col">Id</th>
            </tr>
          </thead>
          <tbody>
            ${subscriptions.nodes.map(
              (s) => html`<tr key=${s.id} data-subscription-id=${s.id} data-status=${s.status}>
                <td><${StatusBadge} status=${s.status} /></td>
                <td>${s.plan || "—"}</td>
                <td>${s.currentPeriodEnd ? html`<time datetime=${s.currentPeriodEnd}>${formatDate(s.currentPeriodEnd)}</time>` : "—"}</td>
                <td>${s.trialEndsAt ? html`<time datetime=${s.trialEndsAt}>${formatDate(s.trialEndsAt)}</time>` : "—"}</td>
                <td>${s.cancelAt ? html`<time datetime=${s.cancelAt}>${formatDate(s.cancelAt)}</time>` : "—"}</td>
                <td>${s.providerStatus || "—"}</td>
                <td><code>${s.providerId}</code></td>
              </tr>`,
            )}
            ${subscriptions.nodes.length === 0 &&
            html`<tr class="empty"><td colspan="7">No subscriptions reported by ${providerName(org.provider)}.</td></tr>`}
          </tbody>
        </table>
      </div>
      ${subscriptions.pageInfo.hasNextPage && html`<p class="note">The first ${subscriptions.nodes.length} are shown.</p>`}

      <h3>Usage</h3>
      ${org.usage
        ? html`<div class="metrics">${metrics.map((m) => html`<${Meter} key=${m.key} metric=${m} />`)}</div>
            ${metrics.length === 0 && html`<p class="muted">No usage metrics reported.</p>`}`
        : html`<p class="muted">${providerName(org.provider)} reports no usage.</p>`}

      <h3>Usage history</h3>
      <div id="usage-history">
        ${history.length === 0
          ? html`<p class="muted">no history reported for this organization</p>`
          : history.map(([key, samples]) => {
              const metric = metrics.find((m) => m.key === key);
              return html`<${HistoryChart}
                key=${key}
                id=${key}
                label=${metric ? metric.label : key}
                unit=${metric ? metric.unit : "COUNT"}
                samples=${samples}
              />`;
            })}
      </div>

      <h3>Source</h3>
      <p class="note">The organization object exactly as ${providerName(org.provider)} returned it (<code>raw</code>).</p>
      <button
        type="button"
        id="source-toggle"
        aria-expanded=${showSource ? "true" : "false"}
        aria-controls="raw-source"
        onClick=${() => setShowSource(!showSource)}
      >
        ${showSource ? "Hide source" : "Show source"}
      </button>
      <pre id="raw-source" class="source" hidden=${!showSource} tabindex="0" aria-label="Upstream source object">${showSource ? JSON.stringify(org.raw, null, 2) : ""}</pre>
    `}
  </section>`;
}

// ------------------------------------------------------------------------------ the page

function App() {
  const [key, setKey] = useState(storedKey);
  const [needsKey, setNeedsKey] = useState(false);
  const [refused, setRefused] = useState(false);
  const [overview, setOverview] = useState(null);
  const [failure, setFailure] = useState(null);
  const [notice, setNotice] = useState("");
  const [busy, setBusy] = useState(false);
  const [pageSize, setPageSize] = useState(DEFAULT_PAGE_SIZE);
  const [providerFilter, setProviderFilter] = useState("");
  const [cursors, setCursors] = useState([null]); // the `after` of each page walked, for Previous
  const [view, setView] = useState({ search: "", status: "", plan: "", sort: { key: null, direction: 1 } });
  const [tick, setTick] = useState(0); // bumped to refresh everything shown
  const [detail, setDetail] = useState(null); // {id, body?, failure?}
  const [theme, nextTheme] = useTheme();
  const detailId = useRoute();
  const now = useNow();
  const fresh = useRef(false);
  const sequence = useRef(0);
  const lastAttempt = useRef(0);
  const lastDetailId = useRef(null);
  const after = cursors[cursors.length - 1];
  const variables = useMemo(
    () => ({ first: pageSize, after, providers: providerFilter ? [providerFilter] : null }),
    [pageSize, after, providerFilter],
  );
  const wanted = JSON.stringify(variables);

  const unauthenticated = () => {
    storeKey("");
    setRefused(Boolean(key));
    setNeedsKey(true);
    setOverview(null);
    setDetail(null);
  };

  // The overview: again whenever the key, the page or the provider filter changes, and on
  // every tick (the interval, the Refresh button).
  useEffect(() => {
    if (needsKey) return undefined;
    const controller = new AbortController();
    const mine = ++sequence.current;
    const page = cursors.length;
    const bypass = fresh.current;
    fresh.current = false;
    setBusy(true);
    query(OVERVIEW, variables, { key, signal: controller.signal, fresh: bypass })
      .then((body) => {
        if (mine !== sequence.current) return;
        // What the answer is for: the controls may already ask for something else.
        body.wanted = wanted;
        body.page = page;
        body.providerFilter = providerFilter;
        setOverview(body);
        setFailure(null);
        setRefused(false);
        if (key) storeKey(key);
      })
      .catch((error) => {
        if (mine !== sequence.current || (error && error.name === "AbortError")) return;
        if (!(error instanceof RequestFailed)) {
          setFailure(new RequestFailed("INTERNAL", String(error)));
          return;
        }
        if (error.code === "UNAUTHENTICATED") {
          unauthenticated();
        } else if (error.code === "BAD_USER_INPUT" && after) {
          // A cursor from before a gateway restart (cursor_secret unset) or another replica.
          setNotice("The page cursor is no longer valid; back to the first page.");
          setCursors([null]);
        } else {
          setFailure(error);
        }
      })
      .finally(() => {
        if (mine !== sequence.current) return;
        lastAttempt.current = Date.now();
        setBusy(false);
      });
    return () => controller.abort();
  }, [key, needsKey, wanted, tick]);

  // The open organization's detail: on opening it, and on every tick.
  useEffect(() => {
    if (!detailId || needsKey) {
      setDetail(null);
      return undefined;
    }
    const controller = new AbortController();
    setDetail((current) => (current && current.id === detailId ? current : { id: detailId }));
    query(DETAIL, { id: detailId }, { key, signal: controller.signal })
      .then((body) => setDetail({ id: detailId, body }))
      .catch((error) => {
        if (error && error.name === "AbortError") return;
        if (error instanceof RequestFailed && error.code === "UNAUTHENTICATED") unauthenticated();
        else setDetail((current) => ({ ...(current || {}), id: detailId, failure: error }));
      });
    return () => controller.abort();
  }, [detailId, key, needsKey, tick]);

  // Every REFRESH_SECONDS while the tab is visible; at once when it becomes visible after that.
  // A rate-limited key waits as long as the gateway asked, if that is longer.
  useEffect(() => {
    if (needsKey || busy) return;
    if (document.visibilityState !== "visible") return;
    const wait = Math.max(REFRESH_SECONDS, (failure && failure.retryAfter) || 0) * 1000;
    if (lastAttempt.current && now - lastAttempt.current >= wait) setTick((t) => t + 1);
  }, [now, needsKey, busy, failure]);

  const refresh = () => {
    fresh.current = true;
    setNotice("");
    setTick((t) => t + 1);
  };
  probe.refresh = refresh;

  // Closing the detail gives the focus back to the row it was opened from.
  useEffect(() => {
    const previous = lastDetailId.current;
    lastDetailId.current = detailId;
    if (previous && !detailId) {
      const link = document.querySelector(`a.org-link[href="${CSS.escape(orgHref(previous))}"]`);
      if (link) link.focus();
    }
  }, [detailId]);

  const phase = needsKey ? "needs-key" : overview ? "ready" : failure ? "error" : "loading";
  useLayoutEffect(() => {
    if (phase === "ready" && probe.firstRenderMs === null) probe.firstRenderMs = performance.now();
  }, [phase]);

  const onKey = (value) => {
    storeKey(value);
    setKey(value);
    setRefused(false);
    setNeedsKey(false);
    setFailure(null);
  };
  const forgetKey = () => {
    storeKey("");
    setKey("");
    setOverview(null);
    setDetail(null);
    setFailure(null);
  };
  const closeDetail = () => {
    window.location.hash = "#/";
  };
  const skip = (event) => {
    // The fragment is the router's: move the focus without touching it.
    event.preventDefault();
    const target = document.getElementById("orgs-title") || document.getElementById("dashboard");
    if (target) {
      target.setAttribute("tabindex", "-1");
      target.focus();
    }
  };

  const nodes = overview ? overview.data.organizations.nodes : [];
  // Until the answer for the current controls arrives, the rows shown are the previous ones.
  const pending = busy || (overview !== null && overview.wanted !== wanted);
  const failing = useMemo(() => splitErrors(overview && overview.errors).failing, [overview]);
  const fallbackName = (nodes.find((o) => o.id === detailId) || {}).name;
  const age = overview ? `updated ${formatAge((now - overview.receivedAt) / 1000)} ago` : busy ? "loading…" : "not updated yet";
  const themeLabel = { auto: "Theme: system", light: "Theme: light", dark: "Theme: dark" }[theme];

  return html`
    <a class="skip-link" href="#organizations" onClick=${skip}>Skip to organizations</a>
    <header class="topbar">
      <div class="brand">
        <${BrandMark} />
        <div>
          <h1 class="brand-name">OrgGraph<span class="visually-hidden"> dashboard</span></h1>
          <p class="brand-sub">Organizations, billing and usage across five providers</p>
        </div>
      </div>
      <div class="toolbar">
        <span id="updated-ago" class=${busy ? "busy" : ""}>${age}</span>
        <button type="button" id="refresh" onClick=${refresh} disabled=${needsKey}>Refresh</button>
        <button type="button" id="theme-toggle" onClick=${nextTheme} aria-label=${`${themeLabel}; change`}>${themeLabel}</button>
        ${key && !needsKey && html`<button type="button" id="forget-key" onClick=${forgetKey}>Forget key</button>`}
        <a class="tool-link" href="graphql">GraphiQL</a>
      </div>
    </header>
    <main id="dashboard" data-state=${phase}>
      ${phase === "needs-key" && html`<${KeyForm} refused=${refused} onKey=${onKey} />`}
      ${phase !== "needs-key" && html`<${Banners} overview=${overview} failure=${failure} notice=${notice} now=${now} />`}
      ${phase === "loading" && html`<p class="shell-note">Loading the overview…</p>`}
      ${phase === "error" &&
      html`<p class="shell-note"><button type="button" class="primary" onClick=${refresh}>Try again</button></p>`}
      ${phase === "ready" &&
      html`
        <${Summary}
          nodes=${nodes}
          providers=${overview.data.providers}
          failing=${failing}
          page=${overview.page}
          providerFilter=${overview.providerFilter}
        />
        <div class=${`workspace${detailId ? " has-detail" : ""}`}>
          <${OrganizationList}
            overview=${overview}
            busy=${pending}
            view=${view}
            setView=${setView}
            pageSize=${pageSize}
            onPageSize=${(n) => {
              setPageSize(n);
              setCursors([null]);
            }}
            providerFilter=${providerFilter}
            onProvider=${(p) => {
              setProviderFilter(p);
              setCursors([null]);
            }}
            page=${overview.page}
            hasPrev=${cursors.length > 1}
            onPrev=${() => setCursors(cursors.slice(0, -1))}
            onNext=${(cursor) => setCursors([...cursors, cursor])}
            selectedId=${detailId}
          />
          ${detailId &&
          (detail && detail.id === detailId && (detail.body || detail.failure)
            ? html`<${OrganizationDetail} id=${detailId} detail=${detail} fallbackName=${fallbackName} onClose=${closeDetail} />`
            : // section#org-detail appears complete, once its answer is in: nothing half-drawn to read.
              html`<section class="panel detail-loading" aria-busy="true" aria-label="Organization detail">
                <p class="shell-note">Loading ${fallbackName || "the organization"}…</p>
              </section>`)}
        </div>
        <${ProviderHealth}
          providers=${overview.data.providers}
          failing=${failing}
          stale=${(overview.extensions && overview.extensions.stale) || []}
          providerFilter=${overview.providerFilter}
        />
      `}
    </main>
    <footer class="footer">
      <p>
        Data from this gateway's <a href="graphql">GraphQL API</a>, refreshed every ${REFRESH_SECONDS} s while this tab is visible.${" · "}<a href="dashboard/vendor/LICENSES.txt">Third-party licences</a>
      </p>
    </footer>
  `;
}

render(html`<${App} />`, document.getElementById("app"));
