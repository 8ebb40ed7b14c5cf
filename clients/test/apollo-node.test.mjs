// Apollo Client 4 in Node against the authql binary: the whole session life cycle, an access
// token that expires and is renewed by the error link, and automatic persisted queries.
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createAuthqlClient, errorCodes, graphqlErrorsOf, operationsFromSource } from '../src/authql-client.mjs';
import { startAuthql } from '../lib/authql-server.mjs';
import { OPERATIONS_SOURCE, recordingFetch } from '../lib/recording-fetch.mjs';

const ACCESS_TOKEN_SECONDS = 3;
const operations = operationsFromSource(OPERATIONS_SOURCE);
const sha256 = (s) => createHash('sha256').update(s).digest('hex');

/** Run fn, which must fail with GraphQL errors; return them. */
async function rejectsWith(fn) {
  let error;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error, 'expected the operation to fail');
  const errors = graphqlErrorsOf(error);
  assert.ok(errors.length > 0, `expected GraphQL errors, got ${error}`);
  return errors;
}

describe('Apollo Client 4 in Node, token mode', () => {
  let server;
  const log = [];
  const clients = [];
  const newClient = () => {
    const c = createAuthqlClient({ uri: server.graphql, fetch: recordingFetch(log), sha256, operations });
    clients.push(c);
    return c;
  };
  const email = `ada-${randomUUID()}@example.com`;
  const password = 'correct horse battery staple';
  const newPassword = 'a brand new passphrase';
  let a; // the main client
  let b; // a second session of the same user
  let registered;

  before(async () => {
    server = await startAuthql({
      env: { JWT_ACCESS_TOKEN_EXPIRES: String(ACCESS_TOKEN_SECONDS), JWT_LEEWAY_SECONDS: '0' },
    });
    a = newClient();
    b = newClient();
  });
  after(async () => {
    for (const c of clients) c.stop();
    await server?.stop();
  });

  it('register returns a token pair, the user and a current session', async () => {
    registered = await a.register({ email, password, username: `ada_${randomUUID().slice(0, 8)}` });
    assert.equal(registered.tokenType, 'Bearer');
    assert.equal(typeof registered.accessToken, 'string');
    assert.equal(typeof registered.refreshToken, 'string', 'token mode: refreshToken is in the payload');
    assert.equal(registered.user.email, email);
    assert.equal(registered.session.current, true);
    // DateTime values are RFC 3339 strings.
    for (const v of [registered.accessTokenExpiresAt, registered.refreshTokenExpiresAt, registered.user.createdAt]) {
      assert.match(v, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
    }
    const lifetime = Date.parse(registered.accessTokenExpiresAt) - Date.now();
    assert.ok(lifetime <= ACCESS_TOKEN_SECONDS * 1000 + 1000, `access token lives ${lifetime} ms`);
  });

  it('register again with the same email: EMAIL_TAKEN', async () => {
    const errors = await rejectsWith(() => newClient().register({ email: email.toUpperCase(), password }));
    assert.deepEqual(errors.map((e) => e.extensions?.code), ['EMAIL_TAKEN']);
  });

  it('login with a wrong password: INVALID_CREDENTIALS', async () => {
    const errors = await rejectsWith(() => b.login({ emailOrUsername: email, password: 'not the password' }));
    assert.deepEqual(errors.map((e) => e.extensions?.code), ['INVALID_CREDENTIALS']);
  });

  it('login opens a second session; me and mySessions see both', async () => {
    const loggedIn = await b.login({ emailOrUsername: email, password });
    assert.equal(loggedIn.user.id, registered.user.id);
    assert.notEqual(loggedIn.session.id, registered.session.id);

    const me = await a.me();
    assert.equal(me.id, registered.user.id);
    assert.equal(me.email, email);

    const sessions = await a.mySessions();
    assert.deepEqual(sessions.map((s) => s.id).sort(), [registered.session.id, loggedIn.session.id].sort());
    assert.deepEqual(sessions.filter((s) => s.current).map((s) => s.id), [registered.session.id]);
  });

  it('me without a token: UNAUTHENTICATED, reason MISSING', async () => {
    const errors = await rejectsWith(() => newClient().me());
    assert.equal(errors[0].extensions?.code, 'UNAUTHENTICATED');
    assert.equal(errors[0].extensions?.reason, 'MISSING');
  });

  it('an expired access token is renewed by the error link and the operation retried', async () => {
    const before = { ...a.state };
    const expiresAt = Date.parse(registered.accessTokenExpiresAt);
    // Refreshes since register are possible on a slow machine; wait for the current token.
    const waitMs = Math.max(0, expiresAt - Date.now()) + 1200;
    assert.ok(waitMs < (ACCESS_TOKEN_SECONDS + 5) * 1000, `would wait ${waitMs} ms`);
    await sleep(waitMs);

    const start = log.length;
    const me = await a.me();
    assert.equal(me.id, registered.user.id);
    assert.equal(a.state.refreshes, before.refreshes + 1, 'one refresh');
    assert.equal(a.state.retries, before.retries + 1, 'one retry');
    assert.notEqual(a.state.accessToken, before.accessToken);
    assert.notEqual(a.state.refreshToken, before.refreshToken, 'refresh rotates the refresh token');

    // On the wire: Me refused as EXPIRED, then Refresh, then Me answered.
    const seen = log.slice(start).map((r) => `${r.operationName}:${r.codes.join(',') || 'ok'}:${r.reasons.join(',')}`);
    const expiredAt = seen.findIndex((s) => s === 'Me:UNAUTHENTICATED:EXPIRED');
    assert.ok(expiredAt >= 0, `no expired Me in ${seen.join(' | ')}`);
    const refreshAt = seen.findIndex((s, i) => i > expiredAt && s.startsWith('Refresh:ok'));
    assert.ok(refreshAt > expiredAt, `no Refresh after the expired Me in ${seen.join(' | ')}`);
    assert.ok(seen.some((s, i) => i > refreshAt && s.startsWith('Me:ok')), `no Me retried in ${seen.join(' | ')}`);

    // Same session, rotated.
    const sessions = await a.mySessions();
    const current = sessions.find((s) => s.current);
    assert.equal(current.id, registered.session.id);
    assert.ok(current.lastRefreshedAt, 'lastRefreshedAt is set by refresh');

    // The rotated-away refresh token, replayed within REFRESH_REUSE_GRACE_SECONDS (10 s by
    // default), gets the same new pair and no third one (a lost response can be retried).
    const stale = newClient();
    stale.state.refreshToken = before.refreshToken;
    const replay = await stale.refresh();
    assert.equal(replay.session.id, registered.session.id);
    assert.equal(replay.accessToken, a.state.accessToken, 'the same pair, not a new one');
    assert.equal((await a.me()).id, registered.user.id, 'the session lives on');
  });

  it('revokeTokens ends the other session by id; its tokens stop working', async () => {
    const bSession = (await b.mySessions()).find((s) => s.current);
    const result = await a.revokeTokens({ sessionIds: [bSession.id] });
    assert.equal(result.revokedCount, 1);
    assert.deepEqual(result.revokedSessionIds, [bSession.id]);

    assert.deepEqual((await a.mySessions()).map((s) => s.id), [registered.session.id]);
    const meErrors = await rejectsWith(() => b.me());
    assert.equal(meErrors[0].extensions?.code, 'UNAUTHENTICATED');
    const refreshErrors = await rejectsWith(() => b.refresh());
    assert.equal(refreshErrors[0].extensions?.code, 'UNAUTHENTICATED');
    assert.equal(refreshErrors[0].extensions?.reason, 'REVOKED');
  });

  it('revokeTokens with nothing in it: BAD_USER_INPUT', async () => {
    const errors = await rejectsWith(() => a.revokeTokens({ sessionIds: [], tokens: [] }));
    assert.equal(errors[0].extensions?.code, 'BAD_USER_INPUT');
  });

  it('changePassword ends the other sessions; revokeOtherSessions counts', async () => {
    const c = newClient();
    await c.login({ emailOrUsername: email, password });
    const d = newClient();
    await d.login({ emailOrUsername: email, password });

    assert.equal(await a.revokeOtherSessions(), 2);
    assert.equal(errorCodes(await c.me().catch((e) => e))[0], 'UNAUTHENTICATED');

    await c.login({ emailOrUsername: email, password });
    assert.equal(await a.changePassword({ currentPassword: password, newPassword }), true);
    assert.equal(errorCodes(await c.me().catch((e) => e))[0], 'UNAUTHENTICATED');
    assert.equal((await a.me()).id, registered.user.id, 'the caller keeps its session');

    const wrong = await rejectsWith(() => newClient().login({ emailOrUsername: email, password }));
    assert.equal(wrong[0].extensions?.code, 'INVALID_CREDENTIALS');
    await newClient().login({ emailOrUsername: email, password: newPassword });
  });

  it('logout ends the session: its access and refresh tokens are refused', async () => {
    const { accessToken, refreshToken } = a.state;
    assert.equal(await a.logout(), true);
    assert.equal(a.state.accessToken, null);

    const old = newClient();
    old.state.accessToken = accessToken;
    const meErrors = await rejectsWith(() => old.me());
    assert.equal(meErrors[0].extensions?.code, 'UNAUTHENTICATED');
    assert.equal(meErrors[0].extensions?.reason, 'REVOKED');
    old.state.refreshToken = refreshToken;
    const refreshErrors = await rejectsWith(() => old.refresh());
    assert.equal(refreshErrors[0].extensions?.code, 'UNAUTHENTICATED');
  });

  it('queries went as persisted-query hashes; unknown hashes got PERSISTED_QUERY_NOT_FOUND first', () => {
    const hashed = log.filter((r) => r.hash);
    assert.equal(hashed.length, log.length, 'every request carried a persisted-query hash');
    const hashOnly = log.filter((r) => r.hash && !r.hasQuery);
    const notFound = hashOnly.filter((r) => r.codes.includes('PERSISTED_QUERY_NOT_FOUND'));
    const servedByHash = hashOnly.filter((r) => r.status === 200 && r.body?.data && !r.codes.length);
    assert.ok(notFound.length >= 1, 'the first use of a hash is answered PERSISTED_QUERY_NOT_FOUND');
    assert.ok(
      servedByHash.some((r) => r.operationName === 'Me') && servedByHash.some((r) => r.operationName === 'MySessions'),
      `queries answered from the hash alone: ${servedByHash.map((r) => r.operationName).join(', ')}`,
    );
    assert.ok(servedByHash.length >= 5, `only ${servedByHash.length} requests were served by hash alone`);
    // Hash-only queries go as GET; mutations are always POST.
    for (const r of hashOnly) {
      const isQuery = r.operationName === 'Me' || r.operationName === 'MySessions';
      assert.equal(r.method, isQuery ? 'GET' : 'POST', `${r.operationName} sent with ${r.method}`);
    }
    // Each hash registered once (full query after NOT_FOUND), then reused.
    const registeredHashes = new Set(log.filter((r) => r.hasQuery).map((r) => r.hash));
    assert.ok(registeredHashes.size <= Object.keys(operations).length);
  });
});

describe('automatic persisted queries over plain HTTP', () => {
  let server;
  before(async () => { server = await startAuthql(); });
  after(async () => { await server?.stop(); });

  const get = (params) =>
    fetch(`${server.graphql}?${new URLSearchParams(params)}`, {
      headers: { accept: 'application/graphql-response+json, application/json;q=0.9' },
      signal: AbortSignal.timeout(10000),
    });

  it('an unknown hash is PERSISTED_QUERY_NOT_FOUND; after registering it a hashed GET answers', async () => {
    const query = `query Probe { __typename }`;
    const hash = sha256(query);
    const ext = JSON.stringify({ persistedQuery: { version: 1, sha256Hash: hash } });

    const first = await (await get({ extensions: ext })).json();
    assert.deepEqual(first.errors?.map((e) => e.extensions?.code), ['PERSISTED_QUERY_NOT_FOUND']);

    const full = await (await get({ query, extensions: ext })).json();
    assert.deepEqual(full, { data: { __typename: 'Query' } });

    const byHash = await get({ extensions: ext });
    assert.equal(byHash.status, 200);
    assert.deepEqual(await byHash.json(), { data: { __typename: 'Query' } });
  });

  it('a query sent with a hash that is not its SHA-256 is refused, and the hash stays unknown', async () => {
    const query = `query Other { __typename }`;
    const wrong = sha256('something else');
    const ext = JSON.stringify({ persistedQuery: { version: 1, sha256Hash: wrong } });
    const mismatch = await (await get({ query, extensions: ext })).json();
    assert.deepEqual(mismatch.errors?.map((e) => e.extensions?.code), ['PERSISTED_QUERY_HASH_MISMATCH']);
    assert.equal(mismatch.data ?? null, null);
    const after = await (await get({ extensions: ext })).json();
    assert.deepEqual(after.errors?.map((e) => e.extensions?.code), ['PERSISTED_QUERY_NOT_FOUND']);
  });

  it('a persisted mutation is not run by GET', async () => {
    const query = `mutation { logout }`;
    const ext = JSON.stringify({ persistedQuery: { version: 1, sha256Hash: sha256(query) } });
    // Register it by POST (logout without a token fails, which is fine: the text is stored).
    await fetch(server.graphql, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json' },
      body: JSON.stringify({ query, extensions: JSON.parse(ext) }),
      signal: AbortSignal.timeout(10000),
    }).then((r) => r.arrayBuffer());
    const res = await get({ extensions: ext });
    assert.equal(res.status, 405);
    assert.deepEqual((await res.json()).errors?.map((e) => e.extensions?.code), ['METHOD_NOT_ALLOWED']);
  });
});
