// Browser entry for the tests of @authql/client in Chromium (bundled by esbuild, see
// lib/bundle.mjs): the package's link in front of Apollo Client 4, driven from the
// test through `window.authqlTest`. Everything the link tells the page (its events, and what
// `sessionEvents()` and the socket saw) goes, with `Date.now()`, into `timeline`.
import { ApolloClient, InMemoryCache } from '@apollo/client';
import { authqlOperations, createAuthqlLink, graphqlErrorsOf } from '@authql/client';

const LINK_EVENTS = ['signedIn', 'renewed', 'signedOut', 'warning'];

/** A value that survives `page.evaluate` (plain JSON). */
const plain = (value) => (value === undefined ? null : JSON.parse(JSON.stringify(value)));

/** An outcome that never throws: `{ ok: true, value }` or `{ ok: false, codes, reasons, name }`. */
async function outcome(run) {
  try {
    return { ok: true, value: plain(await run()) };
  } catch (error) {
    const errors = graphqlErrorsOf(error);
    return {
      ok: false,
      codes: errors.map((e) => e.extensions?.code ?? null),
      reasons: errors.map((e) => e.extensions?.reason ?? null),
      name: error?.name ?? null,
      network: errors.length === 0,
    };
  }
}

const record = (entry) => window.authqlTest.timeline.push({ at: Date.now(), ...entry });

window.authqlTest = {
  link: null,
  client: null,
  ops: null,
  /** In order: { kind, at, ... } for each link event, sessionEvents item and socket change. */
  timeline: [],

  /**
   * A link (`createAuthqlLink({ uri, mode, wsUri })`), an Apollo Client over it and the typed
   * operations. The socket's `connected`/`closed` are recorded too; `retryWaitMs` sets a fixed
   * wait between reconnections. `storage`: `'localStorage'`, `'sessionStorage'` or `null`
   * (memory only; left out: the link's default); `storageKey` and `requestTimeoutMs` go to the
   * link as they are.
   */
  create({ uri, mode, wsUri, storage, storageKey, requestTimeoutMs, retryAttempts = 3, retryWaitMs = 200 }) {
    this.client?.stop();
    this.link?.dispose();
    this.timeline.length = 0;
    this.link = createAuthqlLink({
      uri,
      mode,
      ...(wsUri ? { wsUri } : {}),
      ...(storage !== undefined ? { storage: storage === null ? null : window[storage] } : {}),
      ...(storageKey !== undefined ? { storageKey } : {}),
      ...(requestTimeoutMs !== undefined ? { requestTimeoutMs } : {}),
      wsOptions: {
        retryAttempts,
        retryWait: () => new Promise((resolve) => setTimeout(resolve, retryWaitMs)),
        on: {
          connected: () => record({ kind: 'socketConnected' }),
          closed: (event) => record({ kind: 'socketClosed', code: event?.code ?? null }),
        },
      },
    });
    for (const event of LINK_EVENTS) this.link.on(event, (value) => record({ kind: event, ...plain(value) }));
    this.client = new ApolloClient({ link: this.link, cache: new InMemoryCache() });
    this.ops = authqlOperations(this.client);
    return { diagnostics: this.diagnostics() };
  },

  diagnostics() {
    return plain(this.link.diagnostics);
  },

  tokens() {
    return plain(this.link.tokens);
  },

  /** Subscribes to `link.sessionEvents()`; items, errors and completion go into the timeline. */
  subscribeSessionEvents() {
    this.sessionEventsSubscription?.unsubscribe();
    this.sessionEventsSubscription = this.link.sessionEvents().subscribe({
      next: (event) => record({ kind: 'sessionEvent', event: plain(event) }),
      error: (error) => record({ kind: 'sessionEventsError', name: error?.name ?? null, code: error?.code ?? null }),
      complete: () => record({ kind: 'sessionEventsComplete' }),
    });
  },

  /**
   * Runs a typed operation (`call('me')`, `call('register', { input })`, with the helpers'
   * options as the next argument) or, with a `link.` prefix, a method of the link
   * (`call('link.restore')`, `call('link.signOut')`). Never throws.
   */
  call(method, ...args) {
    if (method.startsWith('link.')) {
      const name = method.slice('link.'.length);
      return outcome(() => this.link[name](...args));
    }
    if (typeof this.ops?.[method] !== 'function') return Promise.resolve({ ok: false, codes: [], reasons: [], name: 'NoSuchOperation' });
    return outcome(() => this.ops[method](...args));
  },

  /** `count` calls of `method` started at once; their outcomes in order. */
  callMany(count, method, ...args) {
    return Promise.all(Array.from({ length: count }, () => this.call(method, ...args)));
  },

  /** Waits until `Date.now() >= at` (ms since the epoch), then calls; when it started and ended. */
  async callAt(at, method, ...args) {
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - Date.now())));
    const startedAt = Date.now();
    const result = await this.call(method, ...args);
    return { startedAt, endedAt: Date.now(), ...result };
  },
};

document.title = 'authql package ready';
