/**
 * Display names and number formatting: binary units for bytes, percentages for ratios,
 * thousands separators for counts. English formats throughout, matching the page's language.
 */

export const PROVIDERS = ["CAPYDB", "LOKE", "BUNDLE", "PLANETSCALE", "UPSUN"];

export const PROVIDER_NAMES = {
  CAPYDB: "CapyDB",
  LOKE: "LOKE",
  BUNDLE: "bundle.social",
  PLANETSCALE: "PlanetScale",
  UPSUN: "Upsun",
};

export const ORGANIZATION_STATUSES = ["ACTIVE", "SUSPENDED", "RESTRICTED", "DELETED", "UNKNOWN"];

/** Subscription statuses the summary counts as needing attention, in display order. */
export const ATTENTION_STATUSES = ["PAST_DUE", "SUSPENDED", "TRIALING"];

/** A usage metric at or above this share of its limit counts as near it. */
export const NEAR_LIMIT = 0.8;

export function providerName(provider) {
  return PROVIDER_NAMES[provider] || provider;
}

/** ACTIVE → Active, PAST_DUE → Past due. */
export function statusLabel(status) {
  if (!status) return "—";
  const words = status.toLowerCase().replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

const count = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });
const percent = new Intl.NumberFormat("en", { style: "percent", maximumFractionDigits: 1 });
const decimal = new Intl.NumberFormat("en", { maximumFractionDigits: 1, minimumFractionDigits: 0 });
const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function formatCount(value) {
  return count.format(value);
}

export function formatPercent(ratio) {
  return percent.format(ratio);
}

export function formatBytes(value) {
  let scaled = value;
  let unit = 0;
  while (Math.abs(scaled) >= 1024 && unit < BYTE_UNITS.length - 1) {
    scaled /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? count.format(scaled) : decimal.format(scaled)} ${BYTE_UNITS[unit]}`;
}

/** One figure of a metric (its value or its limit) in the metric's unit. */
export function formatAmount(value, unit) {
  if (value === null || value === undefined) return "—";
  if (unit === "BYTES") return formatBytes(value);
  if (unit === "RATIO") return formatPercent(value);
  return formatCount(value);
}

/**
 * How full a metric is, 0..n (above 1 past its limit), or null when it has no range: no
 * reported value, or no limit (a ratio's range is 0..1 of itself).
 */
export function metricFraction(metric) {
  if (metric.value === null || metric.value === undefined) return null;
  if (metric.unit === "RATIO" && (metric.limit === null || metric.limit === undefined)) {
    return metric.value;
  }
  if (!metric.limit || metric.limit <= 0) return null;
  return metric.value / metric.limit;
}

/** The metric nearest to (or furthest past) its limit; ratios without a limit do not count. */
export function topMetric(metrics) {
  let best = null;
  for (const metric of metrics || []) {
    if (!metric.limit || metric.limit <= 0 || metric.value === null || metric.value === undefined) {
      continue;
    }
    const fraction = metric.value / metric.limit;
    if (best === null || fraction > best.fraction) best = { metric, fraction };
  }
  return best;
}

export function isNearLimit(metric) {
  if (!metric.limit || metric.limit <= 0 || metric.value === null || metric.value === undefined) {
    return false;
  }
  return metric.value / metric.limit >= NEAR_LIMIT;
}

/** "normal" | "near" | "over": the bar's colour, always with the figure beside it. */
export function level(fraction) {
  if (fraction === null) return "normal";
  if (fraction >= 1) return "over";
  if (fraction >= NEAR_LIMIT) return "near";
  return "normal";
}

const dateFormat = new Intl.DateTimeFormat("en", { dateStyle: "medium" });
const dateTimeFormat = new Intl.DateTimeFormat("en", { dateStyle: "medium", timeStyle: "short" });

export function formatDate(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : dateFormat.format(date);
}

export function formatDateTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : dateTimeFormat.format(date);
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return `${ms < 10 ? decimal.format(ms) : count.format(Math.round(ms))} ms`;
}

/** "3 s", "4 min", "2 h": how long ago, for the "updated … ago" line and stale notices. */
export function formatAge(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}
