// GraphQL-over-HTTP conformance: graphql-http's server audits against the authql binary.
// Fails on any MUST (status "error") or SHOULD (status "warn") failure; MAY failures
// ("notice") are only reported.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { serverAudits } from 'graphql-http';
import { startAuthql } from '../lib/authql-server.mjs';

let server;
before(async () => { server = await startAuthql(); });
after(async () => { await server?.stop(); });

test('graphql-http server audits: no MUST or SHOULD failure', async (t) => {
  const audits = serverAudits({
    url: server.graphql,
    fetchFn: (input, init) => fetch(input, { ...init, signal: AbortSignal.timeout(10000) }),
  });
  assert.ok(audits.length > 20, `expected the full audit list, got ${audits.length}`);
  const failures = [];
  let ok = 0;
  for (const audit of audits) {
    let result;
    try {
      result = await audit.fn();
    } catch (e) {
      // The request itself failed (connection reset, timeout): count it as a failure.
      const status = { MUST: 'error', SHOULD: 'warn', MAY: 'notice' }[audit.name.split(' ')[0]] ?? 'error';
      result = { id: audit.id, name: audit.name, status, reason: `request failed: ${e.cause ?? e}` };
    }
    if (result.status === 'ok') {
      ok++;
      continue;
    }
    const line = `[${result.status}] ${result.name} (${result.id}): ${result.reason}`;
    if (result.status === 'notice') t.diagnostic(`MAY not met: ${line}`);
    else failures.push(line);
  }
  t.diagnostic(`${ok}/${audits.length} audits passed`);
  for (const f of failures) t.diagnostic(f);
  assert.deepEqual(failures, [], `GraphQL-over-HTTP MUST/SHOULD failures:\n${failures.join('\n')}`);
});
