// GraphiQL served by authql at `/`, offline: headless Chromium resolves only loopback names
// and every request to another host is recorded and aborted. The page must render, run the
// default query's Register, then Me with the access token pasted into the headers editor.
//
// GRAPHIQL_PAGE_FROM=assets serves ../assets/graphiql from a local server instead (same paths,
// authql's Content-Security-Policy, /graphql proxied to authql): for working on the page before
// the binary embeds it. The default, and what counts, is authql's own `/`.
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const assets = fileURLToPath(new URL('../../assets/graphiql/', import.meta.url));
const outputDir = fileURLToPath(new URL('../test-output/', import.meta.url));
const CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; " +
  "object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

describe('GraphiQL offline in Chromium', { skip: chromiumMissing }, () => {
  let server;
  let pageServer;
  let browser;
  let context;
  let page;
  let blocked;
  let origin;
  const requested = [];
  const pageErrors = [];

  before(async () => {
    server = await startAuthql();
    origin = server.url;
    if (process.env.GRAPHIQL_PAGE_FROM === 'assets') {
      const routes = { '/': { file: join(assets, 'index.html') } };
      for (const f of readdirSync(assets)) routes[`/graphiql/${f}`] = { file: join(assets, f) };
      pageServer = await startStaticServer({
        routes,
        proxy: { '/graphql': server.url },
        headers: { 'content-security-policy': CSP },
      });
      origin = pageServer.url;
    }
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    blocked = await loopbackOnly(context);
    page = await context.newPage();
    page.on('request', (r) => requested.push(r.url()));
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    // CSP violations are events in the page: collect them.
    await page.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
      });
    });
  });

  after(async () => {
    await browser?.close();
    await pageServer?.stop();
    await server?.stop();
  });

  /** The text of the CodeMirror editor inside `selector`. */
  const editorValue = (selector) =>
    page.evaluate((sel) => document.querySelector(sel)?.querySelector('.CodeMirror')?.CodeMirror.getValue(), selector);

  /** Run one operation of the query editor through the execute button's operation menu. */
  async function runOperation(name) {
    const previous = await editorValue('.graphiql-response');
    await page.locator('.graphiql-execute-button').click();
    await page.getByRole('menuitem', { name }).click();
    // Wait for a new, complete JSON answer in the response pane.
    const handle = await page.waitForFunction(
      (prev) => {
        const value = document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror.getValue();
        if (!value || value === prev) return null;
        try {
          return JSON.parse(value);
        } catch {
          return null;
        }
      },
      previous,
      { timeout: 20000 },
    );
    return handle.jsonValue();
  }

  it('renders from authql with only loopback requests and no CSP violation', async () => {
    const response = await page.goto(`${origin}/`, { waitUntil: 'load', timeout: 30000 });
    assert.equal(response.status(), 200);
    await page.waitForSelector('.graphiql-container .graphiql-query-editor .CodeMirror', { timeout: 30000 });
    // The schema was fetched (introspection) from the same origin: the Docs button works.
    await page.waitForFunction(() => !document.querySelector('.graphiql-spinner'), null, { timeout: 20000 });

    const query = await editorValue('.graphiql-query-editor');
    assert.match(query, /mutation Register\b/, 'the default query shows how to register');
    assert.match(query, /Authorization.*Bearer/, 'and how to send the token');

    const ownFiles = requested.filter((u) => new URL(u).origin === origin).map((u) => new URL(u).pathname);
    for (const f of ['/graphiql/graphiql.min.js', '/graphiql/graphiql.min.css', '/graphiql/react.production.min.js',
      '/graphiql/react-dom.production.min.js']) {
      assert.ok(ownFiles.includes(f), `${f} loaded from ${origin}`);
    }
    assert.deepEqual(requested.filter((u) => !u.startsWith(`${origin}/`) && !u.startsWith('data:')), []);
  });

  it('has a visible, editable headers editor', async () => {
    const headers = page.locator('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror');
    await headers.waitFor({ state: 'visible', timeout: 10000 });
    assert.equal(await page.locator('.graphiql-editor-tool').getAttribute('aria-label'), 'Headers');
    assert.equal(await headers.evaluate((el) => el.CodeMirror.getOption('readOnly')), false);
  });

  it('runs the default Register, then Me with the token pasted into the headers editor', async () => {
    const registered = await runOperation('Register');
    assert.equal(registered.errors, undefined, JSON.stringify(registered.errors));
    const { accessToken, user } = registered.data.register;
    assert.equal(user.email, 'ada@example.com');

    // Paste {"Authorization": "Bearer ..."} into the headers editor.
    const headers = page.locator('.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror');
    await headers.click();
    await page.keyboard.press('Control+A');
    await page.keyboard.insertText(JSON.stringify({ Authorization: `Bearer ${accessToken}` }));
    assert.deepEqual(JSON.parse(await headers.evaluate((el) => el.CodeMirror.getValue())), {
      Authorization: `Bearer ${accessToken}`,
    });

    const me = await runOperation('Me');
    assert.equal(me.errors, undefined, JSON.stringify(me.errors));
    assert.equal(me.data.me.id, user.id);
    assert.equal(me.data.me.email, 'ada@example.com');
    assert.deepEqual(me.data.mySessions.map((s) => s.current), [true]);

    mkdirSync(outputDir, { recursive: true });
    await page.screenshot({ path: join(outputDir, 'graphiql.png') });
  });

  it('made no request beyond loopback, raised no page error and no CSP violation', async () => {
    assert.deepEqual(blocked, [], 'requests to other hosts');
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
  });
});
