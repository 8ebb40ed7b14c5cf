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
   * lifetime (`exp - iat`) from when it arrived, less a tenth of it (at most 5 s), so that a
   * skewed clock neither renews too early nor sends expired tokens.
   */
  renewAt: number;
  /** A random id of this issue of tokens: tabs tell their copies apart by it. */
  id: string;
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
}

type PeerMessage =
  | { type: 'tokens'; tokens: Tokens; signedIn: boolean }
  | { type: 'ask'; id: string }
  | { type: 'signedOut'; reason: SignOutReason };

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
  /** A sign-in happened in this page and no cookie refresh has worked since (cookie mode). */
  private signedInHere = false;
  /** The last renewal said there is no session: do not try again until a sign-in. */
  private knownSignedOut = false;
  /** Moved on by every sign-out: a renewal that began before one is not taken after it. */
  private epoch = 0;
  private readonly listeners = new Map<keyof SessionEvents, Set<(value: never) => void>>();
  private readonly channel: BroadcastChannel | null;
  private readonly locks: LockManagerLike | null;
  private readonly waiting = new Map<string, (tokens: Tokens) => void>();
  private readonly warned = new Set<string>();
  /** Resolves once the stored pair (token mode) has been read. */
  readonly ready: Promise<void>;
  /** How many `refresh` requests this tab sent (for tests and metrics). */
  refreshesSent = 0;

  constructor(private readonly options: SessionOptions) {
    const locks = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks;
    const shared = options.crossTab && locks !== undefined && typeof BroadcastChannel === 'function';
    this.locks = shared ? locks! : null;
    this.channel = shared ? new BroadcastChannel(`authql:${options.storageKey}`) : null;
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
   * emitted); rejects with `RenewalError` when authql cannot renew now (unreachable,
   * `SERVICE_UNAVAILABLE`, `RATE_LIMITED`, ...), keeping the session.
   */
  renew(stale: string | null): Promise<string | null> {
    const held = this.current;
    if (held && AuthqlSession.live(held) && held.accessToken !== stale) return Promise.resolve(held.accessToken);
    if (!this.inflight) {
      const run = () => this.renewAlone(stale);
      this.inflight = (this.locks ? this.locks.request(`authql:${this.options.storageKey}`, run) : run()).finally(
        () => {
          this.inflight = null;
        },
      );
    }
    return this.inflight;
  }

  private async renewAlone(stale: string | null): Promise<string | null> {
    const adopted = (await this.fromOtherTabs(stale)) ?? (await this.fromTabThatRotated(stale));
    if (adopted) return adopted.accessToken;
    if (this.options.mode === 'token' && !this.current?.refreshToken) return null;
    if (this.options.mode === 'cookie' && this.knownSignedOut && !this.current) return null;
    return this.refresh();
  }

  /** Token mode: the pair in storage; cookie mode: what another tab holds. */
  private async fromOtherTabs(stale: string | null): Promise<Tokens | null> {
    if (this.options.mode === 'token') {
      if (!this.options.storage) return null;
      const stored = await this.load();
      if (!stored) {
        // Another tab signed out (its message may still be on its way): say why it did.
        const why = (await this.options.storage.getItem(this.signedOutKey)) as SignOutReason | null;
        if (this.current) await this.signOut(why ?? 'LOGOUT', { otherTab: true, broadcast: false });
        return null;
      }
      if (stored.id !== this.current?.id) {
        this.current = stored;
        this.emit('renewed', { sessionId: stored.sessionId, accessTokenExpiresAt: stored.accessTokenExpiresAt, otherTab: true });
      }
      return AuthqlSession.live(stored) && stored.accessToken !== stale ? stored : null;
    }
    const held = this.current;
    if (held && AuthqlSession.live(held) && held.accessToken !== stale) return held;
    const marker = this.readMarker();
    if (!this.channel || !marker || marker.id === held?.id || marker.renewAt <= Date.now()) return null;
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
    return tokens && AuthqlSession.live(tokens) && tokens.accessToken !== stale ? tokens : null;
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
    if (!id || !this.locks?.query) return null;
    const { held = [] } = await this.locks.query();
    if (!held.some((lock) => lock.name === this.rotatedLockName(id))) return null;
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

  private rotatedLockName(id: string): string {
    return `authql:${this.options.storageKey}:rotated:${id}`;
  }

  /** Marks the pair `id` as rotated away, for `ROTATED_MARK_MS`; resolves once the mark is held. */
  private markRotated(id: string): Promise<void> {
    const locks = this.locks;
    if (!locks?.query) return Promise.resolve();
    return new Promise<void>((marked) => {
      locks
        .request(this.rotatedLockName(id), { ifAvailable: true }, (lock) => {
          marked();
          return lock ? new Promise<void>((release) => setTimeout(release, ROTATED_MARK_MS)) : Promise.resolve();
        })
        .catch(() => marked());
    });
  }

  private async refresh(): Promise<string | null> {
    const token = this.options.mode === 'token';
    const rotating = this.current?.id ?? null;
    const variables = token ? { refreshToken: this.current!.refreshToken } : {};
    type Answer = { data?: { refresh?: PayloadLike } | null; errors?: AuthqlError[] } | null;
    let body: Answer = null;
    const epoch = this.epoch;
    this.refreshesSent++;
    try {
      const response = await this.options.fetch(this.options.uri, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json, application/json' },
        credentials: token ? 'same-origin' : 'include',
        body: JSON.stringify({ query: REFRESH, variables }),
      });
      body = (await response.json()) as Answer;
    } catch (cause) {
      throw new RenewalError('authql could not be reached to renew the access token', [], cause);
    }
    // Signed out meanwhile (here or in another tab): the answer must not bring the session back.
    if (epoch !== this.epoch) return null;
    const payload = body?.data?.refresh;
    if (typeof payload?.accessToken === 'string') {
      if (!token) this.signedInHere = false; // the cookie works
      await this.take(payload, 'renewed');
      // Still holding the renewal lock: the tabs granted it next see the mark.
      if (rotating) await this.markRotated(rotating);
      return payload.accessToken;
    }
    const errors = Array.isArray(body?.errors) ? body.errors : [];
    const reason = endingReason(errors);
    if (!reason) throw new RenewalError('authql did not renew the access token', errors);
    if (reason === 'MISSING' && !token && this.signedInHere) {
      this.warn({
        code: 'COOKIE_NOT_STORED',
        message:
          'this page signed in, but the refresh that followed sent no refresh cookie: the browser ' +
          'did not keep it. Usually authql is on another site than the page (a dev server on ' +
          'localhost calling 127.0.0.1, or another domain): proxy /graphql through the page\'s ' +
          'own server, or use one host name for both; see the @authql/client README.',
      });
    }
    this.knownSignedOut = true;
    await this.signOut(reason);
    return null;
  }

  /**
   * Takes the token pair of an answer (`register`, `login`, `refresh`, any field answering an
   * `AuthPayload`): kept in memory, in `storage` (token mode) and handed to the other tabs.
   */
  async take(payload: PayloadLike, how: 'signedIn' | 'renewed'): Promise<void> {
    const lifetime = lifetimeMs(payload.accessToken);
    const arrived = Date.now();
    const renewAt =
      lifetime !== null
        ? arrived + lifetime - Math.min(5000, lifetime / 10)
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
    };
    this.current = tokens;
    this.knownSignedOut = false;
    if (how === 'signedIn' && this.options.mode === 'cookie') this.signedInHere = true;
    if (this.options.mode === 'token') {
      await this.options.storage?.setItem(this.options.storageKey, JSON.stringify(tokens));
      await this.options.storage?.removeItem(this.signedOutKey);
    } else {
      this.writeMarker({ id: tokens.id, renewAt: tokens.renewAt });
    }
    this.post({ type: 'tokens', tokens, signedIn: how === 'signedIn' });
    this.emit(how, { sessionId: tokens.sessionId, accessTokenExpiresAt: tokens.accessTokenExpiresAt, otherTab: false });
  }

  /**
   * Forgets the session here and in every tab of the origin, and emits `signedOut` where one
   * was held. Says nothing to authql: `logout` does.
   */
  async signOut(reason: SignOutReason, { otherTab = false, broadcast = true } = {}): Promise<void> {
    const had = this.current !== null || this.signedInHere;
    this.epoch++;
    this.current = null;
    this.signedInHere = false;
    this.knownSignedOut = true;
    if (!otherTab) {
      if (this.options.mode === 'token') {
        await this.options.storage?.removeItem(this.options.storageKey);
        await this.options.storage?.setItem(this.signedOutKey, reason);
      }
      else this.writeMarker(null);
    }
    if (broadcast) this.post({ type: 'signedOut', reason });
    if (had) this.emit('signedOut', { reason, otherTab });
  }

  /**
   * Ends the session at authql (`logout`; in token mode with the refresh token, so it works
   * with an expired access token too) and everywhere here. Resolves whether authql ended one;
   * the session is forgotten locally either way.
   */
  async logout(): Promise<boolean> {
    await this.ready;
    const held = this.current;
    let ended = false;
    try {
      const headers: Record<string, string> = {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
      };
      if (held && AuthqlSession.live(held)) headers.authorization = `Bearer ${held.accessToken}`;
      const response = await this.options.fetch(this.options.uri, {
        method: 'POST',
        headers,
        credentials: this.options.mode === 'token' ? 'same-origin' : 'include',
        body: JSON.stringify({ query: LOGOUT, variables: { refreshToken: held?.refreshToken ?? null } }),
      });
      const body = (await response.json()) as { data?: { logout?: boolean } | null };
      ended = body?.data?.logout === true;
    } finally {
      await this.signOut('LOGOUT');
    }
    return ended;
  }

  /** Stops listening to the other tabs. */
  dispose(): void {
    this.channel?.close();
  }

  private fromPeer(message: PeerMessage): void {
    switch (message.type) {
      case 'tokens': {
        const tokens = message.tokens;
        this.waiting.get(tokens.id)?.(tokens);
        this.waiting.delete(tokens.id);
        if (tokens.id === this.current?.id) return;
        this.current = tokens;
        this.knownSignedOut = false;
        const how = message.signedIn ? 'signedIn' : 'renewed';
        this.emit(how, { sessionId: tokens.sessionId, accessTokenExpiresAt: tokens.accessTokenExpiresAt, otherTab: true });
        return;
      }
      case 'ask':
        if (this.current?.id === message.id) this.post({ type: 'tokens', tokens: this.current, signedIn: false });
        return;
      case 'signedOut':
        void this.signOut(message.reason, { otherTab: true, broadcast: false });
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
    const text = await this.options.storage.getItem(this.options.storageKey);
    if (!text) return null;
    try {
      const tokens = JSON.parse(text) as Tokens;
      return typeof tokens?.accessToken === 'string' && typeof tokens.id === 'string' ? tokens : null;
    } catch {
      return null;
    }
  }

  /** Token mode: why the last sign-out happened, for tabs that find the pair gone before the message. */
  private get signedOutKey() {
    return `${this.options.storageKey}:signedOut`;
  }

  // Cookie mode: which token is the newest among the tabs (its id and when it needs renewing;
  // never the token itself), so that a tab that takes the lock after another renewed knows to
  // ask for that token instead of renewing again.
  private get markerKey() {
    return `authql:${this.options.storageKey}:latest`;
  }

  private readMarker(): { id: string; renewAt: number } | null {
    try {
      const text = globalThis.localStorage?.getItem(this.markerKey);
      return text ? (JSON.parse(text) as { id: string; renewAt: number }) : null;
    } catch {
      return null;
    }
  }

  private writeMarker(marker: { id: string; renewAt: number } | null): void {
    try {
      if (marker) globalThis.localStorage?.setItem(this.markerKey, JSON.stringify(marker));
      else globalThis.localStorage?.removeItem(this.markerKey);
    } catch {
      // no localStorage here: tabs do not share renewals
    }
  }
}
