// A fetch for Apollo's HttpLink that records every GraphQL request and the answer it got,
// so tests can check what went over the wire (persisted-query hashes, refreshes, retries).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const OPERATIONS_SOURCE = readFileSync(
  fileURLToPath(new URL('../../examples/operations.graphql', import.meta.url)),
  'utf8',
);

export function recordingFetch(log, { timeoutMs = 15000 } = {}) {
  return async (input, init = {}) => {
    const url = new URL(typeof input === 'string' ? input : input.url);
    const method = (init.method || 'GET').toUpperCase();
    let payload = {};
    if (method === 'GET') {
      payload = {
        query: url.searchParams.get('query'),
        operationName: url.searchParams.get('operationName'),
        extensions: JSON.parse(url.searchParams.get('extensions') || 'null'),
      };
    } else if (typeof init.body === 'string') {
      payload = JSON.parse(init.body);
    }
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = init.signal ? AbortSignal.any([init.signal, timeout]) : timeout;
    const res = await fetch(input, { ...init, signal });
    const text = await res.clone().text();
    let body = null;
    try { body = JSON.parse(text); } catch { /* not JSON */ }
    log.push({
      method,
      operationName: payload.operationName ?? null,
      hasQuery: Boolean(payload.query),
      hash: payload.extensions?.persistedQuery?.sha256Hash ?? null,
      status: res.status,
      codes: (body?.errors ?? []).map((e) => e.extensions?.code),
      reasons: (body?.errors ?? []).map((e) => e.extensions?.reason),
      body,
    });
    return res;
  };
}
