// Browser entry of the "Sign in with OpenID Connect" app, bundled by esbuild (see
// lib/bundle.mjs) and driven by test/browser-oidc.test.mjs like a user would: a page listing
// `oidcProviders` as "Sign in with <displayName>" buttons. A click calls `beginOidcLogin` with
// the page's own URL as `redirectUri` (one of authql's OIDC_REDIRECT_URIS), keeps the answer's
// `state` in sessionStorage and goes to `authorizationUrl`; the provider sends the browser to
// authql's `/auth/oidc/callback`, which sends it back here with `?code=...&state=...` (or
// `?error=...&state=...`). The page takes them out of the address bar at once
// (history.replaceState), and calls `completeOidcLogin(code)` only when `state` is the one it
// kept (else STATE_MISMATCH: a page must not complete a sign-in it did not begin, RFC 6749
// § 10.12). Apollo Client 4 over @authql/client's link (token mode), which keeps the pair of
// `completeOidcLogin`'s answer. The page's server forwards `/graphql` to authql.
//
// What the test reads: `document.body.dataset`: `ready` (the page worked off its address),
// `state` (`signed-out`, `signed-in`), `error` and `errorReason` (the GraphQL code and
// `extensions.reason`, or the page's own: STATE_MISMATCH, OIDC_ERROR with the callback's `error`
// as the reason), `userEmail`, `userId`, `sessionId`, `amr`; `#providers button[data-provider]`,
// `#identities li[data-provider]`; and `window.oidcApp`.
// The code between the `README` marks is the README's block `oidc.js` in "Sign in with OpenID
// Connect", character for character (the test checks it).
// README: begin
import { ApolloClient, InMemoryCache, gql } from '@apollo/client';
import { createAuthqlLink, graphqlErrorsOf } from '@authql/client';

const authql = createAuthqlLink({ uri: '/graphql' });
const client = new ApolloClient({ link: authql, cache: new InMemoryCache() });

const OIDC_PROVIDERS = gql`
  query OidcProviders { oidcProviders { name displayName } }
`;
const BEGIN_OIDC_LOGIN = gql`
  mutation BeginOidcLogin($input: BeginOidcLoginInput!) {
    beginOidcLogin(input: $input) { authorizationUrl state }
  }
`;
// What a sign-in answers: the link takes the token pair from it by itself.
const COMPLETE_OIDC_LOGIN = gql`
  mutation CompleteOidcLogin($code: String!) {
    completeOidcLogin(code: $code) { user { id email } session { id authenticatedAt authenticationMethods } }
  }
`;
const ME = gql`
  query Me { me { id email emailVerified identities { provider email linkedAt } } }
`;

/** Where the page keeps the sign-in it began (this tab only, gone with it). */
const PENDING_KEY = 'authql:oidc:pending';
/** What the callback puts in the page's address. */
const CALLBACK_PARAMS = ['code', 'state', 'error', 'error_description', 'error_uri', 'iss'];

/** An error of the page's own, shown like authql's (`code`, `reason`). */
class SignInError extends Error {
  constructor(code, reason) {
    super(reason ? `${code}: ${reason}` : code);
    this.name = 'SignInError';
    this.code = code;
    this.reason = reason ?? null;
  }
}

/** This page's address without query or fragment: the `redirectUri` the callback returns to. */
const redirectUri = () => `${location.origin}${location.pathname}`;

/** Begins a sign-in with `provider`: keeps the `state`, and leaves for the provider. */
async function beginSignIn(provider) {
  const { data } = await client.mutate({
    mutation: BEGIN_OIDC_LOGIN,
    variables: { input: { provider, redirectUri: redirectUri() } },
  });
  const { authorizationUrl, state } = data.beginOidcLogin;
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ provider, state }));
  location.assign(authorizationUrl);
}

/**
 * The page's address after the callback: `null` when it is not one; else the sign-in's session
 * (`completeOidcLogin`'s answer), or a thrown error. The parameters leave the address bar first,
 * whatever follows (a reload must not send the code again, nor the code stay in the history).
 */
async function completeSignIn() {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return null;
  const returned = { code: params.get('code'), state: params.get('state'), error: params.get('error') };
  for (const name of CALLBACK_PARAMS) params.delete(name);
  const rest = params.toString();
  history.replaceState(history.state, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);

  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) ?? 'null');
  } catch { /* not ours */ }
  // Not the sign-in this tab began (none, or another one): someone else's code (login CSRF).
  // The tab's own sign-in, if any, stays pending.
  if (!pending?.state || !returned.state || pending.state !== returned.state) throw new SignInError('STATE_MISMATCH');
  sessionStorage.removeItem(PENDING_KEY);
  if (returned.error !== null) throw new SignInError('OIDC_ERROR', returned.error);
  if (!returned.code) throw new SignInError('OIDC_ERROR', 'no_code');
  const { data } = await client.mutate({ mutation: COMPLETE_OIDC_LOGIN, variables: { code: returned.code } });
  return data.completeOidcLogin;
}
// README: end

// The page: what the functions above are wired to.
document.body.innerHTML = `
<main>
  <p id="error" role="alert" hidden></p>
  <section id="signed-out" hidden>
    <h1>Sign in</h1>
    <div id="providers"></div>
  </section>
  <section id="signed-in" hidden>
    <p>Signed in as <span id="user-email"></span></p>
    <p id="session-amr"></p>
    <h2>Linked sign-in providers</h2>
    <ul id="identities"></ul>
    <button id="reload-me" type="button">Reload</button>
    <button id="sign-out" type="button">Sign out</button>
  </section>
</main>`;

const $ = (id) => document.getElementById(id);
const data = document.body.dataset;
// `busy`: clicks being worked on; `done`: clicks worked on (a test waits for it to grow).
const app = (window.oidcApp = { link: authql, client, last: null, busy: 0, done: 0 });

function show(state) {
  data.state = state;
  $('signed-out').hidden = state !== 'signed-out';
  $('signed-in').hidden = state !== 'signed-in';
  if (state === 'signed-out') {
    app.last = null;
    for (const key of ['userEmail', 'userId', 'sessionId', 'amr']) delete data[key];
    $('identities').replaceChildren();
  }
}

function showError(error) {
  const first = graphqlErrorsOf(error)[0];
  const code = first?.extensions?.code ?? error?.code ?? error?.name ?? 'ERROR';
  const reason = first?.extensions?.reason ?? error?.reason ?? null;
  data.error = code;
  if (reason) data.errorReason = reason;
  else delete data.errorReason;
  $('error').textContent = `${code}${reason ? ` (${reason})` : ''}: ${first?.message ?? error?.message ?? error}`;
  $('error').hidden = false;
}

function clearError() {
  delete data.error;
  delete data.errorReason;
  $('error').textContent = '';
  $('error').hidden = true;
}

/** Runs a click's work: the error cleared first, any failure shown; `body[data-busy]` meanwhile. */
async function act(work) {
  clearError();
  app.busy += 1;
  data.busy = 'true';
  try {
    await work();
  } catch (error) {
    console.warn('oidc app:', error);
    showError(error);
  } finally {
    app.busy -= 1;
    app.done += 1;
    if (app.busy === 0) delete data.busy;
  }
}

async function listProviders() {
  const { data: answer } = await client.query({ query: OIDC_PROVIDERS, fetchPolicy: 'network-only' });
  $('providers').replaceChildren(
    ...answer.oidcProviders.map(({ name, displayName }) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.provider = name;
      button.textContent = `Sign in with ${displayName}`;
      button.addEventListener('click', () => act(() => beginSignIn(name)));
      return button;
    }),
  );
}

/** `me` (with its identities) on the page; a failure is thrown. */
async function loadMe() {
  const { data: answer } = await client.query({ query: ME, fetchPolicy: 'network-only' });
  const { me } = answer;
  data.userEmail = me.email;
  data.userId = me.id;
  $('user-email').textContent = me.email;
  $('identities').replaceChildren(
    ...me.identities.map((identity) => {
      const li = document.createElement('li');
      li.dataset.provider = identity.provider;
      li.dataset.email = identity.email ?? '';
      li.textContent = `${identity.provider} (${identity.email ?? 'no address'}), linked ${identity.linkedAt}`;
      return li;
    }),
  );
  return me;
}

async function showSignedIn(payload) {
  app.last = payload;
  data.sessionId = payload.session?.id ?? authql.tokens?.sessionId ?? '';
  const amr = payload.session?.authenticationMethods ?? [];
  data.amr = amr.join(' ');
  $('session-amr').textContent = amr.length ? `signed in with: ${amr.join(', ')}` : '';
  show('signed-in');
  await loadMe();
}

$('reload-me').addEventListener('click', () => act(loadMe));
$('sign-out').addEventListener('click', () =>
  act(async () => {
    await authql.signOut();
    show('signed-out');
  }),
);
authql.on('signedOut', () => show('signed-out'));

// The address first (the way back from the provider), else a session kept from an earlier
// visit (the pair in localStorage); the providers' buttons in any case.
act(async () => {
  show('signed-out');
  try {
    const payload = await completeSignIn();
    if (payload) await showSignedIn(payload);
    else if (await authql.restore()) await showSignedIn({ user: null, session: null });
  } finally {
    await listProviders();
  }
}).then(() => {
  data.ready = 'true';
  document.title = 'authql oidc ready';
});
