/**
 * The dashboard's only way to its data: the public GraphQL API of the gateway that served the
 * page, with the user's gateway key.
 *
 * Queries go as automatic persisted queries (Apollo's APQ) over GET: the URL carries the
 * document's SHA-256 instead of its text, so answers the gateway marks reusable can be reused
 * by the browser's HTTP cache too. An unknown hash (first use, a restarted gateway) answers
 * PERSISTED_QUERY_NOT_FOUND; the document is then sent once with POST, which registers it.
 * Where the page is not a secure context there is no `crypto.subtle` to hash with, and every
 * request is a plain POST with the full document.
 */

const ENDPOINT = "graphql"; // relative to the page (/dashboard), so it also works under a prefix
const KEY_STORAGE = "orggraph.key";
const ACCEPT = "application/graphql-response+json, application/json;q=0.9";

/** A request that produced no GraphQL answer worth rendering. */
export class RequestFailed extends Error {
  /**
   * @param {string} code  DESIGN.md error code, or NETWORK / BAD_RESPONSE
   * @param {string} message  for people
   * @param {{status?: number, retryAfter?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.code = code;
    this.status = details.status;
    this.retryAfter = details.retryAfter;
  }
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage disabled: the key lives only as long as the page
  }
}

export function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled */
  }
}

const hashes = new Map();

async function sha256Hex(text) {
  if (!hashes.has(text)) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0"));
    hashes.set(text, hex.join(""));
  }
  return hashes.get(text);
}

function canHash() {
  return Boolean(globalThis.isSecureContext && globalThis.crypto && crypto.subtle);
}

function headers(key, json) {
  const out = { Accept: ACCEPT };
  if (key) out.Authorization = `Bearer ${key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function exchange(url, init) {
  let response;
  try {
    response = await fetch(url, { credentials: "omit", ...init });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new RequestFailed("NETWORK", "The gateway could not be reached");
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new RequestFailed(
      "BAD_RESPONSE",
      `The gateway answered HTTP ${response.status} without a GraphQL body`,
      { status: response.status },
    );
  }
  const first = body && Array.isArray(body.errors) ? body.errors[0] : undefined;
  const code = first && first.extensions ? first.extensions.code : undefined;
  if (response.status === 401 || (code === "UNAUTHENTICATED" && !body.data)) {
    throw new RequestFailed("UNAUTHENTICATED", first ? first.message : "A gateway key is needed", {
      status: response.status,
    });
  }
  if (response.status === 429 || (code === "RATE_LIMITED" && !body.data)) {
    const retryAfter = Number(response.headers.get("Retry-After")) || undefined;
    throw new RequestFailed("RATE_LIMITED", first ? first.message : "Rate limited", {
      status: response.status,
      retryAfter,
    });
  }
  if (body.data === undefined || body.data === null) {
    // Nothing to render: the request failed before or during execution as a whole.
    throw new RequestFailed(code || "BAD_RESPONSE", first ? first.message : "No data in the answer", {
      status: response.status,
    });
  }
  return body;
}

/**
 * Run one query; resolves to the GraphQL body ({data, errors?, extensions?}) with
 * `receivedAt` (ms since the epoch), or rejects with RequestFailed.
 *
 * @param {string} document  a query from queries.js
 * @param {Record<string, unknown>} variables
 * @param {{key?: string, signal?: AbortSignal, fresh?: boolean}} [options]
 *   fresh: skip the browser's HTTP cache (the refresh button)
 */
export async function query(document, variables, options = {}) {
  const { key = "", signal, fresh = false } = options;
  const operationName = (/^\s*query\s+(\w+)/.exec(document) || [])[1];
  const post = (extensions) =>
    exchange(ENDPOINT, {
      method: "POST",
      headers: headers(key, true),
      body: JSON.stringify({ query: document, variables, operationName, extensions }),
      signal,
    });
  let body;
  if (!canHash()) {
    body = await post(undefined);
  } else {
    const extensions = { persistedQuery: { version: 1, sha256Hash: await sha256Hex(document) } };
    const params = new URLSearchParams({
      variables: JSON.stringify(variables),
      extensions: JSON.stringify(extensions),
    });
    if (operationName) params.set("operationName", operationName);
    try {
      body = await exchange(`${ENDPOINT}?${params}`, {
        method: "GET",
        headers: headers(key, false),
        cache: fresh ? "no-cache" : "default",
        signal,
      });
    } catch (error) {
      if (!(error instanceof RequestFailed) || error.code !== "PERSISTED_QUERY_NOT_FOUND") throw error;
      body = await post(extensions); // registers the document; later GETs by hash hit
    }
  }
  body.receivedAt = Date.now();
  return body;
}
