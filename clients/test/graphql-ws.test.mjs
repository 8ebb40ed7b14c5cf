// authql's `subscription { sessionEvents }` over WebSocket (graphql-transport-ws) with the real
// `graphql-ws` client in Node (`ws` as its WebSocket): the events of one's own user only
// (CREATED, REFRESHED, REVOKED with `current`), 4403 for a missing or refused token, queries
// refused with SUBSCRIPTIONS_ONLY, the connection's own session revoked (REVOKED, current=true,
// then 4403), and a reconnection with a fresh token after the access token expired.
// Queries and mutations go over HTTP with the Apollo app of src/authql-client.mjs.
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createAuthqlClient, operationsFromSource } from '../src/authql-client.mjs';
import { startAuthql } from '../lib/authql-server.mjs';
import { OPERATIONS_SOURCE } from '../lib/recording-fetch.mjs';
import { subscribeSessionEvents, until, whenLive, wsUrl } from '../lib/session-events.mjs';

const operations = operationsFromSource(OPERATIONS_SOURCE);
const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const password = 'correct horse battery staple';
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/;

function httpClients(server) {
  const clients = [];
  const make = () => {
    const c = createAuthqlClient({ uri: server.graphql, fetch, sha256, operations });
    clients.push(c);
    return c;
  };
  return { make, stopAll: () => clients.forEach((c) => c.stop()) };
}

describe('sessionEvents with the graphql-ws client in Node', () => {
  let server;
  let http;
  const subs = [];
  const email = `ada-${randomUUID()}@example.com`;
  const bobEmail = `bob-${randomUUID()}@example.com`;
  let ada; // the subscriber's HTTP client (its session opened the socket)
  let adaSession;
  let sub; // ada's subscription
  let other; // a second session of ada, from HTTP
  const bobSessions = new Set();

  const login = async (who = email) => {
    const c = http.make();
    return { c, id: (await c.login({ emailOrUsername: who, password })).session.id };
  };
  const subscribe = (token, options) => {
    const s = subscribeSessionEvents(wsUrl(server), token, options);
    subs.push(s);
    return s;
  };

  before(async () => {
    server = await startAuthql();
    http = httpClients(server);
    ada = http.make();
    adaSession = (await ada.register({ email, password })).session.id;
    const bob = http.make();
    bobSessions.add((await bob.register({ email: bobEmail, password })).session.id);
    sub = subscribe(ada.state.accessToken);
    await whenLive(sub, async () => (await login()).id);
  });

  after(async () => {
    for (const s of subs) await s.stop().catch(() => {});
    http?.stopAll();
    await server?.stop();
  });

  it('a login of the same user from HTTP arrives as CREATED with its session id, current=false', async () => {
    const before = Date.now();
    ({ c: other } = await login());
    const otherId = (await other.mySessions()).find((s) => s.current).id;
    const event = await sub.waitEvent((e) => e.sessionId === otherId, 'CREATED of the new session');
    assert.equal(event.type, 'CREATED');
    assert.equal(event.current, false);
    assert.match(event.at, RFC3339);
    const at = Date.parse(event.at);
    assert.ok(at >= before - 2000 && at <= Date.now() + 2000, `at ${event.at} is about now`);
  });

  it('refresh of that session arrives as REFRESHED, current=false', async () => {
    const { session } = await other.refresh();
    const event = await sub.waitEvent((e) => e.sessionId === session.id && e.type !== 'CREATED', 'REFRESHED');
    assert.deepEqual({ type: event.type, current: event.current }, { type: 'REFRESHED', current: false });
  });

  it('refresh of the subscriber\'s own session arrives as REFRESHED, current=true; the socket stays open', async () => {
    await ada.refresh();
    const event = await sub.waitEvent((e) => e.sessionId === adaSession, 'REFRESHED of the own session');
    assert.deepEqual({ type: event.type, current: event.current }, { type: 'REFRESHED', current: true });
    await sleep(300);
    assert.deepEqual(sub.closes(), [], 'no close');
  });

  it('revokeTokens with sessionIds arrives as REVOKED, current=false; the socket stays open', async () => {
    const otherId = (await other.mySessions()).find((s) => s.current).id;
    const result = await ada.revokeTokens({ sessionIds: [otherId] });
    assert.deepEqual(result.revokedSessionIds, [otherId]);
    const event = await sub.waitEvent((e) => e.sessionId === otherId && e.type === 'REVOKED', 'REVOKED');
    assert.equal(event.current, false);
    // Nothing else about that session after CREATED, REFRESHED, REVOKED.
    assert.deepEqual(sub.events().filter((e) => e.sessionId === otherId).map((e) => e.type), ['CREATED', 'REFRESHED', 'REVOKED']);
    const { id } = await login();
    await sub.waitEvent((e) => e.sessionId === id, 'a later CREATED on the same socket');
    assert.deepEqual(sub.closes(), [], 'no close');
  });

  it("another user's logins, refreshes and logouts never arrive", async () => {
    const bob = http.make();
    const loggedIn = await bob.login({ emailOrUsername: bobEmail, password });
    bobSessions.add(loggedIn.session.id);
    await bob.refresh();
    await bob.logout();
    const { id: bob2 } = await login(bobEmail);
    bobSessions.add(bob2);
    // Ada's next event comes after all of Bob's were published.
    const { id } = await login();
    await sub.waitEvent((e) => e.sessionId === id, "ada's CREATED after bob's events");
    await sleep(200);
    const leaked = sub.events().filter((e) => bobSessions.has(e.sessionId));
    assert.deepEqual(leaked, [], "bob's events reached ada's subscription");
  });

  it('a query or a mutation over the socket gets an error SUBSCRIPTIONS_ONLY; the subscription lives on', async () => {
    for (const query of ['query Me { me { id } }', '{ __typename }', 'mutation { revokeOtherSessions }']) {
      const errors = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer to ${query}`)), 5000);
        sub.client.subscribe({ query }, {
          next: (r) => { clearTimeout(timer); reject(new Error(`answered: ${JSON.stringify(r)}`)); },
          error: (e) => { clearTimeout(timer); resolve(e); },
          complete: () => { clearTimeout(timer); reject(new Error('completed without an error')); },
        });
      });
      assert.ok(Array.isArray(errors), `an error message's payload (GraphQL errors), got ${errors}`);
      assert.deepEqual(errors.map((e) => e.extensions?.code), ['SUBSCRIPTIONS_ONLY'], query);
    }
    assert.equal((await ada.mySessions()).length >= 2, true, 'the mutation was not run');
    const { id } = await login();
    await sub.waitEvent((e) => e.sessionId === id, 'CREATED after the refused operations');
    assert.deepEqual(sub.closes(), [], 'no close');
  });

  it('no token, a malformed token, a bad token or a revoked session token: closed with 4403', async () => {
    const { c: revoked, id: revokedId } = await login();
    const revokedToken = revoked.state.accessToken;
    await ada.revokeTokens({ sessionIds: [revokedId] });
    const cases = {
      none: null,
      garbage: 'not-a-jwt',
      forged: `${ada.state.accessToken.slice(0, -4)}AAAA`,
      revoked: revokedToken,
    };
    for (const [name, token] of Object.entries(cases)) {
      const s = subscribe(token);
      const closed = await s.waitClose();
      assert.equal(closed.code, 4403, `${name}: ${JSON.stringify(s.timeline)}`);
      await until(() => s.timeline.find((t) => t.kind === 'error'), `${name}: the sink's error`);
      assert.deepEqual(s.events(), [], `${name}: no events`);
      assert.equal(s.timeline.filter((t) => t.kind === 'closed').length, 1, `${name}: retryAttempts 0, no reconnection`);
    }
    // An empty payload, a token without "Bearer ", a header of another name.
    const token = ada.state.accessToken;
    for (const [name, payload] of Object.entries({
      empty: {}, noBearer: { Authorization: token }, otherHeader: { 'X-Authorization': `Bearer ${token}` },
    })) {
      const s = subscribe(null, { connectionParams: payload });
      const closed = await s.waitClose();
      assert.equal(closed.code, 4403, `${name}: ${JSON.stringify(s.timeline)}`);
      assert.deepEqual(s.events(), [], `${name}: no events`);
    }
  });

  it("revoking the subscriber's own session delivers REVOKED with current=true, then closes with 4403", async () => {
    const { c: own, id: ownId } = await login();
    const s = subscribe(own.state.accessToken);
    await whenLive(s, async () => (await login()).id);
    await ada.revokeTokens({ sessionIds: [ownId] });
    const closed = await s.waitClose();
    assert.equal(closed.code, 4403);
    const kinds = s.timeline.map((t) => (t.kind === 'event' ? `${t.event.type}:${t.event.sessionId === ownId}:${t.event.current}` : t.kind));
    const revokedAt = kinds.indexOf('REVOKED:true:true');
    assert.ok(revokedAt >= 0, `no REVOKED current=true in ${kinds.join(' | ')}`);
    assert.ok(revokedAt < kinds.indexOf('closed'), `REVOKED before the close: ${kinds.join(' | ')}`);
    // The other subscriber saw it as not current, and is still open.
    const seen = await sub.waitEvent((e) => e.sessionId === ownId && e.type === 'REVOKED', 'REVOKED on the other socket');
    assert.equal(seen.current, false);
    assert.deepEqual(sub.closes(), []);
  });

  it("logout of the subscriber's own session: REVOKED current=true, then 4403", async () => {
    await ada.logout();
    const closed = await sub.waitClose();
    assert.equal(closed.code, 4403);
    const kinds = sub.timeline.map((t) => (t.kind === 'event' ? `${t.event.type}:${t.event.sessionId === adaSession}:${t.event.current}` : t.kind));
    const revokedAt = kinds.indexOf('REVOKED:true:true');
    assert.ok(revokedAt >= 0, `no REVOKED current=true in ${kinds.slice(-5).join(' | ')}`);
    assert.ok(revokedAt < kinds.indexOf('closed'), `REVOKED before the close: ${kinds.slice(-5).join(' | ')}`);
    // current is true for the own session only.
    for (const e of sub.events()) assert.equal(e.current, e.sessionId === adaSession, JSON.stringify(e));
  });
});

describe('sessionEvents: the access token expires, graphql-ws reconnects with a fresh one', () => {
  const ACCESS_TOKEN_SECONDS = 3;
  let server;
  let http;
  let sub;

  before(async () => {
    server = await startAuthql({
      env: { JWT_ACCESS_TOKEN_EXPIRES: String(ACCESS_TOKEN_SECONDS), JWT_LEEWAY_SECONDS: '0' },
    });
    http = httpClients(server);
  });
  after(async () => {
    await sub?.stop().catch(() => {});
    http?.stopAll();
    await server?.stop();
  });

  it('closed with 4403 when the token expires; connectionParams refreshes it and events flow again', async () => {
    const email = `grace-${randomUUID()}@example.com`;
    const app = http.make();
    const registered = await app.register({ email, password });
    let expiresAt = Date.parse(registered.accessTokenExpiresAt);
    const tokensSent = [];
    // A fresh token at every (re)connection, as an app would do it.
    const token = async () => {
      if (Date.now() > expiresAt - 500) expiresAt = Date.parse((await app.refresh()).accessTokenExpiresAt);
      tokensSent.push(app.state.accessToken);
      return app.state.accessToken;
    };
    sub = subscribeSessionEvents(wsUrl(server), token, { retryAttempts: 3, retryWait: () => sleep(100) });
    const login = async () => (await http.make().login({ emailOrUsername: email, password })).session.id;
    await whenLive(sub, login);

    await until(() => sub.closes()[0], 'the close at expiry', (ACCESS_TOKEN_SECONDS + 3) * 1000);
    assert.equal(sub.closes()[0].code, 4403);
    await until(() => sub.timeline.filter((t) => t.kind === 'connected').length >= 2, 'a second connection', 5000);
    assert.equal(new Set(tokensSent).size >= 2, true, 'a fresh token on reconnection');
    // The subscription (same sink) goes on over the new connection.
    await whenLive(sub, login);
    assert.equal(sub.timeline.filter((t) => t.kind === 'error' || t.kind === 'complete').length, 0,
      `the sink was not ended: ${JSON.stringify(sub.timeline.filter((t) => t.kind !== 'event'))}`);
  });
});
