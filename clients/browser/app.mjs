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
  client: null,
  /**
   * A client in cookie mode: credentials 'include', refresh without an argument. Subscriptions
   * go over WebSocket to the same URL (ws:); `ws` passes more options to graphql-ws's
   * createClient (`retryWaitMs` sets a fixed wait between reconnections).
   */
  create(uri, { ws = {} } = {}) {
    this.client?.stop();
    const { retryWaitMs, ...wsOptions } = ws;
    if (retryWaitMs !== undefined) wsOptions.retryWait = () => new Promise((r) => setTimeout(r, retryWaitMs));
    this.client = createAuthqlClient({
      uri,
      fetch: capturingFetch,
      sha256,
      operations,
      cookieMode: true,
      wsUrl: uri.replace(/^http/, 'ws'),
      wsOptions,
    });
    return this.client;
  },
  /**
   * What the sessionEvents subscription saw, in order: { kind: 'event', event },
   * { kind: 'connected' }, { kind: 'closed', code, reason }, { kind: 'error', codes, name },
   * { kind: 'complete' }.
   */
  wsTimeline: [],
  subscribeSessionEvents() {
    const timeline = (this.wsTimeline = []);
    const ws = this.client.wsClient;
    ws.on('connected', () => timeline.push({ kind: 'connected' }));
    ws.on('closed', (e) => timeline.push({ kind: 'closed', code: e?.code, reason: e?.reason }));
    this.unsubscribe = this.client.sessionEvents({
      next: (event) => timeline.push({ kind: 'event', event }),
      error: (error) => timeline.push({ kind: 'error', codes: errorCodes(error), name: error?.name }),
      complete: () => timeline.push({ kind: 'complete' }),
    });
  },
  /**
   * Call a method of the client; never throws, so tests can look at the outcome:
   * { ok: true, value, state } or { ok: false, codes, reasons, network, state }.
   */
  async call(method, ...args) {
    const snapshot = () => ({ ...this.client.state });
    try {
      return { ok: true, value: await this.client[method](...args), state: snapshot() };
    } catch (error) {
      const errors = graphqlErrorsOf(error);
      return {
        ok: false,
        codes: errors.map((e) => e.extensions?.code),
        reasons: errors.map((e) => e.extensions?.reason),
        network: errors.length === 0,
        errorName: error?.name,
        state: snapshot(),
      };
    }
  },
  errorCodes,
};
document.title = 'authql app ready';
