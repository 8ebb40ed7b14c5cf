// "Sign in with OpenID Connect" in headless Chromium, driven through the page like a user:
// browser/oidc-app.mjs (Apollo Client 4 over @authql/client's link, token mode) served from
// http://127.0.0.1:<port>/, whose server forwards /graphql to authql; a real OpenID Provider
// (lib/openid-provider.mjs: node-oidc-provider, started by lib/openid-provider-process.mjs)
// with its own sign-in page. authql runs with OIDC_PROVIDERS=testop, the provider's issuer,
// and OIDC_REDIRECT_URIS = the page's URL; the provider learns authql's callback
// (http://127.0.0.1:<authql port>/auth/oidc/callback) once authql runs (POST /test/clients).
//
// - A verified account unknown to authql: the page lists "Sign in with Test OP", a click goes to
//   the provider's sign-in page, one submit brings the browser back through authql's callback
//   to the page with code and state; the page checks the state, calls completeOidcLogin, shows
//   the session and clears the address bar. The session's amr (the answer, the access token,
//   mySessions from Node) holds `fed`, and `me { identities }` the provider; unlinking the only
//   way in is LAST_LOGIN_METHOD. Revoking the session from Node (revokeTokens) signs the page
//   out at its next `me` (UNAUTHENTICATED). Signing in again (the provider remembers the user)
//   is the same account with a new session; "Sign out" ends it.
// - The provider did not verify the address (email_verified false), and authql has no such
//   account: EMAIL_NOT_VERIFIED (reason PROVIDER) on the page, no session, no account.
// - The provider refuses (its redirect to authql's callback with error=access_denied): the
//   page shows OIDC_ERROR access_denied and never calls completeOidcLogin; the state is spent.
// - Login CSRF: an attacker's own sign-in, begun from Node and finished in the attacker's
//   browser, lands on the page with a code and a state the page did not keep; pasted into a
//   victim's tab with a sign-in of its own pending, it is STATE_MISMATCH too, and neither page
//   calls completeOidcLogin: the code still works from Node afterwards, once, and the attacker's
//   account then has that one session only.
// - From Node: oidcProviders needs no token; beginOidcLogin refuses a redirectUri not in
//   OIDC_REDIRECT_URIS and an unknown provider (BAD_USER_INPUT with `field`).
// Asserts on codes and state (the page's `data-*` attributes), never on messages. No request
// may leave loopback and no page may have an uncaught error.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { bundleOidcApp, OIDC_PAGE } from '../lib/bundle.mjs';
import { startOpenIdProvider } from '../lib/openid-provider-process.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const PROVIDER = 'testop';
const CLIENT_SECRET = randomBytes(24).toString('base64url');
const PENDING_KEY = 'authql:oidc:pending'; // where the app keeps the sign-in it began
const codeOf = (answer) => answer.errors?.[0]?.extensions?.code;

/** A GraphQL POST from Node. */
async function gql(url, query, variables = {}, token = null) {
  const response = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query, variables }),
  });
  return response.json();
}

const BEGIN = 'mutation ($input: BeginOidcLoginInput!) { beginOidcLogin(input: $input) { authorizationUrl state } }';
const COMPLETE = `mutation ($code: String!) {
  completeOidcLogin(code: $code) { accessToken user { id email } session { id authenticationMethods } }
}`;
const ME = '{ me { id email emailVerified identities { provider email linkedAt } } }';
const MY_SESSIONS = '{ mySessions { id current authenticatedAt authenticationMethods } }';

/** The claims of a JWT (unchecked: authql checked them). */
const claims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));

/** A provider account of its own for a test. */
function newAccount(who, emailVerified = true) {
  const id = `${who}-${randomUUID()}`;
  return { sub: id, email: `${id}@example.com`, email_verified: emailVerified, name: who };
}

describe('OpenID Connect sign-in in Chromium', { skip: chromiumMissing }, () => {
  let site; // the page's server
  let op; // the OpenID Provider
  let server; // authql
  let browser;
  let appUrl; // the page's URL: the redirectUri, exactly as OIDC_REDIRECT_URIS lists it
  const contexts = [];
  let opened = null; // the last app opened: its console, for a failure's diagnostics

  /** `fn` as a test that, when it fails, prints the page's console and the servers' last log lines. */
  const withDiagnostics = (fn) => async (t) => {
    try {
      await fn(t);
    } catch (error) {
      for (const line of opened?.console ?? []) t.diagnostic(`page console: ${line}`);
      for (const line of opened?.navigations ?? []) t.diagnostic(`navigation: ${line}`);
      for (const line of server?.logs().trimEnd().split('\n').slice(-40) ?? []) t.diagnostic(`authql: ${line}`);
      for (const line of op?.logs().trimEnd().split('\n').slice(-20) ?? []) t.diagnostic(`provider: ${line}`);
      throw error;
    }
  };

  before(async () => {
    // Both read at each request: the page once bundled, /graphql once authql runs.
    const routes = {};
    const proxy = {};
    const [bundle, page, provider, chromium] = await Promise.all([
      bundleOidcApp(),
      startStaticServer({ routes, proxy }),
      startOpenIdProvider(),
      launchChromium(),
    ]);
    site = page;
    op = provider;
    browser = chromium;
    appUrl = `${site.url}/`;
    routes['/'] = { body: OIDC_PAGE, type: 'text/html; charset=utf-8' };
    routes['/app.js'] = { body: bundle, type: 'text/javascript' };
    // authql after the provider: it reads the provider's discovery at start.
    server = await startAuthql({
      env: {
        OIDC_PROVIDERS: PROVIDER,
        OIDC_TESTOP_ISSUER: op.issuer,
        OIDC_TESTOP_CLIENT_ID: 'authql',
        OIDC_TESTOP_CLIENT_SECRET: CLIENT_SECRET,
        OIDC_TESTOP_DISPLAY_NAME: 'Test OP',
        OIDC_REDIRECT_URIS: appUrl,
      },
    });
    proxy['/graphql'] = server.url;
    await op.addClient({
      client_id: 'authql',
      client_secret: CLIENT_SECRET,
      redirect_uris: [`${server.url}/auth/oidc/callback`],
    });
  });

  after(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await Promise.all([site?.stop(), server?.stop(), op?.stop()]);
  });

  /**
   * The app in a fresh browser context (`goto`: false leaves the page blank). Records the
   * operations the page sends to /graphql and the documents the tab navigates to.
   */
  async function openApp({ goto = true } = {}) {
    const context = await browser.newContext();
    contexts.push(context);
    const blocked = await loopbackOnly(context);
    const page = await context.newPage();
    const pageErrors = [];
    const consoleLines = [];
    const operations = []; // operationName of every POST to the page's /graphql
    const navigations = []; // every document request of the tab, redirects included
    page.on('pageerror', (error) => pageErrors.push(error.message));
    page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
    page.on('request', (request) => {
      if (request.isNavigationRequest() && request.frame() === page.mainFrame()) navigations.push(request.url());
      if (request.method() === 'POST' && request.url() === `${site.url}/graphql`) {
        operations.push(request.postDataJSON()?.operationName ?? null);
      }
    });

    const ui = {
      page,
      operations,
      navigations,
      console: consoleLines,
      /** What the page shows. */
      shown: () =>
        page.evaluate(() => {
          const data = document.body.dataset;
          return {
            state: data.state ?? null,
            error: data.error ?? null,
            reason: data.errorReason ?? null,
            email: data.userEmail ?? null,
            userId: data.userId ?? null,
            sessionId: data.sessionId ?? null,
            amr: data.amr ? data.amr.split(' ') : null,
            identities: [...document.querySelectorAll('#identities li')].map((li) => li.dataset.provider),
            providers: [...document.querySelectorAll('#providers button')].map((b) => ({ name: b.dataset.provider, text: b.textContent })),
            url: location.href,
          };
        }),
      /** Marks the current document, so that `loaded()` waits for the next one. */
      markDocument: () => page.evaluate(() => { window.__previousDocument = true; }),
      /** The app page (a new document since markDocument) worked off its address: what it shows. */
      async loaded() {
        try {
          await page.waitForFunction(
            (url) => location.href.startsWith(url) && !window.__previousDocument && document.body?.dataset.ready === 'true' && !document.body.dataset.busy,
            appUrl,
            { timeout: 30000 },
          );
        } catch (error) {
          throw new Error(`the app page did not load: ${page.url()}\n${consoleLines.join('\n')}`, { cause: error });
        }
        return ui.shown();
      },
      async open(url = appUrl) {
        await page.goto(url);
        return ui.loaded();
      },
      /** Runs `action` (a click) and waits until the app worked the click off: what it shows then. */
      async act(action) {
        const done = await page.evaluate(() => window.oidcApp.done);
        await action();
        try {
          await page.waitForFunction((n) => window.oidcApp.done > n && window.oidcApp.busy === 0, done, { timeout: 30000 });
        } catch (error) {
          throw new Error(`the page did not finish: ${JSON.stringify(await ui.shown())}\n${consoleLines.join('\n')}`, { cause: error });
        }
        return ui.shown();
      },
      /** The access token the link holds. */
      accessToken: () => page.evaluate(() => window.oidcApp.link.tokens?.accessToken ?? null),
      /** The sign-in the tab keeps in sessionStorage (on the app's origin). */
      pending: () => page.evaluate((key) => sessionStorage.getItem(key), PENDING_KEY),
      /** Nothing left loopback, no uncaught error. */
      assertClean() {
        assert.deepEqual(blocked, [], 'nothing from another host');
        assert.deepEqual(pageErrors, [], 'no uncaught error in the page');
      },
    };
    opened = ui;
    if (goto) await ui.open();
    return ui;
  }

  /** Is `url` the app page with the callback's parameters? */
  const isLanding = (url) => url.startsWith(appUrl) && new URL(url).search !== '';

  /**
   * Clicks "Sign in with Test OP" and, on the provider's sign-in page (unless the provider
   * remembers the user and skips it), signs in as `login`. Resolves what the page shows once it
   * worked off the way back, the address it landed on, and whether the sign-in page was shown.
   */
  async function signInWithProvider(ui, login) {
    const { page } = ui;
    await ui.markDocument();
    const landed = page.waitForRequest((request) => request.isNavigationRequest() && isLanding(request.url()), { timeout: 30000 });
    landed.catch(() => {}); // awaited below
    const atProvider = page
      .waitForURL((url) => url.href.startsWith(`${op.issuer}/interaction/`), { timeout: 30000 })
      .then(() => true, () => false);
    await page.click(`#providers button[data-provider="${PROVIDER}"]`);
    const first = await Promise.race([landed.then(() => 'back', () => 'back'), atProvider.then((at) => (at ? 'provider' : 'back'))]);
    let loginPage = false;
    if (first === 'provider') {
      loginPage = true;
      await page.fill('input[name="login"]', login);
      await page.click('button[type="submit"]');
    }
    const landing = (await landed).url();
    return { shown: await ui.loaded(), landing, loginPage };
  }

  /** The way a sign-in went: app → provider → authql's callback → app with code and state. */
  function assertWentThroughCallback(ui, landing) {
    const callback = ui.navigations.findIndex((url) => url.startsWith(`${server.url}/auth/oidc/callback?`));
    assert.ok(callback >= 0, `through authql's callback: ${ui.navigations.join('\n')}`);
    assert.ok(ui.navigations.slice(0, callback).some((url) => url.startsWith(`${op.issuer}/`)), 'through the provider first');
    assert.ok(ui.navigations.slice(callback + 1).includes(landing), 'then to the app page');
    const params = new URL(landing).searchParams;
    assert.equal(new URL(landing).origin + new URL(landing).pathname, appUrl, 'to the redirectUri');
    return params;
  }

  it('signs a verified account in with the provider: fed in amr, the identity listed; a revoked session signs the page out', withDiagnostics(async (t) => {
    const alice = newAccount('alice');
    await op.addAccount(alice);
    const ui = await openApp();
    const { page } = ui;

    let shown = await ui.shown();
    assert.equal(shown.state, 'signed-out', JSON.stringify(shown));
    assert.equal(shown.error, null, JSON.stringify(shown));
    assert.deepEqual(shown.providers, [{ name: PROVIDER, text: 'Sign in with Test OP' }]);

    // The provider's page, one submit, and back through authql's callback.
    let signIn = await signInWithProvider(ui, alice.email);
    assert.equal(signIn.loginPage, true, "the provider's sign-in page");
    const params = assertWentThroughCallback(ui, signIn.landing);
    assert.ok(params.get('code'), signIn.landing);
    assert.ok(params.get('state'), signIn.landing);
    assert.equal(params.get('error'), null);
    shown = signIn.shown;
    assert.equal(shown.error, null, `no error: ${JSON.stringify(shown)}\n${ui.console.join('\n')}`);
    assert.equal(shown.state, 'signed-in', JSON.stringify(shown));
    assert.equal(shown.email, alice.email);
    assert.ok(shown.sessionId, JSON.stringify(shown));
    assert.ok(shown.amr.includes('fed'), JSON.stringify(shown.amr));
    assert.deepEqual(shown.identities, [PROVIDER]);
    assert.equal(shown.url, appUrl, 'code and state are gone from the address bar');
    assert.equal(await ui.pending(), null, 'the kept state is spent');
    assert.deepEqual(ui.operations.filter((name) => name === 'CompleteOidcLogin'), ['CompleteOidcLogin']);

    // The access token, mySessions and me say the same, from Node.
    let token = await ui.accessToken();
    assert.equal(typeof token, 'string', 'the link took the pair from completeOidcLogin (rebuild @authql/client if not)');
    const tokenClaims = claims(token);
    assert.ok(tokenClaims.amr.includes('fed'), JSON.stringify(tokenClaims.amr));
    assert.equal(tokenClaims.email, alice.email);
    assert.ok(Math.abs(tokenClaims.auth_time - Date.now() / 1000) < 60, `auth_time ${tokenClaims.auth_time}`);
    const sessions = await gql(server.graphql, MY_SESSIONS, {}, token);
    assert.ok(sessions.data?.mySessions, JSON.stringify(sessions));
    assert.deepEqual(sessions.data.mySessions.map((s) => [s.id, s.current]), [[shown.sessionId, true]], JSON.stringify(sessions));
    assert.ok(sessions.data.mySessions[0].authenticationMethods.includes('fed'), JSON.stringify(sessions));
    const me = await gql(server.graphql, ME, {}, token);
    assert.ok(me.data?.me, JSON.stringify(me));
    assert.equal(me.data.me.id, shown.userId);
    assert.equal(me.data.me.email, alice.email);
    assert.equal(me.data.me.emailVerified, true, 'the provider verified the address');
    assert.equal(me.data.me.identities.length, 1, JSON.stringify(me));
    assert.equal(me.data.me.identities[0].provider, PROVIDER);
    assert.equal(me.data.me.identities[0].email, alice.email);
    assert.ok(Math.abs(Date.parse(me.data.me.identities[0].linkedAt) - Date.now()) < 60000, JSON.stringify(me));

    // The identity is the account's only way in: it stays.
    const unlink = await gql(server.graphql, 'mutation ($p: String!) { unlinkIdentity(provider: $p) }', { p: PROVIDER }, token);
    assert.equal(codeOf(unlink), 'LAST_LOGIN_METHOD', JSON.stringify(unlink));
    assert.equal((await gql(server.graphql, ME, {}, token)).data?.me?.identities?.length, 1);

    // Revoked from Node like any other session: the page's next `me` is refused, and it signs out.
    const revoked = await gql(
      server.graphql,
      'mutation ($input: RevokeTokensInput!) { revokeTokens(input: $input) { revokedSessionIds revokedCount } }',
      { input: { sessionIds: [shown.sessionId] } },
      token,
    );
    assert.deepEqual(revoked.data?.revokeTokens, { revokedSessionIds: [shown.sessionId], revokedCount: 1 }, JSON.stringify(revoked));
    shown = await ui.act(() => page.click('#reload-me'));
    assert.equal(shown.error, 'UNAUTHENTICATED', JSON.stringify(shown));
    assert.equal(shown.state, 'signed-out', JSON.stringify(shown));
    assert.equal(await ui.accessToken(), null);
    assert.equal(codeOf(await gql(server.graphql, ME, {}, token)), 'UNAUTHENTICATED');

    // Again: the same account (the identity signs in to it), a new session. The provider may
    // skip its page now (it remembers the user); either way the page checks the state.
    const before = ui.navigations.length;
    signIn = await signInWithProvider(ui, alice.email);
    t.diagnostic(`second sign-in: the provider's page was ${signIn.loginPage ? 'shown' : 'skipped'}`);
    assertWentThroughCallback({ navigations: ui.navigations.slice(before) }, signIn.landing);
    shown = signIn.shown;
    assert.equal(shown.error, null, `${JSON.stringify(shown)}\n${ui.console.join('\n')}`);
    assert.equal(shown.state, 'signed-in', JSON.stringify(shown));
    assert.equal(shown.userId, me.data.me.id, 'the same account');
    assert.notEqual(shown.sessionId, sessions.data.mySessions[0].id, 'a new session');
    assert.ok(shown.amr.includes('fed'), JSON.stringify(shown.amr));
    assert.equal(shown.url, appUrl);
    token = await ui.accessToken();
    const now = await gql(server.graphql, MY_SESSIONS, {}, token);
    assert.deepEqual(now.data?.mySessions?.map((s) => s.id), [shown.sessionId], JSON.stringify(now));

    // "Sign out" ends it at authql.
    shown = await ui.act(() => page.click('#sign-out'));
    assert.equal(shown.state, 'signed-out', JSON.stringify(shown));
    assert.equal(shown.error, null, JSON.stringify(shown));
    assert.equal(await ui.accessToken(), null);
    assert.equal(codeOf(await gql(server.graphql, ME, {}, token)), 'UNAUTHENTICATED');

    ui.assertClean();
  }));

  it('refuses an address the provider did not verify for a new account: EMAIL_NOT_VERIFIED (PROVIDER)', withDiagnostics(async () => {
    const bob = newAccount('unverified', false);
    await op.addAccount(bob);
    const ui = await openApp();

    const { shown, landing, loginPage } = await signInWithProvider(ui, bob.sub);
    assert.equal(loginPage, true);
    assertWentThroughCallback(ui, landing);
    assert.ok(new URL(landing).searchParams.get('code'), 'the callback gave the page a code');
    assert.equal(shown.error, 'EMAIL_NOT_VERIFIED', JSON.stringify(shown));
    assert.equal(shown.reason, 'PROVIDER', JSON.stringify(shown));
    assert.equal(shown.state, 'signed-out', JSON.stringify(shown));
    assert.equal(shown.url, appUrl);
    assert.equal(await ui.accessToken(), null);
    assert.deepEqual(ui.operations.filter((name) => name === 'CompleteOidcLogin'), ['CompleteOidcLogin']);

    // No account was made for the address: it can still be registered.
    const registered = await gql(
      server.graphql,
      'mutation ($input: RegisterInput!) { register(input: $input) { user { email emailVerified identities { provider } } } }',
      { input: { email: bob.email, password: 'correct horse battery staple' } },
    );
    assert.equal(registered.data?.register?.user?.email, bob.email, JSON.stringify(registered));
    assert.deepEqual(registered.data.register.user.identities, []);

    ui.assertClean();
  }));

  it("shows the provider's refusal (error=access_denied through the callback) and spends the state", withDiagnostics(async () => {
    const ui = await openApp();
    const { page } = ui;

    // Begin a sign-in, and stop on the provider's page: the provider says no instead.
    const authorization = page.waitForRequest((request) => request.url().startsWith(`${op.issuer}/auth?`), { timeout: 30000 });
    await ui.markDocument();
    await page.click(`#providers button[data-provider="${PROVIDER}"]`);
    const state = new URL((await authorization).url()).searchParams.get('state');
    await page.waitForURL((url) => url.href.startsWith(`${op.issuer}/interaction/`), { timeout: 30000 });

    // The provider's redirect to authql's callback (RFC 6749 § 4.1.2.1).
    const refusal = `${server.url}/auth/oidc/callback?error=access_denied&state=${encodeURIComponent(state)}`;
    const landed = page.waitForRequest((request) => request.isNavigationRequest() && isLanding(request.url()), { timeout: 30000 });
    await page.goto(refusal);
    const landing = new URL((await landed).url());
    assert.equal(landing.searchParams.get('error'), 'access_denied');
    assert.equal(landing.searchParams.get('state'), state);
    assert.equal(landing.searchParams.get('code'), null);
    const shown = await ui.loaded();
    assert.equal(shown.error, 'OIDC_ERROR', JSON.stringify(shown));
    assert.equal(shown.reason, 'access_denied', JSON.stringify(shown));
    assert.equal(shown.state, 'signed-out');
    assert.equal(shown.url, appUrl);
    assert.equal(await ui.pending(), null, 'the kept state is spent');
    assert.ok(!ui.operations.includes('CompleteOidcLogin'), JSON.stringify(ui.operations));

    // The state was authql's once: the same callback again is authql's own error page, no redirect.
    const again = await fetch(refusal, { redirect: 'manual' });
    assert.equal(again.status, 400);
    assert.equal(again.headers.get('location'), null);

    ui.assertClean();
  }));

  it('completes no sign-in it did not begin (login CSRF): STATE_MISMATCH, and the code stays unused', withDiagnostics(async () => {
    const mallory = newAccount('mallory');
    await op.addAccount(mallory);

    // The attacker's own sign-in, begun from Node for the app's page, finished in a browser.
    const begun = await gql(server.graphql, BEGIN, { input: { provider: PROVIDER, redirectUri: appUrl } });
    assert.ok(begun.data?.beginOidcLogin, JSON.stringify(begun));
    const attacker = await openApp({ goto: false });
    const attackerLanded = attacker.page.waitForRequest((request) => request.isNavigationRequest() && isLanding(request.url()), { timeout: 30000 });
    await attacker.page.goto(begun.data.beginOidcLogin.authorizationUrl);
    await attacker.page.waitForURL((url) => url.href.startsWith(`${op.issuer}/interaction/`), { timeout: 30000 });
    await attacker.page.fill('input[name="login"]', mallory.email);
    await attacker.page.click('button[type="submit"]');
    const planted = (await attackerLanded).url();
    const plantedParams = new URL(planted).searchParams;
    assert.equal(plantedParams.get('state'), begun.data.beginOidcLogin.state);
    const code = plantedParams.get('code');
    assert.ok(code, planted);
    // The attacker's tab began nothing either: it does not complete it.
    let shown = await attacker.loaded();
    assert.equal(shown.error, 'STATE_MISMATCH', JSON.stringify(shown));
    assert.equal(shown.state, 'signed-out');

    // A victim's tab, with a sign-in of its own pending, is sent to the attacker's landing.
    const victim = await openApp();
    const authorization = victim.page.waitForRequest((request) => request.url().startsWith(`${op.issuer}/auth?`), { timeout: 30000 });
    await victim.page.click(`#providers button[data-provider="${PROVIDER}"]`);
    const victimState = new URL((await authorization).url()).searchParams.get('state');
    await victim.page.waitForURL((url) => url.href.startsWith(`${op.issuer}/interaction/`), { timeout: 30000 });
    assert.notEqual(victimState, plantedParams.get('state'));
    shown = await victim.open(planted);
    assert.equal(shown.error, 'STATE_MISMATCH', JSON.stringify(shown));
    assert.equal(shown.state, 'signed-out', JSON.stringify(shown));
    assert.equal(shown.url, appUrl, 'the planted code is gone from the address bar');
    assert.equal(await victim.accessToken(), null);
    assert.equal(JSON.parse(await victim.pending())?.state, victimState, "the victim's own sign-in stays pending");

    for (const ui of [attacker, victim]) {
      assert.ok(!ui.operations.includes('CompleteOidcLogin'), JSON.stringify(ui.operations));
      ui.assertClean();
    }

    // Neither page spent the code: it signs the attacker in from Node, once; one session.
    const completed = await gql(server.graphql, COMPLETE, { code });
    assert.ok(completed.data?.completeOidcLogin, JSON.stringify(completed));
    assert.equal(completed.data.completeOidcLogin.user.email, mallory.email);
    assert.ok(completed.data.completeOidcLogin.session.authenticationMethods.includes('fed'));
    assert.equal(codeOf(await gql(server.graphql, COMPLETE, { code })), 'INVALID_TOKEN', 'a code is used once');
    const sessions = await gql(server.graphql, MY_SESSIONS, {}, completed.data.completeOidcLogin.accessToken);
    assert.deepEqual(sessions.data?.mySessions?.map((s) => s.id), [completed.data.completeOidcLogin.session.id], JSON.stringify(sessions));
  }));

  it('lists the providers without a token and refuses a redirectUri or provider it does not know', withDiagnostics(async () => {
    const providers = await gql(server.graphql, '{ oidcProviders { name displayName } }');
    assert.deepEqual(providers, { data: { oidcProviders: [{ name: PROVIDER, displayName: 'Test OP' }] } });

    for (const [input, field] of [
      [{ provider: PROVIDER, redirectUri: `${appUrl}elsewhere` }, 'redirectUri'],
      [{ provider: PROVIDER, redirectUri: `${appUrl}?next=1` }, 'redirectUri'],
      [{ provider: 'nope', redirectUri: appUrl }, 'provider'],
    ]) {
      const answer = await gql(server.graphql, BEGIN, { input });
      assert.equal(codeOf(answer), 'BAD_USER_INPUT', `${JSON.stringify(input)}: ${JSON.stringify(answer)}`);
      assert.equal(answer.errors[0].extensions.field, field, JSON.stringify(answer));
    }
  }));
});

/** The app's code between `// README: begin` and `// README: end`. */
async function readmeRegion() {
  const source = await readFile(new URL('../browser/oidc-app.mjs', import.meta.url), 'utf8');
  const begin = '// README: begin\n';
  const start = source.indexOf(begin);
  const end = source.indexOf('// README: end');
  assert.ok(start >= 0 && end > start, 'the app marks its README code');
  return source.slice(start + begin.length, end);
}

it("the README's oidc.js block is the tested app's code", async () => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  const heading = /^## Sign in with OpenID Connect[ \t]*$/m.exec(readme);
  assert.ok(heading, 'the README has the section');
  let section = readme.slice(heading.index + heading[0].length);
  const next = /\n## /.exec(section);
  if (next) section = section.slice(0, next.index);
  const block = /```js[^\n]*\bfile=oidc\.js[^\n]*\n([\s\S]*?)```/.exec(section);
  assert.ok(block, 'the section has a ```js file=oidc.js block');
  assert.equal(block[1], await readmeRegion());
});
