// Browser entry of the authql Apollo Client app (bundled by esbuild, see lib/bundle.mjs).
// The page's fetch wrapper keeps every response body the app reads, so a test can check that
// no refresh token ever reaches page script.
import { createAuthqlClient, errorCodes, graphqlErrorsOf, operationsFromSource } from '../src/authql-client.mjs';
import operationsSource from '../../examples/operations.graphql';

const responses = [];

async function capturingFetch(input, init) {
  const res = await fetch(input, init);
  const body = await res.clone().text();
  responses.push({ url: String(typeof input === 'string' ? input : input.url), status: res.status, body });
  return res;
}

async function sha256(text) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

const operations = operationsFromSource(operationsSource);

window.authqlApp = {
  responses,
  errorCodes,
  graphqlErrorsOf,
  /** A client in cookie mode: credentials 'include', refresh without an argument. */
  create(uri) {
    return createAuthqlClient({ uri, fetch: capturingFetch, sha256, operations, cookieMode: true });
  },
};
document.title = 'authql app ready';
