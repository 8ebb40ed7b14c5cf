import { endingReason, RenewalError, type AuthqlError, type SignOutReason } from './errors.js';
import type { Diagnostic } from './site.js';

/**
 * Where token mode keeps the token pair: `localStorage` and `sessionStorage` fit, and so does
 * any object with these three methods (they may return promises).
 */
export interface TokenStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/** The tokens of the signed-in session, as this client holds them. */
export interface Tokens {
  /** The JWT to send as `Authorization: Bearer`. */
  accessToken: string;
  /** Token mode: the refresh token, usable once (`null` in cookie mode). */
  refreshToken: string | null;
  /** When authql says the access token expires (RFC 3339, authql's clock). */
  accessTokenExpiresAt: string;
  /** When the session, and its refresh token, expires (RFC 3339). */
  refreshTokenExpiresAt: string | null;
  /** The session's id (`Session.id`), when the answer selected it. */
  sessionId: string | null;
  /**
   * When to renew, in milliseconds since the epoch by this machine's clock: the token's
   * lifetime (`exp - iat`) from when it arrived, less a tenth of it (at most 5 s) and the second
   * `iat` may be behind, so that a skewed clock neither renews too early nor sends expired
   * tokens.
   */
  renewAt: number;
  /** A random id of this issue of tokens: tabs tell their copies apart by it. */
  id: string;
  /**
   * When this client took the pair, in milliseconds since the epoch by this machine's clock
   * (which the tabs of an origin share): of two copies, the later one is the current pair.
   */
  issuedAt: number;
}

/** What an `AuthqlSession` tells the app (`on(event, listener)`). */
export interface SessionEvents {
  /** Tokens arrived from an operation that issues them (register, login, ...). */
  signedIn: { sessionId: string | null; accessTokenExpiresAt: string; otherTab: boolean };
  /** The access token was renewed (by this tab, or by another one of this origin). */
  renewed: { sessionId: string | null; accessTokenExpiresAt: string; otherTab: boolean };
  /** The session is over: sign the user out. `otherTab`: another tab of this origin saw it. */
  signedOut: { reason: SignOutReason; otherTab: boolean };
  /** Something in the set-up keeps the session from working (see `Diagnostic`). */
  warning: Diagnostic;
}

export type Mode = 'token' | 'cookie';

export interface SessionOptions {
  /** authql's `/graphql` URL, absolute. */
  uri: string;
  mode: Mode;
  /** Token mode: where the pair lives; `null` keeps it in memory only. */
  storage: TokenStorage | null;
  /** Key of the pair in `storage`, and name of the cross-tab lock and channel. */
  storageKey: string;
  fetch: typeof fetch;
  /** Share renewals and sign-outs with the other tabs of this origin (Web Locks + BroadcastChannel). */
  crossTab: boolean;
  /** How long a `refresh` or `logout` may take before it counts as failed for now, in milliseconds. */
  requestTimeoutMs: number;
}

type PeerMessage =
  | { type: 'tokens'; tokens: Tokens; signedIn: boolean }
  | { type: 'ask'; id: string }
  | { type: 'signedOut'; reason: SignOutReason; sessionId: string | null; at: number };

/** Non-secret facts the tabs share in `localStorage` (never a token). */
interface Marker {
  /** Id and renewal time of the newest pair among the tabs. */
  id: string;
  renewAt: number;
  issuedAt: number;
  /** Cookie mode: a page signed in and no refresh through the cookie has worked since. */
  unproven: boolean;
}

interface LockManagerLike {
  request<T>(name: string, callback: () => Promise<T>): Promise<T>;
  request<T>(name: string, options: { ifAvailable: boolean }, callback: (lock: unknown) => Promise<T>): Promise<T>;
  query?(): Promise<{ held?: { name?: string }[] }>;
}

const REFRESH = `mutation AuthqlRefresh($refreshToken: String) {
  refresh(refreshToken: $refreshToken) { accessToken refreshToken accessTokenExpiresAt refreshTokenExpiresAt session { id } }
}`;
const LOGOUT = 'mutation AuthqlLogout($refreshToken: String) { logout(refreshToken: $refreshToken) }';

/** How long a tab waits for another tab to hand over a token it announced, in milliseconds. */
const PEER_WAIT_MS = 1000;
/** How long the tab that renewed keeps the mark that the pair it rotated away is gone (see `markRotated`). */
const ROTATED_MARK_MS = 10_000;
/** How long a failed renewal of a pair makes the other tabs' renewals of it fail at once. */
const FAILED_MARK_MS = 2000;

const randomId = () =>
  globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

/** `exp - iat` of a JWT in milliseconds, or `null` (read for timing only, never trusted). */
function lifetimeMs(jwt: string): number | null {
  try {
    const part = jwt.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '='))) as {
      exp?: unknown;
      iat?: unknown;
    };
    if (typeof claims.exp === 'number' && typeof claims.iat === 'number' && claims.exp > claims.iat) {
      return (claims.exp - claims.iat) * 1000;
    }
  } catch {
    // not a JWT we can read
  }
  return null;
}

/** An answer that carries a token pair (`AuthPayload`, whatever fields the operation selected). */
export interface PayloadLike {
  accessToken: string;
  refreshToken?: string | null;
  accessTokenExpiresAt?: string;
  refreshTokenExpiresAt?: string | null;
  session?: { id?: string } | null;
}

/**
 * The signed-in session of one tab: its tokens, their renewal (once for every caller waiting
 * at that moment, and once for every tab of the origin), and the sign-out. Framework-free;
 * `AuthqlLink` puts it in front of Apollo Client.
 */
export class AuthqlSession {
  private current: Tokens | null = null;
  private inflight: Promise<string | null> | null = null;
  /** This tab's `logout` in flight. */
  private leaving: Promise<boolean> | null = null;
  /** A sign-in happened in this page and no cookie refresh has worked since (cookie mode). */
  private signedInHere = false;
  /** The last renewal said there is no session: do not try again until a sign-in. */
  private knownSignedOut = false;
  /** Moved on by every sign-out: a renewal that began before one is not taken after it. */
  private epoch = 0;
  /** When the last sign-out happened here: a pair issued before it never comes back. */
  private signedOutAt = 0;
  private readonly listeners = new Map<keyof SessionEvents, Set<(value: never) => void>>();
  private readonly channel: BroadcastChannel | null;
  private readonly locks: LockManagerLike | null;
  private readonly waiting = new Map<string, (tokens: Tokens) => void>();
  private readonly warned = new Set<string>();
  /**
   * What the tabs coordinate on: the lock, the channel and the marker. Token mode: the stored
   * pair (`storageKey`); cookie mode: authql's cookie, one per authql for the whole origin.
   */
  private readonly sharedKey: string;
  /** Resolves once the stored pair (token mode) has been read. */
  readonly ready: Promise<void>;
  /** How many `refresh` requests this tab sent (for tests and metrics). */
  refreshesSent = 0;

  constructor(private readonly options: SessionOptions) {
    const locks = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks;
    const shared = options.crossTab && locks !== undefined && typeof BroadcastChannel === 'function';
    this.sharedKey = options.mode === 'cookie' ? `authql:cookie:${options.uri}` : options.storageKey;
    this.locks = shared ? locks! : null;
    this.channel = shared ? new BroadcastChannel(`authql:${this.sharedKey}`) : null;
    if (this.channel) this.channel.onmessage = (event: MessageEvent<PeerMessage>) => this.fromPeer(event.data);
    this.ready = this.load().then(
      (stored) => {
        if (stored && !this.current) this.current = stored;
      },
      () => undefined,
    );
  }

  /** The tokens held now (a copy), or `null` when signed out. */
  get tokens(): Tokens | null {
    return this.current ? { ...this.current } : null;
  }

  get mode(): Mode {
    return this.options.mode;
  }

  /** Listens to `event`; returns the function that stops listening. */
  on<E extends keyof SessionEvents>(event: E, listener: (value: SessionEvents[E]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as (value: never) => void);
    return () => set.delete(listener as (value: never) => void);
  }

  private emit<E extends keyof SessionEvents>(event: E, value: SessionEvents[E]): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        (listener as (value: SessionEvents[E]) => void)(value);
      } catch (error) {
        console.error('@authql/client: a listener threw', error);
      }
    }
  }

  /** Logs a diagnostic once (`console.warn`) and emits it as a `warning`. */
  warn(diagnostic: Diagnostic): void {
    if (this.warned.has(diagnostic.code)) return;
    this.warned.add(diagnostic.code);
    console.warn(`@authql/client ${diagnostic.code}: ${diagnostic.message}`);
    this.emit('warning', diagnostic);
  }

  private static live(tokens: Tokens | null): boolean {
    return tokens !== null && Date.now() < tokens.renewAt;
  }

  /** Whether a renewal may work: a refresh token to send, or a cookie that may be there. */
  mayRenew(): boolean {
    if (this.options.mode === 'token') return Boolean(this.current?.refreshToken);
    return !this.knownSignedOut || this.current !== null;
  }

  /**
   * The access token to send now: the one held while it lives; an expired one renewed first;
   * in cookie mode with none yet, the session the cookie holds (once per page until a sign-in).
   * `null` when there is no session. Throws `RenewalError` when a renewal cannot be done now.
   */
  async accessToken(): Promise<string | null> {
    await this.ready;
    const held = this.current;
    if (held && AuthqlSession.live(held)) return held.accessToken;
    if (held === null && this.options.mode === 'token') return null;
    if (!this.mayRenew()) return held?.accessToken ?? null;
    return this.renew(held?.accessToken ?? null);
  }

  /**
   * A new access token for the one that was refused or expired (`stale`): another caller's
   * or another tab's, when one renewed meanwhile, else from `refresh`. One `refresh` at a
   * time in this tab, and one in every tab of the origin (a Web Lock held while it runs, the
   * result handed to the others). Resolves `null` when the session is over (`signedOut` is
   * emitted); rejects with `RenewalError` when authql cannot renew now (unreachable, too
   * slow, `SERVICE_UNAVAILABLE`, `RATE_LIMITED`, ...), keeping the session.
   */
  renew(stale: string | null): Promise<string | null> {
    const held = this.current;
    if (held && AuthqlSession.live(held) && held.accessToken !== stale) return Promise.resolve(held.accessToken);
    if (!this.inflight) {
      const since = Date.now();
      this.inflight = this.exclusive(() => this.renewAlone(stale, since)).finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  /**
   * Holds the origin's renewal lock (after this tab's renewal or sign-out in flight) until the
   * function it resolves is called, or `limitMs` at the most. Cookie mode sends sign-ins under
   * it: a sign-out's answer clears authql's cookie, and must not land after a sign-in's answer
   * set the new session's.
   */
  hold(limitMs: number): Promise<() => void> {
    return new Promise((held) => {
      const whileHeld = () =>
        new Promise<void>((release) => {
          const timer = setTimeout(release, limitMs);
          held(() => {
            clearTimeout(timer);
            release();
          });
        });
      const local = Promise.all([this.inflight, this.leaving]).catch(() => undefined);
      void local.then(() => this.exclusive(whileHeld)).catch(() => held(() => undefined));
    });
  }

  /** Runs `work` holding the origin's renewal lock (or, without Web Locks, after this tab's renewal). */
  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    if (this.locks) return this.locks.request(`authql:${this.sharedKey}`, work);
    return work();
  }

  private async renewAlone(stale: string | null, since: number): Promise<string | null> {
    const adopted = (await this.fromOtherTabs(stale)) ?? (await this.fromTabThatRotated(stale));
    if (adopted) return adopted.accessToken;
    if (this.options.mode === 'token' && !this.current?.refreshToken) return null;
    if (this.options.mode === 'cookie' && this.knownSignedOut && !this.current) return null;
    const rotating = this.current;
    if (rotating && (await this.failedSince(rotating.id, since))) {
      throw new RenewalError('another tab could not renew the session a moment ago: try again later');
    }
    try {
      return await this.refresh();
    } catch (error) {
      if (rotating && error instanceof RenewalError) await this.markFailed(rotating.id);
      throw error;
    }
  }

  /**
   * Takes `tokens` when they are newer than the pair held and than the last sign-out (a copy
   * from storage or another tab); token mode keeps them in this tab's storage too (a
   * `sessionStorage` is a copy per tab). Resolves whether they were taken.
   */
  private adopt(tokens: Tokens, otherTab: boolean, how: 'signedIn' | 'renewed' = 'renewed'): boolean {
    if (typeof tokens?.accessToken !== 'string' || typeof tokens.issuedAt !== 'number') return false;
    if (tokens.issuedAt <= (this.current?.issuedAt ?? 0) || tokens.issuedAt <= this.signedOutAt) return false;
    this.current = tokens;
    this.knownSignedOut = false;
    if (otherTab && this.options.mode === 'token') void this.store(tokens);
    this.emit(how, { sessionId: tokens.sessionId, accessTokenExpiresAt: tokens.accessTokenExpiresAt, otherTab });
    return true;
  }

  /** The newest pair among this tab, its storage and the other tabs, when it is usable for `stale`. */
  private async fromOtherTabs(stale: string | null): Promise<Tokens | null> {
    if (this.options.mode === 'token' && this.options.storage) {
      const stored = await this.load();
      if (stored) this.adopt(stored, true);
      else if (this.current) {
        // Another tab signed out (its message may still be on its way), if it left word of it.
        const word = await this.signedOutWord();
        const ours = word?.sessionId === null || word?.sessionId === this.current.sessionId;
        if (word && ours && word.at > this.current.issuedAt) {
          await this.signOut(word.reason, { otherTab: true, broadcast: false, sessionId: word.sessionId });
          return null;
        }
      }
    }
    const held = this.current;
    if (held && AuthqlSession.live(held) && held.accessToken !== stale) return held;
    const marker = this.readMarker();
    if (!this.channel || !marker || marker.id === held?.id) return null;
    // Another tab holds a newer pair than this one: never renew with this one's (its refresh
    // token was rotated away); ask for that pair, whether or not it still lives.
    if (held && marker.issuedAt <= held.issuedAt) return null;
    if (!held && marker.renewAt <= Date.now()) return null; // nothing held: the cookie or a sign-in will do
    const tokens = await new Promise<Tokens | null>((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(marker.id);
        resolve(null);
      }, PEER_WAIT_MS);
      this.waiting.set(marker.id, (tokens) => {
        clearTimeout(timer);
        resolve(tokens);
      });
      this.post({ type: 'ask', id: marker.id });
    });
    const now = this.current;
    if (now && now.id === tokens?.id) return AuthqlSession.live(now) && now.accessToken !== stale ? now : null;
    if (held && this.options.mode === 'token' && this.current === held) {
      // The tab holding the newer pair is gone (closed, discarded): this tab's pair is dead, and
      // sending its refresh token would end the session in every tab (REFRESH_TOKEN_REUSED).
      await this.signOut('REVOKED', { otherTab: true, broadcast: false });
    }
    return null;
  }

  /**
   * The lock is granted without waiting for what the tab that held it wrote: Chromium keeps a
   * copy of localStorage in each renderer process, updated after the fact, and BroadcastChannel
   * messages are not ordered with Web Locks either. So a tab granted the lock just after another
   * one renewed may still hold, and read, the pair that tab rotated away; sent again, its refresh
   * token is REFRESH_TOKEN_REUSED (the session revoked) or, in cookie mode, a second refresh.
   * The tab that renewed holds a lock named after the rotated pair (`markRotated`) before it lets
   * the renewal lock go; the lock manager is one for the origin, so a tab granted the renewal
   * lock after that sees the mark and waits for the new pair instead of refreshing.
   */
  private async fromTabThatRotated(stale: string | null): Promise<Tokens | null> {
    const id = this.current?.id;
    if (!id || !(await this.marks()).includes(this.rotatedLockName(id))) return null;
    const deadline = Date.now() + PEER_WAIT_MS;
    for (;;) {
      const held = this.current;
      // The new pair came over the channel (or the session ended there).
      if (held?.id !== id) return held && AuthqlSession.live(held) && held.accessToken !== stale ? held : null;
      const tokens = await this.fromOtherTabs(stale);
      if (tokens) return tokens;
      if (Date.now() >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    // Token mode never sends a refresh token another tab rotated away: try again later. The
    // cookie, kept by the browser, is the new one: a refresh with it works.
    if (this.options.mode === 'token') {
      throw new RenewalError('another tab renewed the session and its tokens have not arrived yet');
    }
    return null;
  }

  private failedLockPrefix(id: string): string {
    return `authql:${this.sharedKey}:failed:${id}:`;
  }

  /**
   * Marks that renewing the pair `id` just failed for now, for `FAILED_MARK_MS`: the tabs that
   * were waiting for the lock to renew the same pair fail at once too, instead of each waiting
   * out its own `requestTimeoutMs` (and, in token mode, sending the same refresh token again).
   */
  private markFailed(id: string): Promise<void> {
    return this.mark(`${this.failedLockPrefix(id)}${Date.now()}`, FAILED_MARK_MS);
  }

  /** Whether a renewal of the pair `id` failed since `since` (ms), while this one waited (see `markFailed`). */
  private async failedSince(id: string, since: number): Promise<boolean> {
    const prefix = this.failedLockPrefix(id);
    return (await this.marks()).some((name) => name.startsWith(prefix) && Number(name.slice(prefix.length)) >= since);
  }

  private rotatedLockName(id: string): string {
    return `authql:${this.sharedKey}:rotated:${id}`;
  }

  /** Marks the pair `id` as rotated away, for `ROTATED_MARK_MS`; resolves once the mark is held. */
  private markRotated(id: string): Promise<void> {
    return this.mark(this.rotatedLockName(id), ROTATED_MARK_MS);
  }

  /**
   * A mark every tab of the origin can see at once and in order with the renewal lock: a Web
   * Lock named `name`, held for `ms` (taken only if free). Resolves once it is held.
   */
  private mark(name: string, ms: number): Promise<void> {
    const locks = this.locks;
    if (!locks?.query) return Promise.resolve();
    return new Promise<void>((marked) => {
      locks
        .request(name, { ifAvailable: true }, (lock) => {
          marked();
          return lock ? new Promise<void>((release) => setTimeout(release, ms)) : Promise.resolve();
        })
        .catch(() => marked());
    });
  }

  /** The names of the marks (Web Locks) held in the origin now; none without Web Locks. */
  private async marks(): Promise<string[]> {
    if (!this.locks?.query) return [];
    const { held = [] } = await this.locks.query();
    return held.flatMap((lock) => (lock.name ? [lock.name] : []));
  }

  /**
   * POSTs a GraphQL request to authql with credentials and a time limit (`requestTimeoutMs`,
   * also when the `fetch` given ignores its abort signal); the parsed answer.
   */
  private async post_(query: string, variables: Record<string, unknown>, accessToken?: string): Promise<unknown> {
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
    };
    if (accessToken) headers.authorization = `Bearer ${accessToken}`;
    const abort = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        abort.abort();
        reject(new Error(`authql did not answer within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
    });
    const answer = (async () => {
      const response = await this.options.fetch(this.options.uri, {
        method: 'POST',
        headers,
        credentials: this.options.mode === 'token' ? 'same-origin' : 'include',
        body: JSON.stringify({ query, variables }),
        signal: abort.signal,
      });
      return response.json() as Promise<unknown>;
    })();
    answer.catch(() => undefined); // settled by the race below; a late failure is nobody's
    try {
      return await Promise.race([answer, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async refresh(): Promise<string | null> {
    const token = this.options.mode === 'token';
    const rotating = this.current;
    const variables = token ? { refreshToken: rotating!.refreshToken } : {};
    type Answer = { data?: { refresh?: PayloadLike } | null; errors?: unknown } | null;
    let body: Answer = null;
    const epoch = this.epoch;
    this.refreshesSent++;
    try {
      body = (await this.post_(REFRESH, variables)) as Answer;
    } catch (cause) {
      throw new RenewalError('authql could not be reached in time to renew the access token', [], cause);
    }
    // Signed out meanwhile (here or in another tab): the answer must not bring the session back.
    if (epoch !== this.epoch) return null;
    // Signed in anew meanwhile: the new session stays, the old one's renewal is dropped.
    const now = this.current;
    if (rotating && now && now.sessionId !== rotating.sessionId && now.issuedAt > rotating.issuedAt) {
      return now.accessToken;
    }
    const payload = body?.data?.refresh;
    if (typeof payload?.accessToken === 'string') {
      await this.take(payload, 'renewed');
      if (!token) this.proveCookie();
      // Still holding the renewal lock: the tabs granted it next see the mark.
      if (rotating) await this.markRotated(rotating.id);
      return payload.accessToken;
    }
    const errors = Array.isArray(body?.errors) ? (body.errors as AuthqlError[]) : [];
    const reason = endingReason(errors);
    if (!reason) throw new RenewalError('authql did not renew the access token', errors);
    if (reason === 'MISSING' && !token && (this.signedInHere || this.readMarker()?.unproven)) {
      this.warn({
        code: 'COOKIE_NOT_STORED',
        message:
          'this app signed in, but the refresh that followed sent no refresh cookie: the browser ' +
          'did not keep it. Usually authql is on another site than the page (a dev server on ' +
          'localhost calling 127.0.0.1, or another domain): proxy /graphql through the page\'s ' +
          'own server, or use one host name for both; see the @authql/client README.',
      });
    }
    this.knownSignedOut = true;
    await this.signOut(reason, { sessionId: rotating?.sessionId ?? null });
    return null;
  }

  /**
   * Takes the token pair of an answer (`register`, `login`, `refresh`, any field answering an
   * `AuthPayload`): kept in memory, in `storage` (token mode) and handed to the other tabs.
   * Never throws: a storage that refuses the pair is reported (`STORAGE_FAILED`) and the pair
   * kept in memory.
   */
  async take(payload: PayloadLike, how: 'signedIn' | 'renewed'): Promise<void> {
    const lifetime = lifetimeMs(payload.accessToken);
    const arrived = Date.now();
    // `iat` and `exp` are whole seconds: the token may have been issued up to a second before
    // `iat` says, so it is renewed that second earlier too (never before half its lifetime).
    const renewAt =
      lifetime !== null
        ? arrived + Math.max(lifetime / 2, lifetime - Math.min(5000, lifetime / 10) - 1000)
        : Date.parse(payload.accessTokenExpiresAt ?? '') || arrived;
    if (this.options.mode === 'token' && payload.refreshToken === null) {
      this.warn({
        code: 'MODE_MISMATCH',
        message:
          'authql keeps the refresh token in a cookie (REFRESH_TOKEN_COOKIE=true) but this client ' +
          "is in mode 'token': use mode 'cookie'.",
      });
    }
    const tokens: Tokens = {
      accessToken: payload.accessToken,
      refreshToken:
        this.options.mode === 'token'
          ? typeof payload.refreshToken === 'string'
            ? payload.refreshToken
            : (this.current?.refreshToken ?? null)
          : null,
      accessTokenExpiresAt:
        typeof payload.accessTokenExpiresAt === 'string' ? payload.accessTokenExpiresAt : new Date(renewAt).toISOString(),
      refreshTokenExpiresAt: typeof payload.refreshTokenExpiresAt === 'string' ? payload.refreshTokenExpiresAt : null,
      sessionId:
        typeof payload.session?.id === 'string'
          ? payload.session.id
          : how === 'renewed'
            ? (this.current?.sessionId ?? null)
            : null,
      renewAt,
      id: randomId(),
      // Strictly after the pair held and the last sign-out, whatever the clock did.
      issuedAt: Math.max(arrived, (this.current?.issuedAt ?? 0) + 1, this.signedOutAt + 1),
    };
    this.current = tokens;
    this.knownSignedOut = false;
    const unproven = this.options.mode === 'cookie' && (how === 'signedIn' || Boolean(this.readMarker()?.unproven));
    if (how === 'signedIn' && this.options.mode === 'cookie') this.signedInHere = true;
    if (this.options.mode === 'token') await this.store(tokens);
    this.writeMarker({ id: tokens.id, renewAt: tokens.renewAt, issuedAt: tokens.issuedAt, unproven });
    this.post({ type: 'tokens', tokens, signedIn: how === 'signedIn' });
    this.emit(how, { sessionId: tokens.sessionId, accessTokenExpiresAt: tokens.accessTokenExpiresAt, otherTab: false });
  }

  /** A refresh through the cookie worked: the browser keeps it. */
  private proveCookie(): void {
    this.signedInHere = false;
    const marker = this.readMarker();
    if (marker?.unproven) this.writeMarker({ ...marker, unproven: false });
  }

  /**
   * A call of the app's `storage`, failed when it does not settle within `requestTimeoutMs`
   * (an IndexedDB open that is blocked): the tabs' lock is never held for it without end.
   */
  private async bounded<T>(call: () => T | Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('the storage did not answer in time')), this.options.requestTimeoutMs);
    });
    try {
      return await Promise.race([Promise.resolve().then(call), limit]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Token mode: keeps the pair in `storage`. A storage that refuses it is reported, never
   * thrown, and the older pair is taken out of it: a reload must not bring back a refresh token
   * that was rotated away.
   */
  private async store(tokens: Tokens): Promise<void> {
    const storage = this.options.storage;
    if (!storage) return;
    try {
      await this.bounded(() => storage.setItem(this.options.storageKey, JSON.stringify(tokens)));
      await this.bounded(() => storage.removeItem(this.signedOutKey));
    } catch (error) {
      this.warn({
        code: 'STORAGE_FAILED',
        message: `the storage refused the session's tokens (${String(error)}): they are kept in memory only.`,
      });
      await this.bounded(() => storage.removeItem(this.options.storageKey)).catch(() => undefined);
    }
  }

  /**
   * Forgets the session here and in every tab of the origin, and emits `signedOut` where one
   * was held. Says nothing to authql: `logout` does. With `sessionId`, only that session ends:
   * a tab that holds another one (a sign-in meanwhile) keeps it.
   */
  async signOut(
    reason: SignOutReason,
    { otherTab = false, broadcast = true, sessionId = null as string | null, at = Date.now() } = {},
  ): Promise<void> {
    const held = this.current;
    if (sessionId && held?.sessionId && held.sessionId !== sessionId) return;
    if (otherTab && held && at < held.issuedAt) return; // that word is older than the pair held
    const had = held !== null || this.signedInHere;
    this.epoch++;
    this.signedOutAt = Math.max(this.signedOutAt, at);
    this.current = null;
    this.signedInHere = false;
    this.knownSignedOut = true;
    if (!otherTab) {
      if (this.options.mode === 'token') {
        try {
          // Another tab may have stored a new sign-in meanwhile: that one stays.
          const storage = this.options.storage;
          const stored = await this.load();
          const ended = sessionId ?? held?.sessionId ?? null;
          if (storage && (!stored || !ended || !stored.sessionId || stored.sessionId === ended)) {
            await this.bounded(() => storage.removeItem(this.options.storageKey));
          }
          await this.bounded(() => storage?.setItem(this.signedOutKey, JSON.stringify({ reason, sessionId: ended, at })));
        } catch {
          // the storage refuses: the other tabs hear it over the channel
        }
      }
      this.writeMarker(null);
    }
    if (broadcast) this.post({ type: 'signedOut', reason, sessionId: sessionId ?? held?.sessionId ?? null, at });
    if (had) this.emit('signedOut', { reason, otherTab });
  }

  /**
   * Ends the session at authql (`logout`; in token mode with the refresh token, so it works
   * with an expired access token too) and everywhere here. It waits for a renewal in flight in
   * any tab, so that it sends the newest refresh token. Resolves whether authql ended one
   * (`false` also when it could not be reached in time); never rejects; the session is
   * forgotten locally either way.
   */
  logout(): Promise<boolean> {
    this.leaving ??= this.logoutAlone().finally(() => {
      this.leaving = null;
    });
    return this.leaving;
  }

  private async logoutAlone(): Promise<boolean> {
    await this.ready;
    await this.inflight?.catch(() => null);
    return this.exclusive(async () => {
      await this.fromOtherTabs(null).catch(() => null);
      const held = this.current;
      let ended = false;
      try {
        const live = held && AuthqlSession.live(held) ? held.accessToken : undefined;
        const body = (await this.post_(LOGOUT, { refreshToken: held?.refreshToken ?? null }, live)) as {
          data?: { logout?: boolean } | null;
        } | null;
        ended = body?.data?.logout === true;
      } catch {
        ended = false; // unreachable or too slow: forgotten here all the same
      } finally {
        await this.signOut('LOGOUT', { sessionId: held?.sessionId ?? null });
      }
      return ended;
    });
  }

  /** Stops listening to the other tabs. */
  dispose(): void {
    this.channel?.close();
  }

  private fromPeer(message: PeerMessage): void {
    switch (message?.type) {
      case 'tokens': {
        const tokens = message.tokens;
        const waiting = this.waiting.get(tokens?.id);
        this.adopt(tokens, true, message.signedIn ? 'signedIn' : 'renewed');
        if (waiting) {
          this.waiting.delete(tokens.id);
          waiting(tokens);
        }
        return;
      }
      case 'ask':
        if (this.current?.id === message.id) this.post({ type: 'tokens', tokens: this.current, signedIn: false });
        return;
      case 'signedOut':
        void this.signOut(message.reason, { otherTab: true, broadcast: false, sessionId: message.sessionId, at: message.at });
        return;
    }
  }

  private post(message: PeerMessage): void {
    try {
      this.channel?.postMessage(message);
    } catch {
      // a closed channel: this tab is going away
    }
  }

  private async load(): Promise<Tokens | null> {
    if (this.options.mode !== 'token' || !this.options.storage) return null;
    try {
      const storage = this.options.storage;
      const text = await this.bounded(() => storage.getItem(this.options.storageKey));
      const tokens = JSON.parse(text ?? 'null') as Tokens | null;
      return typeof tokens?.accessToken === 'string' && typeof tokens.id === 'string' && typeof tokens.issuedAt === 'number'
        ? tokens
        : null;
    } catch {
      return null;
    }
  }

  /** Token mode: why, when and which session the last sign-out ended, for tabs that find the pair gone first. */
  private get signedOutKey() {
    return `${this.options.storageKey}:signedOut`;
  }

  private async signedOutWord(): Promise<{ reason: SignOutReason; sessionId: string | null; at: number } | null> {
    try {
      const storage = this.options.storage;
      const text = storage ? await this.bounded(() => storage.getItem(this.signedOutKey)) : null;
      const word = JSON.parse(text ?? 'null') as {
        reason?: unknown;
        sessionId?: unknown;
        at?: unknown;
      } | null;
      if (typeof word?.reason !== 'string' || typeof word.at !== 'number') return null;
      return {
        reason: word.reason as SignOutReason,
        sessionId: typeof word.sessionId === 'string' ? word.sessionId : null,
        at: word.at,
      };
    } catch {
      return null;
    }
  }

  // Which pair is the newest among the tabs (its id, when it needs renewing, when it was taken;
  // never the token itself), so that a tab that takes the lock after another renewed knows to
  // ask for that pair instead of renewing again; in cookie mode also whether the cookie was
  // ever seen to work since a sign-in (COOKIE_NOT_STORED after a reload).
  private get markerKey() {
    return `authql:${this.sharedKey}:latest`;
  }

  private readMarker(): Marker | null {
    try {
      const marker = JSON.parse(globalThis.localStorage?.getItem(this.markerKey) ?? 'null') as Marker | null;
      return typeof marker?.id === 'string' && typeof marker.renewAt === 'number' && typeof marker.issuedAt === 'number'
        ? marker
        : null;
    } catch {
      return null;
    }
  }

  private writeMarker(marker: Marker | null): void {
    try {
      if (marker) globalThis.localStorage?.setItem(this.markerKey, JSON.stringify(marker));
      else globalThis.localStorage?.removeItem(this.markerKey);
    } catch {
      // no localStorage here: tabs do not share renewals
    }
  }
}
