import { ApolloLink, HttpLink } from '@apollo/client';
import {
  Kind,
  OperationTypeNode,
  print,
  type DocumentNode,
  type FieldNode,
  type FormattedExecutionResult,
  type OperationDefinitionNode,
} from 'graphql';
import { Observable, type Subscription } from 'rxjs';
import { graphqlErrorsOf, refusedForToken, RenewalError, type AuthqlError } from './errors.js';
import { rootFields, SessionEventsDocument } from './generated/operations.js';
import type { SessionEventsSubscription } from './generated/types.js';
import { AuthqlSession, type Mode, type SessionEvents, type TokenStorage, type Tokens } from './session.js';
import { cookieDiagnostics, type Diagnostic } from './site.js';

/** One event of one of the user's sessions (`subscription { sessionEvents }`). */
export type SessionEvent = SessionEventsSubscription['sessionEvents'];

export interface AuthqlLinkOptions {
  /** authql's `/graphql` URL; relative to the page in a browser (e.g. `'/graphql'` behind a dev proxy). */
  uri: string;
  /**
   * Where the refresh token lives. `'token'` (the default; authql's default too): in the
   * `refreshToken` of each answer, kept in `storage`. `'cookie'`: in authql's HttpOnly cookie
   * (`REFRESH_TOKEN_COOKIE=true`), never seen by page scripts; the page and authql must be on
   * one site (see `diagnostics`).
   */
  mode?: Mode;
  /**
   * Token mode: where the token pair is kept, and shared by the tabs of an origin. Default:
   * `localStorage` in a browser, memory elsewhere; `null`: memory only (gone with the page).
   */
  storage?: TokenStorage | null;
  /** Key of the pair in `storage` (and name of the cross-tab lock): default `authql:<uri>`. */
  storageKey?: string;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** One renewal for all tabs of the origin, and sign-outs shared (default: where the browser has Web Locks). */
  crossTab?: boolean;
  /**
   * How long the link's own `refresh` and `logout` may take, in milliseconds (default 10000):
   * past it the renewal fails for now (the operations waiting get the failure, the session is
   * kept) and the lock the tabs share is let go.
   */
  requestTimeoutMs?: number;
  /** The WebSocket URL for subscriptions: default `uri` with `ws:`/`wss:`. */
  wsUri?: string;
  /** The WebSocket class, where there is no global one (Node 20: `import WebSocket from 'ws'`). */
  webSocketImpl?: unknown;
  /** More options for graphql-ws's `createClient` (`retryAttempts`, `retryWait`, `on`, ...). */
  wsOptions?: Record<string, unknown>;
  /** Replaces the HTTP link at the end of the chain (default `new HttpLink({ uri, fetch, credentials })`). */
  httpLink?: ApolloLink;
}

/** Per-operation context: `{ authql: { anonymous: true } }` sends no access token and never renews. */
export interface AuthqlContext {
  authql?: { anonymous?: boolean };
}

interface WsClient {
  subscribe(
    payload: { query: string; variables?: Record<string, unknown>; operationName?: string },
    sink: {
      next(value: FormattedExecutionResult): void;
      error(error: unknown): void;
      complete(): void;
    },
  ): () => void;
  dispose(): void | Promise<void>;
}

type Root = { alias: string; name: string };
const rootsOf = new WeakMap<DocumentNode, { roots: Root[]; withTokens: DocumentNode }>();
const TOKEN_FIELDS = ['accessToken', 'refreshToken', 'accessTokenExpiresAt', 'refreshTokenExpiresAt'];
const issuesTokens = (name: string) =>
  (rootFields as Record<string, { issuesTokens: boolean } | undefined>)[name]?.issuesTokens === true;

const field = (name: string, selections?: FieldNode[]): FieldNode => ({
  kind: Kind.FIELD,
  name: { kind: Kind.NAME, value: name },
  ...(selections ? { selectionSet: { kind: Kind.SELECTION_SET, selections } } : {}),
});

/**
 * The root fields of `document`'s operation, and the document with every token-issuing root
 * field selecting what the link needs (the token pair, its expiries, `session { id }`), so
 * that an app's `login { accessToken }` still lets the link keep the rotated refresh token.
 */
function analyse(document: DocumentNode): { roots: Root[]; withTokens: DocumentNode } {
  let known = rootsOf.get(document);
  if (known) return known;
  const roots: Root[] = [];
  const definitions = document.definitions.map((definition) => {
    if (definition.kind !== Kind.OPERATION_DEFINITION) return definition;
    const selections = definition.selectionSet.selections.map((selection) => {
      if (selection.kind !== Kind.FIELD) return selection;
      roots.push({ alias: selection.alias?.value ?? selection.name.value, name: selection.name.value });
      if (!issuesTokens(selection.name.value) || !selection.selectionSet) return selection;
      const has = new Set(
        selection.selectionSet.selections.flatMap((s) => (s.kind === Kind.FIELD && !s.alias ? [s.name.value] : [])),
      );
      const added = TOKEN_FIELDS.filter((name) => !has.has(name)).map((name) => field(name));
      added.push(field('session', [field('id')]));
      return { ...selection, selectionSet: { ...selection.selectionSet, selections: [...selection.selectionSet.selections, ...added] } };
    });
    return { ...definition, selectionSet: { ...definition.selectionSet, selections } } as OperationDefinitionNode;
  });
  known = { roots, withTokens: { ...document, definitions } };
  rootsOf.set(document, known);
  return known;
}

const isCloseEvent = (value: unknown): value is { code: number; reason: string } =>
  typeof value === 'object' && value !== null && 'code' in value && typeof (value as { code: unknown }).code === 'number';

/** A WebSocket that ended a subscription: `code` is the close code (README "Live session events"). */
export class SocketClosedError extends Error {
  override readonly name = 'SocketClosedError';
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`the WebSocket closed with ${code}${reason ? ` (${reason})` : ''}`);
  }
}

/**
 * The link chain for authql, itself an Apollo link: put it in `new ApolloClient({ link })`.
 *
 * - Sends `Authorization: Bearer <access token>`, renewing an expired token first.
 * - Takes the token pair from every answer of a field that issues one (`register`, `login`,
 *   `refresh`, and whatever the schema adds), without the app's help.
 * - On `UNAUTHENTICATED` renews once for all operations waiting at that moment (and once for
 *   all tabs), then sends each again, once.
 * - Signs out (event `signedOut`, every tab) when a renewal says the session is over
 *   (`REVOKED`, `REFRESH_TOKEN_REUSED`, `ACCOUNT_DISABLED`, `EXPIRED`, ...), after `logout`,
 *   `deleteAccount` or a `revokeTokens` of this session, and on a `sessionEvents` event
 *   `REVOKED`/`EXPIRED` of this session.
 * - Sends subscriptions over `graphql-ws` (the `graphql-transport-ws` protocol) with the token
 *   in `connection_init`, renewed after authql closes with 4403.
 */
export class AuthqlLink extends ApolloLink {
  /** The session: tokens, renewal, sign-out. */
  readonly session: AuthqlSession;
  /** What the client found at start that keeps cookie mode from working (also logged). */
  readonly diagnostics: readonly Diagnostic[];
  private readonly http: ApolloLink;
  private readonly wsUri: string;
  private ws: Promise<WsClient> | null = null;
  /** The token the socket last sent, and the one authql refused with 4403. */
  private wsSent: string | null = null;
  private wsRefused: string | null = null;
  private wsLastClose: number | null = null;
  private readonly requestTimeoutMs: number;

  constructor(private readonly options: AuthqlLinkOptions) {
    super((operation, forward) => this.handle(operation, forward));
    const mode = options.mode ?? 'token';
    if (mode !== 'token' && mode !== 'cookie') throw new TypeError(`mode must be 'token' or 'cookie', not ${String(mode)}`);
    const page = (globalThis as { location?: { href: string } }).location?.href;
    const uri = new URL(options.uri, page).href;
    const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    let storage: TokenStorage | null = null;
    if (mode === 'token') {
      if (options.storage !== undefined) storage = options.storage;
      else {
        try {
          storage = globalThis.localStorage ?? null;
        } catch {
          storage = null; // storage blocked (a sandboxed frame): memory only
        }
      }
    }
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.session = new AuthqlSession({
      uri,
      mode,
      storage,
      storageKey: options.storageKey ?? `authql:${uri}`,
      fetch: fetchImpl,
      crossTab: options.crossTab ?? true,
      requestTimeoutMs: this.requestTimeoutMs,
    });
    this.http =
      options.httpLink ?? new HttpLink({ uri, fetch: fetchImpl, credentials: mode === 'cookie' ? 'include' : 'same-origin' });
    this.wsUri = options.wsUri ?? uri.replace(/^http/, 'ws');
    this.diagnostics = mode === 'cookie' && page ? cookieDiagnostics(new URL(page), new URL(uri)) : [];
    // After the caller could listen: `createAuthqlLink(...).on('warning', ...)` hears these too.
    if (this.diagnostics.length) queueMicrotask(() => this.diagnostics.forEach((diagnostic) => this.session.warn(diagnostic)));
    this.session.on('signedOut', () => this.closeSocket());
  }

  /** Listens to the session's events (`signedIn`, `renewed`, `signedOut`, `warning`); returns the unsubscribe. */
  on<E extends keyof SessionEvents>(event: E, listener: (value: SessionEvents[E]) => void): () => void {
    return this.session.on(event, listener);
  }

  /** The tokens held now, or `null` when signed out. */
  get tokens(): Tokens | null {
    return this.session.tokens;
  }

  /**
   * Gets the session back after a page load: token mode from `storage`, cookie mode from
   * another tab or from the cookie (one `refresh`). Resolves whether there is one.
   */
  async restore(): Promise<boolean> {
    try {
      return (await this.session.accessToken()) !== null;
    } catch (error) {
      if (error instanceof RenewalError) return this.session.tokens !== null;
      throw error;
    }
  }

  /** Ends the session at authql and in every tab (`logout`); resolves whether authql ended one. */
  signOut(): Promise<boolean> {
    return this.session.logout();
  }

  /**
   * The session events of the signed-in user, over graphql-ws: `next` for each, `complete`
   * when the session ends here (signed out, or an event `REVOKED`/`EXPIRED` of this session
   * itself, delivered first), `error` with `SocketClosedError` when the socket could not be
   * kept (close codes: README "Live session events").
   */
  sessionEvents(): Observable<SessionEvent> {
    return new Observable<SessionEvent>((observer) => {
      const stopListening = this.session.on('signedOut', () => observer.complete());
      const subscription = this.overSocket({ query: print(SessionEventsDocument) }).subscribe({
        next: (result) => {
          const event = (result.data as SessionEventsSubscription | null | undefined)?.sessionEvents;
          if (event) observer.next(event);
          else if (result.errors?.length) observer.error(Object.assign(new Error('sessionEvents failed'), { errors: result.errors }));
        },
        error: (error: unknown) => observer.error(error),
        complete: () => observer.complete(),
      });
      return () => {
        stopListening();
        subscription.unsubscribe();
      };
    });
  }

  /** Closes the socket and the cross-tab channel. */
  dispose(): void {
    this.closeSocket();
    this.session.dispose();
  }

  private handle(operation: ApolloLink.Operation, forward: ApolloLink.ForwardFunction): Observable<ApolloLink.Result> {
    if (operation.operationType === OperationTypeNode.SUBSCRIPTION) return this.subscription(operation);
    const { roots, withTokens } = analyse(operation.query);
    operation.query = withTokens;
    const anonymous = (operation.getContext() as AuthqlContext).authql?.anonymous === true;
    // An operation that issues tokens (login, ...) never waits for a renewal.
    const renews = !anonymous && !roots.some((root) => issuesTokens(root.name));
    // Cookie mode: a sign-in's answer sets authql's cookie; it is sent holding the tabs' lock, so
    // that no other tab's sign-out answer (which clears the cookie) lands after it.
    const signIn = this.session.mode === 'cookie' && roots.some((root) => issuesTokens(root.name));
    return new Observable<ApolloLink.Result>((observer) => {
      let inner: Subscription | undefined;
      let stopped = false;
      let release: () => void = () => undefined;
      const done = () => {
        release();
        release = () => undefined;
      };
      const send = (token: string | null, retried: boolean) => {
        operation.setContext(({ headers = {} }: { headers?: Record<string, string> }) => {
          const { authorization: _, ...rest } = headers;
          return { headers: token ? { ...rest, authorization: `Bearer ${token}` } : rest };
        });
        let renewing = false;
        let observed: Promise<void> = Promise.resolve();
        inner = this.http.request(operation, forward).subscribe({
          next: (result) => {
            // A broken proxy may answer anything: only an array of errors is read.
            const errors = (Array.isArray(result.errors) ? result.errors : []) as AuthqlError[];
            if (renews && !retried && refusedForToken(errors) && this.session.mayRenew()) {
              renewing = true;
              this.session.renew(token).then(
                (fresh) => {
                  if (stopped) return;
                  if (fresh && fresh !== token) send(fresh, true);
                  else {
                    observer.next(result);
                    observer.complete();
                  }
                },
                (error: unknown) => this.fail(observer, error, stopped),
              );
              return;
            }
            // The app sees the answer once the session took it in: after `await ops.login()`
            // the tokens are held, after `await ops.logout()` the sign-out was heard.
            observed = this.observe(result, roots)
              .catch((error: unknown) => console.error('@authql/client: an answer could not be read', error))
              .then(() => {
                if (!stopped) observer.next(result);
              });
          },
          error: (error: unknown) => {
            // authql answers request errors with 4xx and a GraphQL body; an expired token is never one.
            void observed.then(() => {
              done();
              if (!stopped) observer.error(error);
            });
          },
          complete: () => {
            void observed.then(() => {
              done();
              if (!renewing && !stopped) observer.complete();
            });
          },
        });
      };
      const token = anonymous
        ? Promise.resolve(null)
        : renews
          ? this.session.accessToken()
          : this.session.ready.then(() => this.session.tokens?.accessToken ?? null);
      const held = signIn ? this.session.hold(this.requestTimeoutMs) : Promise.resolve(() => undefined);
      Promise.all([token, held]).then(
        ([token, releaseHeld]) => {
          release = releaseHeld;
          if (stopped) done();
          else send(token, false);
        },
        (error: unknown) => this.fail(observer, error, stopped),
      );
      return () => {
        stopped = true;
        done();
        inner?.unsubscribe();
      };
    });
  }

  /** A renewal that failed for now: authql's own errors as the operation's answer, else the failure. */
  private fail(observer: { next(r: ApolloLink.Result): void; error(e: unknown): void; complete(): void }, error: unknown, stopped: boolean) {
    if (stopped) return;
    const errors = error instanceof RenewalError ? error.errors : graphqlErrorsOf(error);
    if (errors.length) {
      observer.next({ errors } as ApolloLink.Result);
      observer.complete();
    } else observer.error(error);
  }

  /** What an answer tells about the session: new tokens, or its end. */
  private async observe(result: ApolloLink.Result, roots: Root[]): Promise<void> {
    const data = (result as FormattedExecutionResult).data as Record<string, unknown> | null | undefined;
    if (!data) return;
    for (const { alias, name } of roots) {
      const value = data[alias] as Record<string, unknown> | null | undefined;
      if (issuesTokens(name) && value && typeof value.accessToken === 'string') {
        await this.session.take(value as { accessToken: string }, name === 'refresh' ? 'renewed' : 'signedIn');
      } else if ((name === 'logout' || name === 'deleteAccount') && value === (true as unknown)) {
        await this.session.signOut('LOGOUT');
      } else if (name === 'revokeTokens' && value) {
        const ids = value.revokedSessionIds;
        const mine = this.session.tokens?.sessionId;
        if (mine && Array.isArray(ids) && ids.includes(mine)) await this.session.signOut('REVOKED');
      }
    }
  }

  private watchEvent(event: SessionEvent): void {
    if (event.current && (event.type === 'REVOKED' || event.type === 'EXPIRED')) {
      // Only the session the event is about: a sign-in since then keeps the new one.
      void this.session.signOut(event.type, { sessionId: event.sessionId });
    }
  }

  private subscription(operation: ApolloLink.Operation): Observable<ApolloLink.Result> {
    const payload = { query: print(operation.query), variables: operation.variables, operationName: operation.operationName };
    return this.overSocket(payload) as Observable<ApolloLink.Result>;
  }

  /**
   * One subscription over the graphql-ws socket: its results (request errors as one result
   * with `errors`, then the end), a closed socket as `SocketClosedError`; a `sessionEvents`
   * event that ends this session signs out after it is delivered.
   */
  private overSocket(payload: { query: string; variables?: Record<string, unknown>; operationName?: string }): Observable<FormattedExecutionResult> {
    return new Observable<FormattedExecutionResult>((observer) => {
      let dispose: (() => void) | null = null;
      let stopped = false;
      this.socket().then(
        (client) => {
          if (stopped) return;
          dispose = client.subscribe(payload, {
            next: (result) => {
              observer.next(result);
              const event = (result.data as Partial<SessionEventsSubscription> | null | undefined)?.sessionEvents;
              if (event) this.watchEvent(event);
            },
            error: (error) => {
              if (Array.isArray(error)) {
                observer.next({ errors: error });
                observer.complete();
              } else observer.error(isCloseEvent(error) ? new SocketClosedError(error.code, error.reason) : error);
            },
            complete: () => observer.complete(),
          });
        },
        (error) => observer.error(error),
      );
      return () => {
        stopped = true;
        dispose?.();
      };
    });
  }

  /** The graphql-ws client, made at the first subscription (graphql-ws is loaded then). */
  private socket(): Promise<WsClient> {
    if (!this.ws) {
      this.ws = import('graphql-ws').then(({ createClient }) =>
        createClient({
          url: this.wsUri,
          lazy: true,
          ...(this.options.webSocketImpl ? { webSocketImpl: this.options.webSocketImpl } : {}),
          // Read at each (re)connection: authql closes with 4403 when the token expires or is
          // refused; the next attempt carries a renewed one.
          connectionParams: async () => {
            let token: string | null;
            try {
              token = await this.session.accessToken();
              if (token && token === this.wsRefused) token = await this.session.renew(token);
            } catch {
              token = this.session.tokens?.accessToken ?? null; // renewal failed for now: retried
            }
            this.wsSent = token;
            // Signed out: no token, so authql closes with 4403, and shouldRetry ends it there.
            return token ? { Authorization: `Bearer ${token}` } : {};
          },
          shouldRetry: (event: unknown) => this.session.tokens !== null && isCloseEvent(event),
          // After a 4403 (the token expired) reconnect at once with a renewed one, so that events
          // are not missed for seconds; else graphql-ws's own randomised exponential backoff.
          retryWait: async (retries: number) => {
            if (this.wsLastClose === 4403 && retries === 0) return;
            await new Promise((resolve) => setTimeout(resolve, 2 ** retries * 1000 + 300 + Math.random() * 2700));
          },
          ...this.options.wsOptions,
          on: {
            ...((this.options.wsOptions?.on as Record<string, unknown>) ?? {}),
            closed: (event: unknown) => {
              this.wsLastClose = isCloseEvent(event) ? event.code : null;
              if (this.wsLastClose === 4403) this.wsRefused = this.wsSent;
              const closed = (this.options.wsOptions?.on as { closed?: (e: unknown) => void } | undefined)?.closed;
              closed?.(event);
            },
          },
        }) as unknown as WsClient,
      );
    }
    return this.ws;
  }

  private closeSocket(): void {
    const ws = this.ws;
    this.ws = null;
    // graphql-ws 6 rejects dispose() when it was waiting to reconnect: nothing to report then.
    ws?.then((client) => client.dispose()).catch(() => undefined);
  }
}

/**
 * The authql link chain (see `AuthqlLink`):
 *
 * ```js
 * const authql = createAuthqlLink({ uri: '/graphql', mode: 'cookie' });
 * const client = new ApolloClient({ link: authql, cache: new InMemoryCache() });
 * authql.on('signedOut', ({ reason }) => showSignIn(reason));
 * ```
 */
export function createAuthqlLink(options: AuthqlLinkOptions): AuthqlLink {
  return new AuthqlLink(options);
}
