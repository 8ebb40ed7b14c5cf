// An Apollo Client 4 app for authql, shared by the Node tests and the browser bundle.
// No Node-only imports here: the caller passes fetch and sha256.
//
// Link chain: ErrorLink (renews an expired access token with `refresh`, then retries the
// operation) -> auth link (Bearer header from the current access token) -> PersistedQueryLink
// (Apollo APQ, hashed GETs for queries) -> HttpLink. With `wsUrl`, a split link sends
// subscriptions to GraphQLWsLink instead (graphql-ws, graphql-transport-ws protocol), whose
// connection_init payload carries the current access token (renewed first if it has expired).
//
// Two ways to hold the refresh token:
// - token mode (default): the refresh token comes back in AuthPayload.refreshToken and is kept in
//   memory here, passed to `refresh(refreshToken:)`;
// - cookie mode (`cookieMode: true`, for browsers with authql's REFRESH_TOKEN_COOKIE=true): the
//   server keeps it in an HttpOnly cookie, `refresh` is sent without an argument, and requests
//   go with `credentials: 'include'`. This code never sees the refresh token.
import {
  ApolloClient,
  ApolloLink,
  CombinedGraphQLErrors,
  HttpLink,
  InMemoryCache,
  ServerError,
} from '@apollo/client';
import { ErrorLink } from '@apollo/client/link/error';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { Kind, OperationTypeNode, parse, visit } from 'graphql';
import { createClient as createWsClient } from 'graphql-ws';
import { Observable } from 'rxjs';

/** Split a .graphql source with several operations into one document per operation name. */
export function operationsFromSource(source) {
  const doc = parse(source);
  const fragments = new Map();
  for (const def of doc.definitions) {
    if (def.kind === Kind.FRAGMENT_DEFINITION) fragments.set(def.name.value, def);
  }
  const usedFragments = (node, seen = new Set()) => {
    visit(node, {
      FragmentSpread(spread) {
        const name = spread.name.value;
        if (!seen.has(name)) {
          seen.add(name);
          usedFragments(fragments.get(name), seen);
        }
      },
    });
    return seen;
  };
  const operations = {};
  for (const def of doc.definitions) {
    if (def.kind !== Kind.OPERATION_DEFINITION) continue;
    const names = [...usedFragments(def)];
    operations[def.name.value] = {
      kind: Kind.DOCUMENT,
      definitions: [def, ...names.map((n) => fragments.get(n))],
    };
  }
  return operations;
}

/** The GraphQL errors (as plain objects) carried by an Apollo error, if any. */
export function graphqlErrorsOf(error) {
  if (CombinedGraphQLErrors.is(error)) return error.errors;
  if (ServerError.is(error) && error.bodyText) {
    try {
      const body = JSON.parse(error.bodyText);
      if (Array.isArray(body?.errors)) return body.errors;
    } catch { /* not JSON */ }
  }
  return [];
}

/** `extensions.code` of every GraphQL error in an Apollo error. */
export function errorCodes(error) {
  return graphqlErrorsOf(error).map((e) => e.extensions?.code);
}

const isExpiredAccessToken = (errors) =>
  errors.some((e) => e.extensions?.code === 'UNAUTHENTICATED' && e.extensions?.reason === 'EXPIRED');

/**
 * @param {object} options
 * @param {string} options.uri            authql's /graphql URL
 * @param {Function} options.fetch        fetch to use (tests wrap it to watch requests)
 * @param {(s: string) => string | Promise<string>} options.sha256  hex SHA-256 of a string
 * @param {Record<string, object>} options.operations  from operationsFromSource(operations.graphql)
 * @param {boolean} [options.cookieMode]  refresh token in authql's HttpOnly cookie
 * @param {boolean} [options.persistedQueries]  APQ on (default true)
 * @param {string} [options.wsUrl]        ws:// URL of /graphql: subscriptions go over WebSocket
 * @param {unknown} [options.webSocketImpl]  WebSocket class (Node 20: the `ws` package)
 * @param {object} [options.wsOptions]    more options for graphql-ws's createClient
 */
export function createAuthqlClient({
  uri,
  fetch,
  sha256,
  operations,
  cookieMode = false,
  persistedQueries = true,
  wsUrl,
  webSocketImpl,
  wsOptions = {},
}) {
  const state = {
    accessToken: null,
    accessTokenExpiresAt: null,
    refreshToken: null, // token mode only
    refreshes: 0, // refreshes done by the error link
    retries: 0, // operations retried after such a refresh
  };
  let refreshInFlight = null;

  const op = (name) => {
    const doc = operations[name];
    if (!doc) throw new Error(`operation ${name} is missing from the operations document`);
    return doc;
  };

  const authLink = new ApolloLink((operation, forward) => {
    const { skipAuth } = operation.getContext();
    const token = state.accessToken;
    operation.setContext(({ headers = {} }) => ({
      sentAccessToken: skipAuth ? null : token,
      headers: skipAuth || !token ? headers : { ...headers, authorization: `Bearer ${token}` },
    }));
    return forward(operation);
  });

  // Renew the access token once for all the operations that found it expired together.
  function renew(expiredToken) {
    if (state.accessToken && state.accessToken !== expiredToken) return Promise.resolve(true);
    if (!refreshInFlight) {
      refreshInFlight = refresh()
        .then(() => {
          state.refreshes++;
          return true;
        })
        .catch(() => false)
        .finally(() => {
          refreshInFlight = null;
        });
    }
    return refreshInFlight;
  }

  const errorLink = new ErrorLink(({ error, result, operation, forward }) => {
    const ctx = operation.getContext();
    if (ctx.skipAuth || ctx.isRetry || !ctx.sentAccessToken) return;
    if (!isExpiredAccessToken(graphqlErrorsOf(error))) return;
    return new Observable((observer) => {
      let sub;
      let cancelled = false;
      renew(ctx.sentAccessToken).then((renewed) => {
        if (cancelled) return;
        if (!renewed) {
          // Could not renew: hand back the original answer.
          if (result) {
            observer.next(result);
            observer.complete();
          } else {
            observer.error(error);
          }
          return;
        }
        state.retries++;
        operation.setContext({ isRetry: true });
        sub = forward(operation).subscribe(observer);
      });
      return () => {
        cancelled = true;
        sub?.unsubscribe();
      };
    });
  });

  const links = [errorLink, authLink];
  if (persistedQueries) {
    links.push(new PersistedQueryLink({ sha256, useGETForHashedQueries: true }));
  }
  links.push(
    new HttpLink({
      uri,
      fetch,
      credentials: cookieMode ? 'include' : 'same-origin',
    }),
  );

  let link = ApolloLink.from(links);
  let wsClient = null;
  if (wsUrl) {
    wsClient = createWsClient({
      url: wsUrl,
      ...(webSocketImpl ? { webSocketImpl } : {}),
      // Called at every (re)connection: authql closes with 4403 when the access token expires
      // or its session ends, and graphql-ws reconnects; renew an expired token first.
      connectionParams: async () => {
        const expiresAt = Date.parse(state.accessTokenExpiresAt ?? '');
        if (state.accessToken && expiresAt - Date.now() < 1000) await renew(state.accessToken);
        return state.accessToken ? { Authorization: `Bearer ${state.accessToken}` } : {};
      },
      ...wsOptions,
    });
    link = ApolloLink.split(
      (operation) => operation.operationType === OperationTypeNode.SUBSCRIPTION,
      new GraphQLWsLink(wsClient),
      link,
    );
  }

  const client = new ApolloClient({
    link,
    cache: new InMemoryCache(),
    defaultOptions: {
      query: { fetchPolicy: 'no-cache' },
      mutate: { fetchPolicy: 'no-cache' },
    },
  });

  function takePayload(payload) {
    state.accessToken = payload.accessToken;
    state.accessTokenExpiresAt = payload.accessTokenExpiresAt;
    if (!cookieMode) state.refreshToken = payload.refreshToken;
    return payload;
  }

  const mutate = async (name, variables, context) =>
    (await client.mutate({ mutation: op(name), variables, context })).data;
  const query = async (name, variables) => (await client.query({ query: op(name), variables })).data;

  async function refresh() {
    // In cookie mode there is no argument: authql reads its HttpOnly cookie.
    const variables = cookieMode ? {} : { refreshToken: state.refreshToken };
    const data = await mutate('Refresh', variables, { skipAuth: true });
    return takePayload(data.refresh);
  }

  return {
    client,
    state,
    register: async (input) => takePayload((await mutate('Register', { input }, { skipAuth: true })).register),
    login: async (input) => takePayload((await mutate('Login', { input }, { skipAuth: true })).login),
    refresh,
    me: async () => (await query('Me')).me,
    mySessions: async () => (await query('MySessions')).mySessions,
    revokeTokens: async (input) => (await mutate('RevokeTokens', { input })).revokeTokens,
    revokeOtherSessions: async () => (await mutate('RevokeOtherSessions')).revokeOtherSessions,
    changePassword: async (input) => (await mutate('ChangePassword', { input })).changePassword,
    deleteAccount: async (input) => (await mutate('DeleteAccount', { input })).deleteAccount,
    // Account recovery: the ones that need no session send no access token.
    requestPasswordReset: async (email) =>
      (await mutate('RequestPasswordReset', { email }, { skipAuth: true })).requestPasswordReset,
    resetPassword: async (input) => (await mutate('ResetPassword', { input }, { skipAuth: true })).resetPassword,
    sendVerificationEmail: async () => (await mutate('SendVerificationEmail')).sendVerificationEmail,
    verifyEmail: async (token) => (await mutate('VerifyEmail', { token }, { skipAuth: true })).verifyEmail,
    requestEmailChange: async (input) => (await mutate('RequestEmailChange', { input })).requestEmailChange,
    async logout() {
      const data = await mutate('Logout');
      state.accessToken = null;
      state.accessTokenExpiresAt = null;
      state.refreshToken = null;
      return data.logout;
    },
    /**
     * Subscribe to `sessionEvents` (needs `wsUrl`): `next(event)` for each event, `error(error)`
     * once if it ends with an error (a GraphQL error, or the socket closed for good), then
     * `complete()`. Returns the function that unsubscribes.
     */
    sessionEvents({ next, error, complete } = {}) {
      if (!wsClient) throw new Error('sessionEvents needs the wsUrl option');
      const subscription = client
        .subscribe({ query: op('SessionEvents'), fetchPolicy: 'no-cache' })
        .subscribe({
          next: (result) => (result.error ? error?.(result.error) : next?.(result.data.sessionEvents)),
          error: (e) => error?.(e),
          complete: () => complete?.(),
        });
      return () => subscription.unsubscribe();
    },
    /** graphql-ws's client (`on('closed', ...)` and so on), or null without `wsUrl`. */
    wsClient,
    /** Forget the tokens without telling the server (a closed tab, a new process). */
    forget() {
      state.accessToken = null;
      state.accessTokenExpiresAt = null;
      state.refreshToken = null;
    },
    stop() {
      client.stop();
      wsClient?.dispose();
    },
  };
}
