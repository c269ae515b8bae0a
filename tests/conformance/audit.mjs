// GraphQL-over-HTTP conformance: runs graphql-http's server audits against one endpoint and
// prints a JSON report on stdout. tests/test_http_conformance.py runs this against a gateway it
// serves on loopback and judges the report; the script itself only observes.
//
// Usage: node audit.mjs <graphql-url>
// Env:   AUDIT_AUTHORIZATION  value of the Authorization header added to every audit request
//                             (the gateway's tenants need a key; the audits themselves send none)
//        AUDIT_TIMEOUT_MS     per-request timeout (default 10000), so a hanging request becomes a
//                             failed audit instead of a hung test
//
// Report: {"graphqlHttpVersion": "...", "audits": [{id, name, status, reason, response}]}
// where status is graphql-http's own: ok | notice (a failed MAY) | warn (a failed SHOULD) |
// error (a failed MUST), plus "fatal" when an audit threw something other than an assertion
// (network error, timeout): graphql-http rethrows those, which would lose the other results.

import { readFile } from 'node:fs/promises';
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  process.stderr.write('usage: node audit.mjs <graphql-url>\n');
  process.exit(2);
}
const authorization = process.env.AUDIT_AUTHORIZATION;
const timeoutMs = Number(process.env.AUDIT_TIMEOUT_MS || 10000);

// Adds the gateway key and a timeout to every request the audits make; headers given by the
// audit itself are kept (the key is added only when the audit did not set one).
function fetchFn(input, init = {}) {
  const headers = new Headers(init.headers);
  if (authorization && !headers.has('authorization')) {
    headers.set('authorization', authorization);
  }
  return fetch(input, { ...init, headers, signal: AbortSignal.timeout(timeoutMs) });
}

// What the server answered, for the report: enough to see why an audit failed.
async function describe(response) {
  if (!response) return null;
  let body = null;
  try {
    body = (await response.clone().text()).slice(0, 600);
  } catch {
    body = null; // already consumed by the audit's own check
  }
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    headers: Object.fromEntries(response.headers.entries()),
    body,
  };
}

const pkg = JSON.parse(
  await readFile(new URL('./node_modules/graphql-http/package.json', import.meta.url), 'utf8'),
);
const results = [];
// One at a time: results are then in audit order and the server never sees a burst.
for (const audit of serverAudits({ url, fetchFn })) {
  let entry;
  try {
    const result = await audit.fn();
    entry = { id: result.id, name: result.name, status: result.status };
    if (result.status !== 'ok') {
      entry.reason = result.reason;
      entry.response = await describe(result.response);
    }
  } catch (err) {
    entry = {
      id: audit.id,
      name: audit.name,
      status: 'fatal',
      reason: `${err?.name ?? 'Error'}: ${err?.message ?? err}${err?.cause ? ` (${err.cause})` : ''}`,
      response: null,
    };
  }
  results.push(entry);
}
process.stdout.write(JSON.stringify({ graphqlHttpVersion: pkg.version, audits: results }, null, 1));
process.stdout.write('\n');
