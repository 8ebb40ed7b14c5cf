// Browser entry of the second-factor and passkey app (issue 20), bundled by esbuild (see
// lib/bundle.mjs) and driven by test/browser-passkeys.test.mjs like a user would: a page with a
// password form, "Sign in with a passkey" (usernameless: a discoverable credential), the second
// factor prompt a login answering MFA_REQUIRED brings up (a TOTP or recovery code, or a
// passkey), "Register a passkey", the step-up prompt an operation answering
// REAUTHENTICATION_REQUIRED brings up, and "Sign out". Apollo Client 4 over @authql/client's
// link (token mode), which keeps the pair of every answer that issues one (`login`,
// `verifyMfa`, `finishPasskeyLogin`, ...). The page's server forwards `/graphql` to authql.
// The code between the `README` marks is the README's block `passkeys.js` in "Second factors and
// passkeys", character for character (the test checks it).
//
// What the test reads: `document.body.dataset.state` (`signed-out`, `mfa`, `signed-in`), the
// section shown (`#signed-out`, `#mfa-prompt`, `#reauth-prompt`, `#signed-in`),
// `#error[data-code]` (the GraphQL code, or the DOMException's name), `#user-email`,
// `#session-amr[data-amr]`, `#mfa-methods li[data-method]`, `#passkeys li[data-id]`, and
// `window.passkeyApp`.
// README: begin
import { ApolloClient, InMemoryCache, gql } from '@apollo/client';
import { createAuthqlLink, graphqlErrorsOf } from '@authql/client';

const authql = createAuthqlLink({ uri: '/graphql' });
const client = new ApolloClient({ link: authql, cache: new InMemoryCache() });

// What a sign-in answers: the link takes the token pair from it by itself.
const LOGIN = gql`
  mutation Login($input: LoginInput!) {
    login(input: $input) { user { id email } session { id authenticatedAt authenticationMethods } }
  }
`;
const VERIFY_MFA = gql`
  mutation VerifyMfa($input: VerifyMfaInput!) {
    verifyMfa(input: $input) { user { id email } session { id authenticatedAt authenticationMethods } }
  }
`;
const BEGIN_PASSKEY_LOGIN = gql`
  mutation BeginPasskeyLogin($input: BeginPasskeyLoginInput) {
    beginPasskeyLogin(input: $input) { challengeId options }
  }
`;
const FINISH_PASSKEY_LOGIN = gql`
  mutation FinishPasskeyLogin($input: FinishPasskeyLoginInput!) {
    finishPasskeyLogin(input: $input) { user { id email } session { id authenticatedAt authenticationMethods } }
  }
`;
const BEGIN_PASSKEY_REGISTRATION = gql`
  mutation BeginPasskeyRegistration { beginPasskeyRegistration }
`;
const FINISH_PASSKEY_REGISTRATION = gql`
  mutation FinishPasskeyRegistration($input: FinishPasskeyRegistrationInput!) {
    finishPasskeyRegistration(input: $input) { id name createdAt lastUsedAt }
  }
`;
const REAUTHENTICATE = gql`
  mutation Reauthenticate($input: ReauthenticateInput!) {
    reauthenticate(input: $input) { id authenticatedAt authenticationMethods }
  }
`;

/** The first GraphQL error of `error` with `code`, or undefined. */
const errorWith = (error, code) => graphqlErrorsOf(error).find((e) => e.extensions?.code === code);

/**
 * Password login. Resolves the AuthPayload, or `{ mfaToken, methods }` when the account has a
 * second factor (`methods`: any of TOTP, RECOVERY_CODE, PASSKEY); no session exists yet then.
 */
async function signIn(emailOrUsername, password) {
  try {
    const { data } = await client.mutate({ mutation: LOGIN, variables: { input: { emailOrUsername, password } } });
    return data.login;
  } catch (error) {
    const mfa = errorWith(error, 'MFA_REQUIRED');
    if (!mfa) throw error;
    return { mfaToken: mfa.extensions.mfaToken, methods: mfa.extensions.methods };
  }
}

/** The second step with a code from the authenticator app, or a recovery code. */
async function verifyMfa(mfaToken, code) {
  const { data } = await client.mutate({ mutation: VERIFY_MFA, variables: { input: { mfaToken, code } } });
  return data.verifyMfa;
}

/**
 * A passkey ceremony: with `{}` a usernameless sign-in (the browser offers the passkeys it holds
 * for this site), with `{ mfaToken }` the second step of a password login, with
 * `{ reauthenticate: true }` a step-up of the current session.
 */
async function signInWithPasskey(input = {}) {
  const { data } = await client.mutate({ mutation: BEGIN_PASSKEY_LOGIN, variables: { input } });
  const { challengeId, options } = data.beginPasskeyLogin;
  const assertion = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options) });
  const { data: done } = await client.mutate({
    mutation: FINISH_PASSKEY_LOGIN,
    variables: { input: { challengeId, credential: assertion.toJSON() } },
  });
  return done.finishPasskeyLogin;
}

/** Adds a passkey to the signed-in account (a step-up operation: see `withStepUp`). */
async function registerPasskey(name) {
  const { data } = await client.mutate({ mutation: BEGIN_PASSKEY_REGISTRATION });
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(data.beginPasskeyRegistration);
  const credential = await navigator.credentials.create({ publicKey });
  const { data: done } = await client.mutate({
    mutation: FINISH_PASSKEY_REGISTRATION,
    variables: { input: { credential: credential.toJSON(), name } },
  });
  return done.finishPasskeyRegistration;
}

/**
 * Runs `operation`; when authql answers REAUTHENTICATION_REQUIRED (the session's last proof is
 * older than REAUTHENTICATION_MAX_AGE), asks the user for a proof with `askProof()` (resolving
 * `{ password }` or `{ code }`), sends it with `reauthenticate`, and runs `operation` again.
 */
async function withStepUp(operation, askProof) {
  try {
    return await operation();
  } catch (error) {
    if (!errorWith(error, 'REAUTHENTICATION_REQUIRED')) throw error;
    await client.mutate({ mutation: REAUTHENTICATE, variables: { input: await askProof() } });
    return operation();
  }
}
// README: end

// The page: what the functions above are wired to.
const ME = gql('query Me { me { id email totpEnabled passkeys { id name createdAt lastUsedAt } } }');

document.body.innerHTML = `
<main>
  <p id="error" role="alert" hidden></p>
  <section id="signed-out" hidden>
    <form id="login-form">
      <input id="login-name" name="username" autocomplete="username webauthn" placeholder="email or username">
      <input id="login-password" name="password" type="password" autocomplete="current-password" placeholder="password">
      <button id="login-submit" type="submit">Sign in</button>
    </form>
    <button id="passkey-login" type="button">Sign in with a passkey</button>
  </section>
  <section id="mfa-prompt" hidden>
    <h2>Second factor</h2>
    <ul id="mfa-methods"></ul>
    <form id="mfa-form" hidden>
      <input id="mfa-code" name="code" autocomplete="one-time-code" placeholder="code from your app, or a recovery code">
      <button id="mfa-submit" type="submit">Verify</button>
    </form>
    <button id="mfa-passkey" type="button" hidden>Use a passkey</button>
    <button id="mfa-cancel" type="button">Cancel</button>
  </section>
  <section id="reauth-prompt" hidden>
    <h2>Confirm it is you</h2>
    <form id="reauth-form">
      <input id="reauth-password" type="password" autocomplete="current-password" placeholder="password">
      <input id="reauth-code" autocomplete="one-time-code" placeholder="or a code">
      <button id="reauth-submit" type="submit">Confirm</button>
    </form>
  </section>
  <section id="signed-in" hidden>
    <p>Signed in as <span id="user-email"></span></p>
    <p id="session-amr"></p>
    <input id="passkey-name" value="This browser" maxlength="64">
    <button id="passkey-register" type="button">Register a passkey</button>
    <ul id="passkeys"></ul>
    <button id="logout" type="button">Sign out</button>
  </section>
</main>`;

const $ = (id) => document.getElementById(id);
// `busy`: clicks being worked on; `done`: clicks worked on (a test waits for it to grow).
const app = (window.passkeyApp = { link: authql, client, last: null, pending: null, busy: 0, done: 0 });

const SECTIONS = { 'signed-out': 'signed-out', mfa: 'mfa-prompt', 'signed-in': 'signed-in' };

/** Shows the section of `state` (a key of SECTIONS) and only it. */
function show(state) {
  document.body.dataset.state = state;
  for (const [name, id] of Object.entries(SECTIONS)) $(id).hidden = name !== state;
}

function showError(error) {
  const code = graphqlErrorsOf(error)[0]?.extensions?.code ?? error?.name ?? 'ERROR';
  $('error').dataset.code = code;
  $('error').textContent = `${code}: ${graphqlErrorsOf(error)[0]?.message ?? error?.message ?? error}`;
  $('error').hidden = false;
}

function clearError() {
  delete $('error').dataset.code;
  $('error').textContent = '';
  $('error').hidden = true;
}

/** Runs a click's work: the error cleared first, any failure shown; `body[data-busy]` meanwhile. */
async function act(work) {
  clearError();
  app.busy += 1;
  document.body.dataset.busy = 'true';
  try {
    await work();
  } catch (error) {
    console.warn('passkey app:', error);
    showError(error);
  } finally {
    app.busy -= 1;
    app.done += 1;
    if (app.busy === 0) delete document.body.dataset.busy;
  }
}

async function showSignedIn(payload) {
  app.last = payload;
  app.pending = null;
  $('user-email').textContent = payload.user.email;
  const amr = payload.session?.authenticationMethods ?? [];
  $('session-amr').dataset.amr = amr.join(' ');
  $('session-amr').textContent = `signed in with: ${amr.join(', ')}`;
  show('signed-in');
  await listPasskeys();
}

async function listPasskeys() {
  const { data } = await client.query({ query: ME, fetchPolicy: 'network-only' });
  $('passkeys').replaceChildren(
    ...data.me.passkeys.map((passkey) => {
      const li = document.createElement('li');
      li.dataset.id = passkey.id;
      li.textContent = passkey.name;
      return li;
    }),
  );
}

function showMfaPrompt({ mfaToken, methods }) {
  app.pending = { mfaToken, methods };
  $('mfa-methods').replaceChildren(
    ...methods.map((method) => {
      const li = document.createElement('li');
      li.dataset.method = method;
      li.textContent = method;
      return li;
    }),
  );
  $('mfa-form').hidden = !methods.includes('TOTP') && !methods.includes('RECOVERY_CODE');
  $('mfa-passkey').hidden = !methods.includes('PASSKEY');
  $('mfa-code').value = '';
  show('mfa');
}

/** After a sign-in step: signed in, or the prompt for a second factor. */
const arrived = (result) => (result.mfaToken ? showMfaPrompt(result) : showSignedIn(result));

/** A second step that failed: a dead mfaToken (used, expired, too many wrong codes) starts over. */
function secondStepFailed(error) {
  if (errorWith(error, 'INVALID_TOKEN')) {
    app.pending = null;
    show('signed-out');
  }
  throw error;
}

/** The step-up prompt: resolves the proof the user typed. */
function askProof() {
  return new Promise((resolve) => {
    $('reauth-password').value = '';
    $('reauth-code').value = '';
    $('reauth-prompt').hidden = false;
    $('reauth-form').onsubmit = (event) => {
      event.preventDefault();
      $('reauth-prompt').hidden = true;
      const code = $('reauth-code').value.trim();
      resolve(code ? { code } : { password: $('reauth-password').value });
    };
  });
}

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  act(async () => arrived(await signIn($('login-name').value.trim(), $('login-password').value)));
});
$('passkey-login').addEventListener('click', () => act(async () => arrived(await signInWithPasskey({}))));
$('mfa-form').addEventListener('submit', (event) => {
  event.preventDefault();
  act(async () => {
    const payload = await verifyMfa(app.pending.mfaToken, $('mfa-code').value.trim()).catch(secondStepFailed);
    await showSignedIn(payload);
  });
});
$('mfa-passkey').addEventListener('click', () =>
  act(async () => {
    const payload = await signInWithPasskey({ mfaToken: app.pending.mfaToken }).catch(secondStepFailed);
    await showSignedIn(payload);
  }),
);
$('mfa-cancel').addEventListener('click', () => {
  clearError();
  app.pending = null;
  show('signed-out');
});
$('passkey-register').addEventListener('click', () =>
  act(async () => {
    app.registered = await withStepUp(() => registerPasskey($('passkey-name').value), askProof);
    await listPasskeys();
  }),
);
$('logout').addEventListener('click', () =>
  act(async () => {
    await authql.signOut();
    show('signed-out');
  }),
);
authql.on('signedOut', () => {
  app.last = null;
  show('signed-out');
});

// A session kept from an earlier visit (the pair in localStorage).
act(async () => {
  show('signed-out');
  if (await authql.restore()) {
    const { data } = await client.query({ query: ME, fetchPolicy: 'network-only' });
    await showSignedIn({ user: data.me, session: null });
  }
}).then(() => {
  document.title = 'authql passkeys ready';
});
