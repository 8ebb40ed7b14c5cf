// The Apollo Client app in headless Chromium subscribes to `sessionEvents` through its split
// link (subscriptions -> GraphQLWsLink over graphql-ws, the rest -> the HTTP chain), the access
// token in connection_init's payload. The page comes from an origin listed in
// CORS_ALLOWED_ORIGINS, with the refresh token in authql's HttpOnly cookie. Node logs the same
// user in (the page sees CREATED), then revokes the page's session: the page sees REVOKED with
// current=true, then its socket is closed with 4403 (and again at each reconnection, the token
// being dead). A page from an origin not on the list cannot open the socket at all.
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { createAuthqlClient, operationsFromSource } from '../src/authql-client.mjs';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { APP_PAGE, bundleBrowserApp } from '../lib/bundle.mjs';
import { OPERATIONS_SOURCE } from '../lib/recording-fetch.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const HOST = process.env.BROWSER_HOST || '127.0.0.1';
const SECURE = (process.env.COOKIE_SECURE ?? 'true') !== 'false';
const operations = operationsFromSource(OPERATIONS_SOURCE);
const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const RETRY_ATTEMPTS = 2;

describe(`Apollo Client app in Chromium: sessionEvents over GraphQLWsLink (${HOST})`, { skip: chromiumMissing }, () => {
  let server;
  let app; // the listed origin
  let other; // an origin not on the list
  let browser;
  let context;
  let page;
  let blocked;
  let api;
  let pageSession;
  const nodeClients = [];
  const email = `katherine-${randomUUID()}@example.com`;
  const password = 'correct horse battery staple';

  const nodeLogin = async () => {
    const c = createAuthqlClient({ uri: api, fetch, sha256, operations });
    nodeClients.push(c);
    const payload = await c.login({ emailOrUsername: email, password });
    return { c, id: payload.session.id };
  };
  const timeline = () => page.evaluate(() => window.authqlApp.wsTimeline);
  const pageEvents = async () => (await timeline()).filter((t) => t.kind === 'event').map((t) => t.event);
  const waitPage = async (check, what, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = check(await timeline());
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; page saw ${JSON.stringify(await timeline())}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const call = (method, ...args) => page.evaluate(([m, a]) => window.authqlApp.call(m, ...a), [method, args]);

  before(async () => {
    const bundle = await bundleBrowserApp();
    const routes = { '/': { body: APP_PAGE, type: 'text/html; charset=utf-8' }, '/app.js': { body: bundle, type: 'text/javascript' } };
    app = await startStaticServer({ routes, publicHost: HOST });
    other = await startStaticServer({ routes, publicHost: HOST });
    server = await startAuthql({
      env: {
        REFRESH_TOKEN_COOKIE: 'true',
        REFRESH_TOKEN_COOKIE_SECURE: String(SECURE),
        CORS_ALLOWED_ORIGINS: app.url,
      },
    });
    api = `http://${HOST}:${server.port}/graphql`;
    browser = await launchChromium();
    context = await browser.newContext();
    blocked = await loopbackOnly(context);
    page = await context.newPage();
    await page.goto(`${app.url}/`, { timeout: 30000 });
    await page.waitForFunction(() => document.title === 'authql app ready', null, { timeout: 10000 });
    await page.evaluate(([uri, retryAttempts]) => {
      window.authqlApp.create(uri, { ws: { retryAttempts, retryWaitMs: 200 } });
    }, [api, RETRY_ATTEMPTS]);
  });

  after(async () => {
    for (const c of nodeClients) c.stop();
    await browser?.close();
    await app?.stop();
    await other?.stop();
    await server?.stop();
  });

  it('the page registers over HTTP and subscribes; a login of the same user from Node arrives as CREATED, current=false', async () => {
    const r = await call('register', { email, password });
    assert.ok(r.ok, JSON.stringify(r));
    pageSession = r.value.session.id;
    await page.evaluate(() => window.authqlApp.subscribeSessionEvents());
    await waitPage((t) => t.find((x) => x.kind === 'connected'), 'the socket to connect');
    // The protocol does not acknowledge a subscribe: log in until the subscription is live.
    for (let i = 0; ; i++) {
      const { id } = await nodeLogin();
      try {
        await waitPage((t) => t.find((x) => x.kind === 'event' && x.event.sessionId === id), 'CREATED', 500);
        break;
      } catch (e) {
        if (i === 20) throw e;
      }
    }
    // Now it is live: this login's CREATED must arrive.
    const { id } = await nodeLogin();
    const { event } = await waitPage((t) => t.find((x) => x.kind === 'event' && x.event.sessionId === id), "the Node login's CREATED");
    assert.deepEqual({ type: event.type, current: event.current }, { type: 'CREATED', current: false });
    assert.match(event.at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
  });

  it('the page refreshes its own session through the cookie: REFRESHED, current=true; the socket stays open', async () => {
    const r = await call('refresh');
    assert.ok(r.ok, JSON.stringify(r));
    const { event } = await waitPage((t) => t.find((x) => x.kind === 'event' && x.event.sessionId === pageSession), 'REFRESHED');
    assert.deepEqual({ type: event.type, current: event.current }, { type: 'REFRESHED', current: true });
    assert.deepEqual((await timeline()).filter((t) => t.kind === 'closed'), []);
  });

  it("Node revokes the page's session: the page sees REVOKED with current=true, then its socket is closed with 4403", async () => {
    const { c } = await nodeLogin();
    const result = await c.revokeTokens({ sessionIds: [pageSession] });
    assert.deepEqual(result.revokedSessionIds, [pageSession]);

    // Every connection attempt ends in 4403: the first because the session ended, the retries
    // because its access token is refused; then the subscription fails.
    const seen = await waitPage((t) => t.find((x) => x.kind === 'error' || x.kind === 'complete') && t,
      'the subscription to end after its retries', 15000);
    const kinds = seen.map((t) => (t.kind === 'event' ? `${t.event.type}:${t.event.sessionId === pageSession}:${t.event.current}` : t.kind));
    const revokedAt = kinds.indexOf('REVOKED:true:true');
    const firstClose = kinds.indexOf('closed');
    assert.ok(revokedAt >= 0, `no REVOKED current=true: ${kinds.join(' | ')}`);
    assert.ok(firstClose > revokedAt, `REVOKED came before the first close: ${kinds.join(' | ')}`);
    const closes = seen.filter((t) => t.kind === 'closed');
    assert.deepEqual(closes.map((t) => t.code), Array(RETRY_ATTEMPTS + 1).fill(4403), JSON.stringify(closes));
    assert.equal(seen.filter((t) => t.kind === 'connected').length, 1, 'no reconnection was accepted');
    // Nothing about the page's session after REVOKED; current=true for the page's session only.
    assert.deepEqual(kinds.slice(revokedAt + 1).filter((k) => k.includes(':true:')), []);
    for (const e of await pageEvents()) assert.equal(e.current, e.sessionId === pageSession, JSON.stringify(e));

    // Over HTTP the page's session is over too, cookie included.
    const me = await call('me');
    assert.deepEqual(me.codes, ['UNAUTHENTICATED']);
    const refresh = await call('refresh');
    assert.deepEqual(refresh.codes, ['UNAUTHENTICATED']);
  });

  it('a page from an origin not in CORS_ALLOWED_ORIGINS cannot open the socket (403 before the upgrade)', async () => {
    // The same probe from both origins, without a token: the listed one is upgraded (then
    // closed 4403 for want of a token), the other never opens.
    const probe = (p) => p.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url, 'graphql-transport-ws');
      let opened = false;
      ws.onopen = () => {
        opened = true;
        ws.send(JSON.stringify({ type: 'connection_init', payload: {} }));
      };
      ws.onclose = (e) => resolve({ opened, code: e.code });
    }), api.replace(/^http/, 'ws'));
    const page2 = await context.newPage();
    try {
      await page2.goto(`${other.url}/`, { timeout: 30000 });
      await page2.waitForFunction(() => document.title === 'authql app ready', null, { timeout: 10000 });
      assert.deepEqual(await probe(page2), { opened: false, code: 1006 });
      assert.deepEqual(await probe(page), { opened: true, code: 4403 });
    } finally {
      await page2.close();
    }
    // What the browser saw as 1006 is a 403 answer to the upgrade.
    const status = await new Promise((resolve, reject) => {
      const ws = new WebSocket(api.replace(/^http/, 'ws'), 'graphql-transport-ws', { origin: other.url });
      ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode); res.resume(); });
      ws.on('open', () => { ws.close(); reject(new Error('upgraded')); });
      ws.on('error', () => {});
    });
    assert.equal(status, 403);
    assert.deepEqual(blocked, [], 'requests beyond loopback');
  });
});
