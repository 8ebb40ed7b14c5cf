// The password-reset flow a user goes through (issue 18), in headless Chromium: the link from
// the mail a real SMTP server (aiosmtpd) received, opened in the browser; first on authql's own
// page (/reset-password), then on the Apollo Client app's page named by PASSWORD_RESET_URL.
// Afterwards the old password and the old sessions are refused and the new password works.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { APP_PAGE, bundleBrowserApp } from '../lib/bundle.mjs';
import { linkIn, startSmtpServer } from '../lib/smtp-server.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const PASSWORD = 'correct horse battery staple';

async function gql(server, query, variables, token) {
  const res = await fetch(server.graphql, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  return res.json();
}

const register = (server, email) =>
  gql(server, 'mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken } }', {
    i: { email, password: PASSWORD },
  });
const login = (server, email, password) =>
  gql(server, 'mutation($i: LoginInput!) { login(input: $i) { accessToken } }', { i: { emailOrUsername: email, password } });
const requestReset = (server, email) =>
  gql(server, 'mutation($e: String!) { requestPasswordReset(email: $e) }', { e: email });
const codeOf = (answer) => answer.errors?.[0]?.extensions?.code;

describe('password reset from the mailed link, in Chromium', { skip: chromiumMissing }, () => {
  let smtp;
  let browser;

  before(async () => {
    smtp = await startSmtpServer();
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await smtp?.stop();
  });

  it("through authql's own page: the form sets the password, the token leaves the address bar", async () => {
    const server = await startAuthql({ env: { SMTP_URL: smtp.url, EMAIL_VERIFICATION: 'off' } });
    try {
      const email = `own-page-${Date.now()}@example.com`;
      const registered = await register(server, email);
      assert.equal(registered.errors, undefined, JSON.stringify(registered));
      assert.equal((await requestReset(server, email)).data.requestPasswordReset, true);
      const [mail] = await smtp.waitFor(email);
      const link = linkIn(mail.text, `${server.url}/reset-password#token=`);

      const context = await browser.newContext();
      const blocked = await loopbackOnly(context);
      const page = await context.newPage();
      const violations = [];
      page.on('console', (message) => {
        if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
      });
      await page.goto(link);
      // The script took the token out of the address bar (and so out of the history).
      await page.waitForFunction(() => !window.location.hash.includes('token='));
      assert.equal(page.url(), `${server.url}/reset-password`);
      await page.fill('#new-password', 'a new passphrase from the browser');
      await page.fill('#confirm-password', 'a new passphrase from the browser');
      await page.click('button[type=submit]');
      await page.waitForSelector('#status.done', { timeout: 10000 });
      assert.deepEqual(violations, [], 'the page works under its CSP');
      assert.deepEqual(blocked, [], 'nothing from another host');

      // The same link again: the page says it was used.
      const again = await context.newPage();
      await again.goto(link);
      await again.fill('#new-password', 'yet another passphrase here');
      await again.fill('#confirm-password', 'yet another passphrase here');
      await again.click('button[type=submit]');
      await again.waitForSelector('#status.error', { timeout: 10000 });
      assert.match(await again.textContent('#status'), /already used/);
      await context.close();

      assert.equal(codeOf(await login(server, email, PASSWORD)), 'INVALID_CREDENTIALS');
      const me = await gql(server, '{ me { id } }', {}, registered.data.register.accessToken);
      assert.equal(codeOf(me), 'UNAUTHENTICATED', 'the old session ended');
      const fresh = await login(server, email, 'a new passphrase from the browser');
      assert.equal(fresh.errors, undefined, JSON.stringify(fresh));
    } finally {
      await server.stop();
    }
  });

  it("through the Apollo app's own page (PASSWORD_RESET_URL), from another origin", async () => {
    const bundle = await bundleBrowserApp();
    const routes = {
      '/': { body: APP_PAGE, type: 'text/html; charset=utf-8' },
      '/reset': { body: APP_PAGE, type: 'text/html; charset=utf-8' },
      '/app.js': { body: bundle, type: 'text/javascript' },
    };
    const app = await startStaticServer({ routes });
    const server = await startAuthql({
      env: {
        SMTP_URL: smtp.url,
        EMAIL_VERIFICATION: 'off',
        CORS_ALLOWED_ORIGINS: app.url,
        PASSWORD_RESET_URL: `${app.url}/reset?token={token}`,
      },
    });
    try {
      const email = `app-page-${Date.now()}@example.com`;
      const registered = await register(server, email);
      assert.equal(registered.errors, undefined, JSON.stringify(registered));
      assert.equal((await requestReset(server, email)).data.requestPasswordReset, true);
      const [mail] = await smtp.waitFor(email);
      const link = linkIn(mail.text, `${app.url}/reset?token=`);

      const context = await browser.newContext();
      const blocked = await loopbackOnly(context);
      const page = await context.newPage();
      await page.goto(link);
      await page.waitForFunction(() => document.title === 'authql app ready', null, { timeout: 10000 });
      // What the app's reset page does: read `token` from its address, call resetPassword
      // through Apollo Client.
      const answer = await page.evaluate(async (api) => {
        window.authqlApp.create(api);
        const token = new URLSearchParams(window.location.search).get('token');
        return window.authqlApp.call('resetPassword', { token, newPassword: 'set on the app page' });
      }, server.graphql);
      assert.ok(answer.ok, JSON.stringify(answer));
      assert.equal(answer.value, true);
      assert.deepEqual(blocked, []);
      await context.close();

      assert.equal(codeOf(await login(server, email, PASSWORD)), 'INVALID_CREDENTIALS');
      assert.equal((await login(server, email, 'set on the app page')).errors, undefined);
    } finally {
      await server.stop();
      await app.stop();
    }
  });
});
