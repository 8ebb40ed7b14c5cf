// Node helpers for authql's `sessionEvents` subscription over graphql-transport-ws, with the
// real `graphql-ws` client and the `ws` package (Node 20 has no global WebSocket).
import { createClient } from 'graphql-ws';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';

export const SESSION_EVENTS = 'subscription SessionEvents { sessionEvents { type sessionId at current } }';

/** authql's /graphql as a ws:// URL. */
export const wsUrl = (server) => server.graphql.replace(/^http/, 'ws');

/** Resolve when `check()` returns a truthy value (returned), or fail after `timeoutMs`. */
export async function until(check, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * A graphql-ws client subscribed to sessionEvents. `token` is a string or a function returning
 * one (called at every connection attempt); null sends no connection_init payload. Option
 * `connectionParams` replaces the payload altogether.
 * Everything it sees goes, in order, into `timeline`: { kind: 'event', event },
 * { kind: 'closed', code, reason }, { kind: 'error', error }, { kind: 'complete' },
 * { kind: 'connected' }.
 */
export function subscribeSessionEvents(url, token, { retryAttempts = 0, retryWait, query = SESSION_EVENTS, connectionParams } = {}) {
  const timeline = [];
  const tokenOf = typeof token === 'function' ? token : () => token;
  const client = createClient({
    url,
    webSocketImpl: WebSocket,
    retryAttempts,
    ...(retryWait ? { retryWait } : {}),
    connectionParams: connectionParams ?? (async () => {
      const t = await tokenOf();
      return t == null ? undefined : { Authorization: `Bearer ${t}` };
    }),
    on: {
      connected: () => timeline.push({ kind: 'connected' }),
      closed: (event) => timeline.push({ kind: 'closed', code: event?.code, reason: event?.reason }),
    },
  });
  const unsubscribe = client.subscribe(
    { query },
    {
      next: (result) => {
        if (result.data?.sessionEvents) timeline.push({ kind: 'event', event: result.data.sessionEvents });
        else timeline.push({ kind: 'result', result });
      },
      error: (error) => timeline.push({ kind: 'error', error }),
      complete: () => timeline.push({ kind: 'complete' }),
    },
  );
  const events = () => timeline.filter((t) => t.kind === 'event').map((t) => t.event);
  const closes = () => timeline.filter((t) => t.kind === 'closed');
  return {
    client,
    timeline,
    events,
    closes,
    /** The first event matching `pred`, waiting for it. */
    waitEvent: (pred, what = 'an event', timeoutMs) => until(() => events().find(pred), what, timeoutMs),
    /** The first close, waiting for it. */
    waitClose: (timeoutMs) => until(() => closes()[0], 'the socket to close', timeoutMs),
    async stop() {
      unsubscribe();
      await client.dispose();
    },
  };
}

/**
 * Wait until the subscription is live: the protocol does not acknowledge `subscribe`, so log
 * the user in (`login()` returns the new session id) until that session's CREATED arrives.
 * Returns the session ids it created.
 */
export async function whenLive(sub, login, { attempts = 20, perAttemptMs = 500 } = {}) {
  const created = [];
  for (let i = 0; i < attempts; i++) {
    const id = await login();
    created.push(id);
    try {
      await sub.waitEvent((e) => e.type === 'CREATED' && e.sessionId === id, 'CREATED', perAttemptMs);
      return created;
    } catch { /* subscribed after that login: try again */ }
  }
  throw new Error(`the subscription never went live; timeline: ${JSON.stringify(sub.timeline)}`);
}
