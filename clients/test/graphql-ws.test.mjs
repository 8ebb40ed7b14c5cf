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
import WebSocket from 'ws';

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

describe('sessionEvents: every way a session ends arrives as REVOKED', () => {
  let server;
  let http;
  const subs = [];
  const email = `hedy-${randomUUID()}@example.com`;
  let current = password;

  before(async () => {
    server = await startAuthql({ env: { REFRESH_REUSE_GRACE_SECONDS: '0' } });
    http = httpClients(server);
  });
  after(async () => {
    for (const s of subs) await s.stop().catch(() => {});
    http?.stopAll();
    await server?.stop();
  });

  const login = async () => {
    const c = http.make();
    return { c, id: (await c.login({ emailOrUsername: email, password: current })).session.id };
  };
  /** A subscriber on a session of its own, live. */
  async function subscriber() {
    const { c, id } = await login();
    const s = subscribeSessionEvents(wsUrl(server), c.state.accessToken);
    subs.push(s);
    await whenLive(s, async () => (await login()).id);
    return { c, id, s };
  }
  const revokedOf = (s, ids) => Promise.all(ids.map((id) =>
    s.waitEvent((e) => e.sessionId === id && e.type === 'REVOKED', `REVOKED of ${id}`)));

  it('revokeOtherSessions, changePassword and a reused refresh token', async () => {
    await http.make().register({ email, password });
    const watcher = await subscriber();

    const others = [await login(), await login()];
    assert.equal(await watcher.c.revokeOtherSessions() >= 2, true);
    for (const e of await revokedOf(watcher.s, others.map((o) => o.id))) assert.equal(e.current, false);

    const victims = [await login(), await login()];
    current = 'a brand new passphrase';
    assert.equal(await watcher.c.changePassword({ currentPassword: password, newPassword: current }), true);
    await revokedOf(watcher.s, victims.map((v) => v.id));

    // Reuse of a rotated refresh token (no grace): the whole session is revoked.
    const { c: thief, id: stolen } = await login();
    const old = thief.state.refreshToken;
    await thief.refresh();
    const replay = http.make();
    replay.state.refreshToken = old;
    await replay.refresh().catch(() => {});
    const [e] = await revokedOf(watcher.s, [stolen]);
    assert.equal(e.current, false);
    assert.deepEqual(watcher.s.closes(), [], 'the watcher is not affected');
  });

  it("deleteAccount from another session: the subscriber's session is REVOKED (current=true), then 4403", async () => {
    const watcher = await subscriber();
    const { c: deleter } = await login();
    assert.equal(await deleter.deleteAccount({ password: current }), true);
    const closed = await watcher.s.waitClose();
    assert.equal(closed.code, 4403);
    const kinds = watcher.s.timeline.map((t) => (t.kind === 'event' ? `${t.event.type}:${t.event.sessionId === watcher.id}:${t.event.current}` : t.kind));
    const revokedAt = kinds.indexOf('REVOKED:true:true');
    assert.ok(revokedAt >= 0 && revokedAt < kinds.indexOf('closed'), kinds.join(' | '));
  });
});

describe('graphql-transport-ws close codes (raw ws)', () => {
  let server;
  let token;
  let email;

  before(async () => {
    server = await startAuthql({ env: { WEBSOCKET_INIT_TIMEOUT_SECONDS: '1', WEBSOCKET_MAX_CONNECTIONS_PER_USER: '2' } });
    const c = createAuthqlClient({ uri: server.graphql, fetch, sha256, operations });
    email = `alan-${randomUUID()}@example.com`;
    token = (await c.register({ email, password })).accessToken;
    c.stop();
  });
  after(async () => { await server?.stop(); });

  /** Open a raw socket, send `messages` (after an ack when `init`), return the close code. */
  async function raw({ protocol = 'graphql-transport-ws', messages = [], init = false, keepOpen = false } = {}) {
    const ws = new WebSocket(wsUrl(server), protocol ? [protocol] : []);
    const received = [];
    const closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
    ws.on('message', (m) => received.push(JSON.parse(String(m))));
    ws.on('error', () => {});
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('close', resolve); ws.once('error', reject); });
    if (ws.readyState === WebSocket.OPEN && init) {
      ws.send(JSON.stringify({ type: 'connection_init', payload: { Authorization: `Bearer ${token}` } }));
      await until(() => received.find((m) => m.type === 'connection_ack') || ws.readyState !== WebSocket.OPEN, 'ack');
    }
    for (const m of messages) if (ws.readyState === WebSocket.OPEN) ws.send(typeof m === 'string' ? m : JSON.stringify(m));
    if (keepOpen) return { ws, received, closed };
    const code = await Promise.race([closed, sleep(5000).then(() => 'still open')]);
    ws.terminate();
    return { code, received };
  }
  const sub = (id) => ({ id, type: 'subscribe', payload: { query: 'subscription { sessionEvents { type } }' } });

  it('4406 without the subprotocol', async () => {
    assert.equal((await raw({ protocol: null })).code, 4406);
  });
  it('4400 for a message that is not the protocol\'s', async () => {
    assert.equal((await raw({ messages: ['not json'] })).code, 4400);
    assert.equal((await raw({ init: true, messages: [{ type: 'no_such_type' }] })).code, 4400);
  });
  it('4401 for subscribe before connection_ack', async () => {
    assert.equal((await raw({ messages: [sub('1')] })).code, 4401);
  });
  it('4408 without connection_init in WEBSOCKET_INIT_TIMEOUT_SECONDS', async () => {
    assert.equal((await raw()).code, 4408);
  });
  it('4409 for a subscribe with an id in use', async () => {
    const { code, received } = await raw({ init: true, messages: [sub('same'), sub('same')] });
    assert.equal(code, 4409, JSON.stringify(received));
  });
  it('4429 for a second connection_init', async () => {
    const again = { type: 'connection_init', payload: { Authorization: `Bearer ${token}` } };
    assert.equal((await raw({ init: true, messages: [again] })).code, 4429);
  });
  it('4429 past WEBSOCKET_MAX_CONNECTIONS_PER_USER; a slot frees when a connection closes', async () => {
    const open = [await raw({ init: true, keepOpen: true }), await raw({ init: true, keepOpen: true })];
    for (const o of open) assert.ok(o.received.some((m) => m.type === 'connection_ack'));
    assert.equal((await raw({ init: true })).code, 4429);
    open[0].ws.close(1000);
    await open[0].closed;
    const third = await raw({ init: true, keepOpen: true });
    await until(() => third.received.find((m) => m.type === 'connection_ack'), 'an ack once a slot is free');
    third.ws.terminate();
    open[1].ws.terminate();
  });
  it('ping is answered with pong', async () => {
    const { ws, received } = await raw({ init: true, keepOpen: true, messages: [{ type: 'ping' }] });
    await until(() => received.find((m) => m.type === 'pong'), 'pong');
    ws.terminate();
  });
});
