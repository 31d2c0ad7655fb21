// The GraphQL-over-HTTP conformance audits that ship with `graphql-http`
// (`serverAudits`), run against POST/GET /graphql. Every audit has to pass: the MUSTs,
// the SHOULDs, and the MAYs Polyport takes up (mutations refused on GET, 400 for a body
// that is not a GraphQL request, JSON responses for legacy clients).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { serverAudits } from 'graphql-http';

import { serverFor, within } from '../../../http/tests/js/polyport_server.mjs';

test('graphql-http serverAudits: every MUST, SHOULD and MAY audit passes', { timeout: 60_000 }, async (t) => {
  const server = await serverFor(t);
  const results = [];
  for (const audit of serverAudits({ url: `${server.url}/graphql` })) {
    results.push(await within(audit.fn(), `audit "${audit.name}"`));
  }
  assert.ok(results.length > 0, 'serverAudits returned no audits');

  // status: ok; error = a MUST failed; warn = a SHOULD failed; notice = a MAY not taken.
  const failed = results.filter((r) => r.status !== 'ok');
  for (const r of failed) t.diagnostic(`${r.status}: ${r.name} — ${r.reason}`);
  assert.deepEqual(
    failed.map((r) => `${r.status}: ${r.name} — ${r.reason}`),
    [],
    `${failed.length} of ${results.length} audits fail`,
  );
});
