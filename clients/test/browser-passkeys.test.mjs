// Second factors and passkeys (issue 20) in headless Chromium, driven through the page like a
// user: browser/passkey-app.mjs (Apollo Client 4 over @authql/client's link, token mode) served
// from http://localhost:<port> (a secure context, as WebAuthn needs), whose server forwards
// /graphql to authql (on 127.0.0.1, with WEBAUTHN_RP_ID=localhost and WEBAUTHN_ORIGINS and
// CORS_ALLOWED_ORIGINS naming the page's origin). The passkeys live in a CDP virtual
// authenticator (WebAuthn.addVirtualAuthenticator: ctap2, internal, resident keys, user
// verification, presence simulated, not backup eligible).
//
// - A passkey registered from the page (a password session, fresh enough for the step-up),
//   held by the authenticator as a resident credential for rpId `localhost`; registering it
//   again is refused by the browser (authql lists it in excludeCredentials); sign out; a
//   usernameless sign-in with it (beginPasskeyLogin(input: {})), whose session says
//   amr hwk + user + mfa (the page's answer, the access token's `amr` and mySessions from Node);
//   then a password login of that account answers MFA_REQUIRED with PASSKEY only, and the
//   passkey completes it (pwd + hwk + user + mfa).
// - A TOTP account (enrolled and confirmed from Node with codes computed here: RFC 6238,
//   HMAC-SHA1 with node:crypto): the password login in the page brings up the second factor
//   prompt listing TOTP and RECOVERY_CODE; a wrong code is INVALID_CREDENTIALS and keeps the
//   prompt; the current code signs in (amr pwd + otp + mfa); a recovery code does too, once;
//   a passkey registered then signs in alone (no prompt), and the password login then offers
//   TOTP, RECOVERY_CODE and PASSKEY.
// - Step-up: with REAUTHENTICATION_MAX_AGE=5, registering a passkey from a session signed in 6.5 s
//   before answers REAUTHENTICATION_REQUIRED; the page asks for the password, calls
//   reauthenticate and registers the passkey.
// - The README's block `passkeys.js` ("Second factors and passkeys") is the app's code between
//   its `README` marks, character for character (skipped while the README has no such section).
// Asserts on codes and state (the page's `data-*` attributes), never on messages. No request may
// leave loopback and no page may have an uncaught error.
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { bundlePasskeyApp, PASSKEY_PAGE } from '../lib/bundle.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const password = 'correct horse battery staple';
/** REAUTHENTICATION_MAX_AGE of the step-up test's authql: the ceremony after the proof fits in it. */
const STEP_UP_MAX_AGE = 5;
const newEmail = (who) => `${who}-${randomUUID()}@example.com`;
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

const REGISTER = 'mutation ($input: RegisterInput!) { register(input: $input) { accessToken session { id } } }';
const ME = '{ me { id email totpEnabled recoveryCodesLeft passkeys { id name createdAt lastUsedAt } } }';
const MY_SESSIONS = '{ mySessions { id current authenticatedAt authenticationMethods } }';

/** Registers `email` from Node: its access token. */
async function register(api, email) {
  const answer = await gql(api, REGISTER, { input: { email, password } });
  assert.ok(answer.data?.register, `register: ${JSON.stringify(answer)}`);
  return answer.data.register.accessToken;
}

/** The claims of a JWT (unchecked: authql checked them). */
const claims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));

/** The current session as `mySessions` lists it, asked with `token`. */
async function currentSession(api, token) {
  const answer = await gql(api, MY_SESSIONS, {}, token);
  assert.ok(answer.data?.mySessions, `mySessions: ${JSON.stringify(answer)}`);
  const current = answer.data.mySessions.filter((session) => session.current);
  assert.equal(current.length, 1, JSON.stringify(answer));
  return current[0];
}

// TOTP as an authenticator app computes it (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps).
const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 (no padding needed) to bytes. */
function base32Decode(text) {
  const bytes = [];
  let value = 0;
  let bits = 0;
  for (const char of text.replace(/=+$/, '').toUpperCase()) {
    const index = BASE32.indexOf(char);
    if (index < 0) throw new Error(`not base32: ${JSON.stringify(text)}`);
    value = ((value << 5) | index) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(bytes);
}

/** The 6-digit code of time step `step` for `key`. */
function hotp(key, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const number = ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(number % 1_000_000).padStart(6, '0');
}

const stepNow = () => Math.floor(Date.now() / 1000 / 30);

/**
 * An authenticator app for `secret`: `next()` is a code authql accepts now, of a later step than
 * the last one used (a step is accepted once; ±1 step is allowed, so the next step's code
 * when the current one was used); `wrong()` a code of no step near now.
 */
function totpApp(secret) {
  const key = base32Decode(secret);
  let last = -Infinity;
  return {
    key,
    next() {
      const step = Math.max(stepNow(), last + 1);
      assert.ok(step <= stepNow() + 1, 'no TOTP code left in the window: the test used one per step');
      last = step;
      return hotp(key, step);
    },
    wrong() {
      const near = new Set([-3, -2, -1, 0, 1, 2, 3].map((d) => hotp(key, stepNow() + d)));
      for (let n = 0; ; n++) {
        const code = String((123456 + n * 7919) % 1_000_000).padStart(6, '0');
        if (!near.has(code)) return code;
      }
    },
  };
}

// The passkey authenticator of the page: a platform authenticator holding discoverable
// credentials and verifying its user, always present; not backup eligible (so `hwk`).
const AUTHENTICATOR = {
  protocol: 'ctap2',
  transport: 'internal',
  hasResidentKey: true,
  hasUserVerification: true,
  isUserVerified: true,
  automaticPresenceSimulation: true,
  defaultBackupEligibility: false,
  defaultBackupState: false,
};

describe('second factors and passkeys in Chromium', { skip: chromiumMissing }, () => {
  // Two pages' servers (http://localhost:<port>), each forwarding its /graphql to its authql:
  // `main` to one with WEBAUTHN_RP_ID=localhost, `stepUp` to one with REAUTHENTICATION_MAX_AGE set.
  const sites = {};
  let browser;
  const contexts = [];
  let opened = null; // the last app opened: its console and its site, for a failure's diagnostics

  /** `fn` as a test that, when it fails, prints the page's console and authql's last log lines. */
  const withDiagnostics = (fn) => async (t) => {
    try {
      await fn(t);
    } catch (error) {
      if (opened) {
        for (const line of opened.ui.console) t.diagnostic(`page console: ${line}`);
        for (const line of opened.site.server.logs().trimEnd().split('\n').slice(-40)) t.diagnostic(`authql: ${line}`);
      }
      throw error;
    }
  };

  /** A page server for the app, then the authql behind its /graphql, for its origin. */
  async function site(bundle, env = {}) {
    const proxy = {};
    const page = await startStaticServer({
      routes: {
        '/': { body: PASSKEY_PAGE, type: 'text/html; charset=utf-8' },
        '/app.js': { body: bundle, type: 'text/javascript' },
      },
      proxy, // read at each request: filled once authql runs
      publicHost: 'localhost',
    });
    let server;
    try {
      server = await startAuthql({
        env: { WEBAUTHN_RP_ID: 'localhost', WEBAUTHN_ORIGINS: page.url, CORS_ALLOWED_ORIGINS: page.url, ...env },
      });
    } catch (error) {
      await page.stop();
      throw error;
    }
    proxy['/graphql'] = server.url;
    return {
      page,
      server,
      api: server.graphql,
      stop: () => Promise.all([page.stop(), server.stop()]),
    };
  }

  before(async () => {
    const bundle = await bundlePasskeyApp();
    [sites.main, sites.stepUp, browser] = await Promise.all([
      site(bundle),
      site(bundle, { REAUTHENTICATION_MAX_AGE: String(STEP_UP_MAX_AGE) }),
      launchChromium(),
    ]);
  });

  after(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await Promise.all(Object.values(sites).map((s) => s?.stop()));
  });

  /**
   * The app of `site` in a fresh browser context, with a virtual authenticator on the page.
   * `act(action)` runs `action` (a click) and waits until the app worked the click off,
   * resolving what the page shows then.
   */
  async function openApp(site = sites.main) {
    const pageServer = site.page;
    const context = await browser.newContext();
    contexts.push(context);
    const blocked = await loopbackOnly(context);
    const page = await context.newPage();
    const pageErrors = [];
    const consoleLines = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
    const cdp = await context.newCDPSession(page);
    await cdp.send('WebAuthn.enable');
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', { options: AUTHENTICATOR });
    await page.goto(`${pageServer.url}/`);
    assert.ok(page.url().startsWith('http://localhost:'), page.url());
    await page.waitForFunction(() => document.title === 'authql passkeys ready', null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => window.isSecureContext), true, 'http://localhost is a secure context');

    const ui = {
      page,
      /** What the page shows: its state, the error code, the user's email, the session's amr. */
      shown: () =>
        page.evaluate(() => ({
          state: document.body.dataset.state,
          error: document.getElementById('error').dataset.code ?? null,
          email: document.getElementById('signed-in').hidden ? null : document.getElementById('user-email').textContent,
          amr: window.passkeyApp.last?.session?.authenticationMethods ?? null,
          methods: [...document.querySelectorAll('#mfa-methods li')].map((li) => li.dataset.method),
          passkeys: [...document.querySelectorAll('#passkeys li')].map((li) => li.dataset.id),
        })),
      async act(action) {
        const done = await page.evaluate(() => window.passkeyApp.done);
        await action();
        try {
          await page.waitForFunction((n) => window.passkeyApp.done > n && window.passkeyApp.busy === 0, done, { timeout: 30000 });
        } catch (error) {
          throw new Error(`the page did not finish: ${JSON.stringify(await ui.shown())}\n${consoleLines.join('\n')}`, { cause: error });
        }
        return ui.shown();
      },
      signIn(email) {
        return ui.act(async () => {
          await page.fill('#login-name', email);
          await page.fill('#login-password', password);
          await page.click('#login-submit');
        });
      },
      /** The access token the link holds. */
      accessToken: () => page.evaluate(() => window.passkeyApp.link.tokens?.accessToken ?? null),
      /** The credentials the virtual authenticator holds. */
      credentials: async () => (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials,
      /** Nothing left loopback, no uncaught error. */
      assertClean() {
        assert.deepEqual(blocked, [], 'nothing from another host');
        assert.deepEqual(pageErrors, [], 'no uncaught error in the page');
      },
      console: consoleLines,
    };
    opened = { ui, site };
    return ui;
  }

  /** The page is signed in as `email`, the link holding the pair of that answer: its access token. */
  async function assertSignedIn(ui, shown, email) {
    assert.equal(shown.error, null, `no error: ${JSON.stringify(shown)}\n${ui.console.join('\n')}`);
    assert.equal(shown.state, 'signed-in', JSON.stringify(shown));
    assert.equal(shown.email, email);
    const token = await ui.accessToken();
    assert.equal(typeof token, 'string', 'the link took the pair from the answer (regenerate @authql/client if not)');
    return token;
  }

  it('registers a passkey, signs out, signs in with it usernameless, and completes a password login with it', withDiagnostics(async () => {
    const email = newEmail('passkey');
    const nodeToken = await register(sites.main.api, email);
    const ui = await openApp();
    const { page } = ui;

    // Password sign-in: an account without a second factor gets its session at once.
    let shown = await ui.signIn(email);
    let token = await assertSignedIn(ui, shown, email);
    assert.deepEqual(shown.amr, ['pwd']);
    assert.deepEqual(claims(token).amr, ['pwd']);

    // Register a passkey from the page (the fresh password login is the step-up's proof).
    await page.fill('#passkey-name', 'Virtual authenticator');
    shown = await ui.act(() => page.click('#passkey-register'));
    assert.equal(shown.error, null, `registration: ${JSON.stringify(shown)}\n${ui.console.join('\n')}`);
    assert.equal(shown.state, 'signed-in');
    assert.equal(shown.passkeys.length, 1);
    const registered = await page.evaluate(() => window.passkeyApp.registered);
    assert.equal(registered.name, 'Virtual authenticator');
    assert.equal(registered.id, shown.passkeys[0]);
    assert.equal(registered.lastUsedAt, null);

    let credentials = await ui.credentials();
    assert.equal(credentials.length, 1, 'one credential in the authenticator');
    assert.equal(credentials[0].isResidentCredential, true, 'a discoverable (resident) credential');
    assert.equal(credentials[0].rpId, 'localhost');
    assert.ok(credentials[0].userHandle, 'the credential holds the user handle');
    const countAfterRegistration = credentials[0].signCount;

    let me = await gql(sites.main.api, ME, {}, token);
    assert.deepEqual(
      me.data?.me?.passkeys?.map((p) => [p.id, p.name]),
      [[registered.id, 'Virtual authenticator']],
      JSON.stringify(me),
    );
    // Adding a passkey ends the user's other sessions: the one register made from Node.
    assert.equal(codeOf(await gql(sites.main.api, ME, {}, nodeToken)), 'UNAUTHENTICATED');

    // The same authenticator again: authql lists the credential in excludeCredentials, so the
    // browser refuses to make a second one.
    shown = await ui.act(() => page.click('#passkey-register'));
    assert.equal(shown.error, 'InvalidStateError', JSON.stringify(shown));
    assert.equal((await ui.credentials()).length, 1);
    assert.equal(shown.passkeys.length, 1);

    // Sign out: the session ends at authql.
    shown = await ui.act(() => page.click('#logout'));
    assert.equal(shown.state, 'signed-out', JSON.stringify(shown));
    assert.equal(await ui.accessToken(), null);
    assert.equal(codeOf(await gql(sites.main.api, ME, {}, token)), 'UNAUTHENTICATED');

    // Usernameless: no name typed, the authenticator offers the resident credential.
    await page.fill('#login-name', '');
    await page.fill('#login-password', '');
    shown = await ui.act(() => page.click('#passkey-login'));
    token = await assertSignedIn(ui, shown, email);
    // A user-verifying, not backup eligible authenticator: hwk + user (+ mfa), no password.
    assert.ok(shown.amr.includes('hwk') || shown.amr.includes('swk'), JSON.stringify(shown.amr));
    assert.ok(shown.amr.includes('hwk'), `not backup eligible: hwk (${JSON.stringify(shown.amr)})`);
    assert.ok(shown.amr.includes('user'), JSON.stringify(shown.amr));
    assert.ok(shown.amr.includes('mfa'), JSON.stringify(shown.amr));
    assert.ok(!shown.amr.includes('pwd'), JSON.stringify(shown.amr));
    const tokenClaims = claims(token);
    assert.deepEqual([...tokenClaims.amr].sort(), [...shown.amr].sort(), 'the access token says the same amr');
    assert.equal(typeof tokenClaims.auth_time, 'number');
    assert.ok(Math.abs(tokenClaims.auth_time - Date.now() / 1000) < 60, `auth_time ${tokenClaims.auth_time}`);
    const session = await currentSession(sites.main.api, token);
    assert.equal(session.id, await page.evaluate(() => window.passkeyApp.last.session.id));
    assert.ok(session.authenticationMethods.includes('hwk') || session.authenticationMethods.includes('swk'));
    assert.ok(session.authenticationMethods.includes('user'), JSON.stringify(session));
    assert.ok(Math.abs(Date.parse(session.authenticatedAt) / 1000 - tokenClaims.auth_time) < 2, JSON.stringify(session));

    credentials = await ui.credentials();
    assert.equal(credentials.length, 1);
    assert.ok(credentials[0].signCount > countAfterRegistration, 'the authenticator signed an assertion');
    me = await gql(sites.main.api, ME, {}, token);
    assert.equal(typeof me.data?.me?.passkeys?.[0]?.lastUsedAt, 'string', JSON.stringify(me));

    // A password login of an account with a passkey asks for it as the second step.
    shown = await ui.act(() => page.click('#logout'));
    assert.equal(shown.state, 'signed-out');
    shown = await ui.signIn(email);
    assert.equal(shown.error, null, JSON.stringify(shown));
    assert.equal(shown.state, 'mfa', JSON.stringify(shown));
    assert.deepEqual(shown.methods, ['PASSKEY']);
    assert.equal(await page.isVisible('#mfa-form'), false, 'no code to type for a passkey-only account');
    assert.equal(await ui.accessToken(), null, 'no session before the second step');
    shown = await ui.act(() => page.click('#mfa-passkey'));
    token = await assertSignedIn(ui, shown, email);
    for (const method of ['pwd', 'hwk', 'user', 'mfa']) assert.ok(shown.amr.includes(method), `${method} in ${JSON.stringify(shown.amr)}`);
    assert.deepEqual([...claims(token).amr].sort(), [...shown.amr].sort());

    ui.assertClean();
  }));

  it('asks a TOTP account for its second factor: a wrong code keeps the prompt, the current code or a recovery code signs in; a passkey alone too', withDiagnostics(async () => {
    const email = newEmail('totp');
    const nodeToken = await register(sites.main.api, email);

    // The RFC 6238 test vector (SHA-1, T = 59 s): this file's TOTP is right.
    assert.equal(hotp(base32Decode('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ'), 1), '287082');

    const enrollment = await gql(sites.main.api, 'mutation { enrollTotp { secret otpauthUri qrCodeSvg } }', {}, nodeToken);
    assert.ok(enrollment.data?.enrollTotp, `enrollTotp: ${JSON.stringify(enrollment)}`);
    const { secret, otpauthUri, qrCodeSvg } = enrollment.data.enrollTotp;
    assert.match(secret, /^[A-Z2-7]+$/);
    assert.equal(base32Decode(secret).length, 20);
    assert.ok(otpauthUri.startsWith('otpauth://totp/'), otpauthUri);
    assert.equal(new URL(otpauthUri).searchParams.get('secret'), secret);
    assert.match(qrCodeSvg, /<svg/);
    const totp = totpApp(secret);
    const confirmed = await gql(sites.main.api, 'mutation ($code: String!) { confirmTotp(code: $code) }', { code: totp.next() }, nodeToken);
    assert.ok(confirmed.data?.confirmTotp, `confirmTotp: ${JSON.stringify(confirmed)}`);
    const recoveryCodes = confirmed.data.confirmTotp;
    assert.equal(recoveryCodes.length, 10);
    for (const code of recoveryCodes) assert.match(code, /^[a-z0-9]{5}-[a-z0-9]{5}$/);

    const ui = await openApp();
    const { page } = ui;

    // The password is right: the second factor prompt, no session yet.
    let shown = await ui.signIn(email);
    assert.equal(shown.error, null, JSON.stringify(shown));
    assert.equal(shown.state, 'mfa', JSON.stringify(shown));
    assert.deepEqual([...shown.methods].sort(), ['RECOVERY_CODE', 'TOTP']);
    assert.equal(await page.isVisible('#mfa-code'), true);
    assert.equal(await page.isVisible('#mfa-passkey'), false, 'no passkey on this account');
    assert.equal(await ui.accessToken(), null);

    // A wrong code: refused, the prompt stays (the mfaToken lives on).
    await page.fill('#mfa-code', totp.wrong());
    shown = await ui.act(() => page.click('#mfa-submit'));
    assert.equal(shown.error, 'INVALID_CREDENTIALS', JSON.stringify(shown));
    assert.equal(shown.state, 'mfa');
    assert.equal(await ui.accessToken(), null);

    // The code the authenticator app shows now.
    await page.fill('#mfa-code', totp.next());
    shown = await ui.act(() => page.click('#mfa-submit'));
    let token = await assertSignedIn(ui, shown, email);
    for (const method of ['pwd', 'otp', 'mfa']) assert.ok(shown.amr.includes(method), `${method} in ${JSON.stringify(shown.amr)}`);
    assert.deepEqual([...claims(token).amr].sort(), [...shown.amr].sort());
    const session = await currentSession(sites.main.api, token);
    assert.ok(session.authenticationMethods.includes('otp'), JSON.stringify(session));
    let me = await gql(sites.main.api, ME, {}, token);
    assert.equal(me.data?.me?.totpEnabled, true, JSON.stringify(me));
    assert.equal(me.data.me.recoveryCodesLeft, 10);

    // A recovery code (typed in upper case, as people copy them) completes a login too, once.
    shown = await ui.act(() => page.click('#logout'));
    assert.equal(shown.state, 'signed-out');
    shown = await ui.signIn(email);
    assert.equal(shown.state, 'mfa', JSON.stringify(shown));
    await page.fill('#mfa-code', recoveryCodes[0].toUpperCase());
    shown = await ui.act(() => page.click('#mfa-submit'));
    token = await assertSignedIn(ui, shown, email);
    for (const method of ['pwd', 'mfa']) assert.ok(shown.amr.includes(method), `${method} in ${JSON.stringify(shown.amr)}`);
    me = await gql(sites.main.api, ME, {}, token);
    assert.equal(me.data?.me?.recoveryCodesLeft, 9, JSON.stringify(me));

    shown = await ui.act(() => page.click('#logout'));
    shown = await ui.signIn(email);
    assert.equal(shown.state, 'mfa', JSON.stringify(shown));
    await page.fill('#mfa-code', recoveryCodes[0]);
    shown = await ui.act(() => page.click('#mfa-submit'));
    assert.equal(shown.error, 'INVALID_CREDENTIALS', 'a recovery code is used once');
    assert.equal(shown.state, 'mfa');

    // A passkey is a whole login on its own, also for an account with TOTP: signed in with
    // another recovery code (a fresh proof), register one, sign out, sign in with it: no prompt.
    await page.fill('#mfa-code', recoveryCodes[1]);
    shown = await ui.act(() => page.click('#mfa-submit'));
    await assertSignedIn(ui, shown, email);
    shown = await ui.act(() => page.click('#passkey-register'));
    assert.equal(shown.error, null, `registration: ${JSON.stringify(shown)}\n${ui.console.join('\n')}`);
    assert.equal(shown.passkeys.length, 1);
    shown = await ui.act(() => page.click('#logout'));
    assert.equal(shown.state, 'signed-out');
    shown = await ui.act(() => page.click('#passkey-login'));
    await assertSignedIn(ui, shown, email);
    for (const method of ['hwk', 'user', 'mfa']) assert.ok(shown.amr.includes(method), `${method} in ${JSON.stringify(shown.amr)}`);
    assert.ok(!shown.amr.includes('otp') && !shown.amr.includes('pwd'), JSON.stringify(shown.amr));
    // And the password login now offers all three.
    shown = await ui.act(() => page.click('#logout'));
    shown = await ui.signIn(email);
    assert.equal(shown.state, 'mfa', JSON.stringify(shown));
    assert.deepEqual([...shown.methods].sort(), ['PASSKEY', 'RECOVERY_CODE', 'TOTP']);
    assert.equal(await page.isVisible('#mfa-passkey'), true);

    ui.assertClean();
  }));

  it('asks for the password again when the session is too old to add a passkey (REAUTHENTICATION_REQUIRED)', withDiagnostics(async () => {
    const email = newEmail('step-up');
    await register(sites.stepUp.api, email);
    const ui = await openApp(sites.stepUp);
    const { page } = ui;

    let shown = await ui.signIn(email);
    const token = await assertSignedIn(ui, shown, email);
    const before = await currentSession(sites.stepUp.api, token);
    await sleep(STEP_UP_MAX_AGE * 1000 + 1500); // older than REAUTHENTICATION_MAX_AGE

    // The registration answers REAUTHENTICATION_REQUIRED: the page asks for the password,
    // reauthenticates, and registers the passkey.
    let prompted = false;
    shown = await ui.act(async () => {
      await page.click('#passkey-register');
      await page.waitForSelector('#reauth-prompt', { state: 'visible', timeout: 15000 });
      prompted = true;
      await page.fill('#reauth-password', password);
      await page.click('#reauth-submit');
    });
    assert.ok(prompted);
    assert.equal(shown.error, null, `${JSON.stringify(shown)}\n${ui.console.join('\n')}`);
    assert.equal(shown.state, 'signed-in');
    assert.equal(shown.passkeys.length, 1);
    assert.equal((await ui.credentials()).length, 1);
    const later = await currentSession(sites.stepUp.api, token);
    assert.equal(later.id, before.id, 'the same session');
    assert.ok(Date.parse(later.authenticatedAt) > Date.parse(before.authenticatedAt), 'reauthenticate made it fresh');

    ui.assertClean();
  }));
});

/** The app's code between `// README: begin` and `// README: end`. */
async function readmeRegion() {
  const source = await readFile(new URL('../browser/passkey-app.mjs', import.meta.url), 'utf8');
  const begin = '// README: begin\n';
  const start = source.indexOf(begin);
  const end = source.indexOf('// README: end');
  assert.ok(start >= 0 && end > start, 'the app marks its README code');
  return source.slice(start + begin.length, end);
}

it("the README's passkeys.js block is the tested app's code", async (t) => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  const heading = /^(#+) Second factors and passkeys[ \t]*$/m.exec(readme);
  if (!heading) {
    t.skip('the README has no "Second factors and passkeys" section yet');
    return;
  }
  let section = readme.slice(heading.index + heading[0].length);
  const next = new RegExp(`\\n#{1,${heading[1].length}} `).exec(section);
  if (next) section = section.slice(0, next.index);
  const block = /```js[^\n]*\bfile=passkeys\.js[^\n]*\n([\s\S]*?)```/.exec(section);
  assert.ok(block, 'the section has a ```js file=passkeys.js block');
  assert.equal(block[1], await readmeRegion());
});
