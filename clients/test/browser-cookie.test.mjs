// The Apollo Client app (src/authql-client.mjs, bundled by esbuild) in headless Chromium, with
// authql keeping the refresh token in an HttpOnly cookie (REFRESH_TOKEN_COOKIE=true). The page
// comes from another origin than authql's, listed in CORS_ALLOWED_ORIGINS; a second page from
// an origin not on the list must be blocked.
//
// Host name: BROWSER_HOST (default 127.0.0.1) for both the page and authql, so that they are
// same-site (the cookie is SameSite=Strict). COOKIE_SECURE (default true) sets
// REFRESH_TOKEN_COOKIE_SECURE: Chromium treats http://127.0.0.1 and http://localhost as secure
// contexts and accepts Secure (and __Secure-) cookies from them, so the production default is
// what this test runs.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { APP_PAGE, bundleBrowserApp } from '../lib/bundle.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const HOST = process.env.BROWSER_HOST || '127.0.0.1';
const SECURE = (process.env.COOKIE_SECURE ?? 'true') !== 'false';
const COOKIE = SECURE ? '__Secure-authql_refresh' : 'authql_refresh';
const ACCESS_TOKEN_SECONDS = 3;

describe(`Apollo Client app in Chromium, refresh token in an HttpOnly cookie (${HOST}, Secure=${SECURE})`, {
  skip: chromiumMissing,
}, () => {
  let server;
  let app; // the listed origin
  let other; // an origin not on the list
  let browser;
  let context;
  let page;
  let blocked;
  let api;
  const seenRefreshTokens = new Set();
  const requests = [];
  const pageBodies = []; // every response body the page's fetch wrapper read
  const documentCookies = []; // document.cookie, before each reload and at the end
  const email = `grace-${Date.now()}@example.com`;
  const password = 'correct horse battery staple';

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
        JWT_ACCESS_TOKEN_EXPIRES: String(ACCESS_TOKEN_SECONDS),
        JWT_LEEWAY_SECONDS: '0',
      },
    });
    api = `http://${HOST}:${server.port}/graphql`;
    browser = await launchChromium();
    context = await browser.newContext();
    blocked = await loopbackOnly(context);
    page = await context.newPage();
    page.on('request', (r) => {
      if (r.url().startsWith(api)) requests.push({ method: r.method(), url: r.url(), body: r.postData() });
    });
    await page.goto(`${app.url}/`, { timeout: 30000 });
    await page.waitForFunction(() => document.title === 'authql app ready', null, { timeout: 10000 });
    await page.evaluate((uri) => { window.authqlApp.create(uri); }, api);
  });

  after(async () => {
    await browser?.close();
    await app?.stop();
    await other?.stop();
    await server?.stop();
  });

  /** Move what the page captured so far into pageBodies / documentCookies. */
  async function drainPage() {
    const { bodies, cookie } = await page.evaluate(() => ({
      bodies: window.authqlApp.responses.splice(0).map((r) => r.body),
      cookie: document.cookie,
    }));
    pageBodies.push(...bodies);
    documentCookies.push(cookie);
  }

  const call = (method, ...args) => page.evaluate(([m, a]) => window.authqlApp.call(m, ...a), [method, args]);

  /** The refresh cookie as the browser holds it (Playwright sees HttpOnly cookies). */
  async function refreshCookie() {
    const cookies = (await context.cookies(api)).filter((c) => c.name.endsWith('authql_refresh'));
    assert.ok(cookies.length <= 1, `one refresh cookie at most, got ${cookies.map((c) => c.name)}`);
    if (cookies[0]) seenRefreshTokens.add(cookies[0].value);
    return cookies[0];
  }

  it('register sets an HttpOnly, SameSite=Strict cookie on Path=/graphql; the payload has no refresh token', async () => {
    const r = await call('register', { email, password });
    assert.ok(r.ok, `register failed: ${JSON.stringify(r)}`);
    assert.equal(r.value.refreshToken, null);
    assert.equal(typeof r.value.accessToken, 'string');
    const cookie = await refreshCookie();
    assert.ok(cookie, 'a refresh cookie was stored');
    assert.equal(cookie.name, COOKIE);
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.secure, SECURE);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(cookie.path, '/graphql');
  });

  it('me works with the access token', async () => {
    const r = await call('me');
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.value.email, email);
  });

  it('refresh without an argument rotates the pair through the cookie', async () => {
    const before = await refreshCookie();
    const token = (await call('me')).state.accessToken;
    const r = await call('refresh');
    assert.ok(r.ok, `refresh failed: ${JSON.stringify(r)}`);
    assert.equal(r.value.refreshToken, null);
    assert.notEqual(r.value.accessToken, token);
    const after = await refreshCookie();
    assert.notEqual(after.value, before.value, 'the cookie holds the new refresh token');
    // The Refresh request carried no refresh token: only the cookie did.
    const refreshRequest = requests.filter((q) => q.body?.includes('"Refresh"')).at(-1);
    assert.ok(refreshRequest, 'a Refresh request went out');
    assert.deepEqual(JSON.parse(refreshRequest.body).variables ?? {}, {});
    assert.ok((await call('me')).ok);
  });

  it('an expired access token is renewed by the error link through the cookie', async () => {
    const start = await call('mySessions');
    assert.ok(start.ok, JSON.stringify(start));
    const cookieBefore = await refreshCookie();
    await sleep((ACCESS_TOKEN_SECONDS * 1000) + 1200);
    const r = await call('me');
    assert.ok(r.ok, `me after expiry: ${JSON.stringify(r)}`);
    assert.equal(r.state.refreshes, start.state.refreshes + 1);
    assert.equal(r.state.retries, start.state.retries + 1);
    assert.notEqual((await refreshCookie()).value, cookieBefore.value);
  });

  it('login in the same browser opens a session and replaces the cookie', async () => {
    const r = await call('login', { emailOrUsername: email, password });
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.value.refreshToken, null);
    await refreshCookie();
    const sessions = await call('mySessions');
    assert.equal(sessions.value.length, 2);
    assert.deepEqual(sessions.value.filter((s) => s.current).map((s) => s.id), [r.value.session.id]);
  });

  it('after a reload (no token left in script) refresh on load restores the session from the cookie', async () => {
    const before = await call('mySessions');
    const current = before.value.find((s) => s.current).id;
    await drainPage();
    await page.reload({ timeout: 30000 });
    await page.waitForFunction(() => document.title === 'authql app ready', null, { timeout: 10000 });
    await page.evaluate((uri) => { window.authqlApp.create(uri); }, api);
    const anonymous = await call('me');
    assert.deepEqual(anonymous.codes, ['UNAUTHENTICATED']);
    const r = await call('refresh');
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.value.session.id, current);
    assert.ok((await call('me')).ok);
    await refreshCookie();
  });

  it('a page from an origin not in CORS_ALLOWED_ORIGINS is blocked', async () => {
    const page2 = await context.newPage();
    try {
      await page2.goto(`${other.url}/`, { timeout: 30000 });
      await page2.waitForFunction(() => document.title === 'authql app ready', null, { timeout: 10000 });
      const outcome = await page2.evaluate(async (uri) => {
        const results = {};
        // A credentialed POST (preflighted) and a simple GET: neither may be read.
        for (const [name, init] of [
          ['post', { method: 'POST', credentials: 'include', headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ query: 'mutation { refresh { accessToken } }' }) }],
          ['get', { method: 'GET', credentials: 'include' }],
        ]) {
          try {
            const res = await fetch(name === 'get' ? `${uri}?query=%7B__typename%7D` : uri, init);
            results[name] = { read: true, status: res.status, body: await res.text() };
          } catch (e) {
            results[name] = { read: false, error: e.name };
          }
        }
        window.authqlApp.create(uri);
        results.refresh = await window.authqlApp.call('refresh');
        return results;
      }, api);
      assert.deepEqual(outcome.post, { read: false, error: 'TypeError' });
      assert.deepEqual(outcome.get, { read: false, error: 'TypeError' });
      assert.equal(outcome.refresh.ok, false);
      assert.equal(outcome.refresh.network, true, 'a network error, not an answer');
    } finally {
      await page2.close();
    }
    // The listed origin still works, with the same cookie.
    const r = await call('refresh');
    assert.ok(r.ok, JSON.stringify(r));
    await refreshCookie();
  });

  it('logout clears the cookie; refresh is then refused', async () => {
    const r = await call('logout');
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.value, true);
    const cookie = await refreshCookie();
    assert.equal(cookie, undefined, 'the refresh cookie is gone');
    const again = await call('refresh');
    assert.equal(again.ok, false);
    assert.deepEqual(again.codes, ['UNAUTHENTICATED']);
  });

  it('no refresh token ever reached page script: not in document.cookie, not in any response body', async () => {
    assert.ok(seenRefreshTokens.size >= 4, `saw ${seenRefreshTokens.size} refresh tokens`);
    await drainPage();
    const bodies = pageBodies;
    assert.ok(bodies.length >= 12, `captured ${bodies.length} response bodies`);
    for (const cookie of documentCookies) {
      assert.ok(!cookie.includes('authql_refresh'), `document.cookie: ${cookie}`);
      for (const token of seenRefreshTokens) assert.ok(!cookie.includes(token), 'a refresh token in document.cookie');
    }
    for (const token of seenRefreshTokens) {
      for (const body of bodies) assert.ok(!body.includes(token), 'a refresh token in a response body');
    }
    // And every AuthPayload the page read had refreshToken: null.
    let payloads = 0;
    for (const body of bodies) {
      const data = JSON.parse(body).data ?? {};
      for (const field of ['register', 'login', 'refresh']) {
        if (data[field]) {
          payloads++;
          assert.equal(data[field].refreshToken, null);
        }
      }
    }
    assert.ok(payloads >= 5, `only ${payloads} AuthPayloads seen`);
    assert.deepEqual(blocked, [], 'requests beyond loopback');
  });
});
