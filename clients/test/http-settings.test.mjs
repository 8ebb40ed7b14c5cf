// authql's browser-facing settings over plain HTTP (no browser needed): CORS, the refresh-token
// cookie, GraphiQL on/off, the DateTime scalar's @specifiedBy, and request errors under
// application/graphql-response+json.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AUTHQL_BIN, startAuthql } from '../lib/authql-server.mjs';

const APP = 'http://127.0.0.1:5173';
const APP2 = 'http://app.example.test';
const EVIL = 'http://127.0.0.1:6666';
const GRAPHQL_RESPONSE = 'application/graphql-response+json';
const DATE_TIME_SPEC = 'https://scalars.graphql.org/andimarek/date-time';
const password = 'correct horse battery staple';
const AUTH_FIELDS = 'accessToken refreshToken session { id }';

/** POST a GraphQL request; returns { status, headers, body, cookies }. */
async function gql(url, query, { variables, headers = {}, accept = GRAPHQL_RESPONSE } = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept, ...headers },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, body, cookies: res.headers.getSetCookie().map(parseSetCookie) };
}

/** `name=value; Attr; Attr=x` -> { name, value, attrs: { lowercased attr: value | true } } */
function parseSetCookie(header) {
  const [pair, ...attrs] = header.split(';').map((s) => s.trim());
  const eq = pair.indexOf('=');
  const out = { name: pair.slice(0, eq), value: pair.slice(eq + 1), attrs: {} };
  for (const a of attrs) {
    const i = a.indexOf('=');
    if (i < 0) out.attrs[a.toLowerCase()] = true;
    else out.attrs[a.slice(0, i).toLowerCase()] = a.slice(i + 1);
  }
  return out;
}

const isCleared = (c) =>
  c.value === '' || c.attrs['max-age'] === '0' || (c.attrs.expires && Date.parse(c.attrs.expires) < Date.now());

const codes = (r) => (r.body?.errors ?? []).map((e) => e.extensions?.code);

let n = 0;
const newEmail = () => `user${++n}-${Date.now()}@example.com`;

describe('CORS_ALLOWED_ORIGINS and REFRESH_TOKEN_COOKIE (Secure default)', () => {
  let server;
  before(async () => {
    server = await startAuthql({ env: { CORS_ALLOWED_ORIGINS: `${APP},${APP2}`, REFRESH_TOKEN_COOKIE: 'true' } });
  });
  after(async () => { await server?.stop(); });

  const preflight = (origin) =>
    fetch(server.graphql, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,authorization,apollo-require-preflight,x-apollo-operation-name',
      },
      signal: AbortSignal.timeout(10000),
    });

  it('a preflight from a listed origin: 204, methods, the four headers, credentials', async () => {
    for (const origin of [APP, APP2]) {
      const res = await preflight(origin);
      assert.equal(res.status, 204, origin);
      assert.equal(res.headers.get('access-control-allow-origin'), origin);
      assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
      const methods = (res.headers.get('access-control-allow-methods') ?? '').toUpperCase().split(/\s*,\s*/);
      assert.ok(methods.includes('POST') && methods.includes('GET'), `allow-methods: ${methods}`);
      const allowed = (res.headers.get('access-control-allow-headers') ?? '').toLowerCase().split(/\s*,\s*/);
      for (const h of ['content-type', 'authorization', 'apollo-require-preflight', 'x-apollo-operation-name']) {
        assert.ok(allowed.includes(h), `allow-headers lacks ${h}: ${allowed}`);
      }
      assert.match(res.headers.get('vary') ?? '', /origin/i);
    }
  });

  it('an unlisted origin gets no CORS headers, on preflight or request', async () => {
    const pre = await preflight(EVIL);
    assert.equal(pre.headers.get('access-control-allow-origin'), null);
    assert.equal(pre.headers.get('access-control-allow-credentials'), null);
    const r = await gql(server.graphql, '{ __typename }', { headers: { origin: EVIL } });
    assert.equal(r.headers.get('access-control-allow-origin'), null);
    const ok = await gql(server.graphql, '{ __typename }', { headers: { origin: APP } });
    assert.equal(ok.headers.get('access-control-allow-origin'), APP);
    assert.equal(ok.headers.get('access-control-allow-credentials'), 'true');
  });

  it('register sets __Secure-authql_refresh: HttpOnly, Secure, SameSite=Strict, Path=/graphql; payload refreshToken null', async () => {
    const r = await gql(server.graphql, `mutation($i: RegisterInput!) { register(input: $i) { ${AUTH_FIELDS} } }`, {
      variables: { i: { email: newEmail(), password } },
      headers: { origin: APP },
    });
    assert.deepEqual(codes(r), []);
    assert.equal(r.body.data.register.refreshToken, null);
    const [cookie, ...more] = r.cookies;
    assert.equal(more.length, 0);
    assert.equal(cookie.name, '__Secure-authql_refresh');
    assert.ok(cookie.value.length > 20);
    assert.equal(cookie.attrs.httponly, true);
    assert.equal(cookie.attrs.secure, true);
    assert.equal(cookie.attrs.path, '/graphql');
    assert.equal(String(cookie.attrs.samesite).toLowerCase(), 'strict');
  });

  /** Register and return { cookie: 'name=value', access, sessionId }. */
  async function session() {
    const r = await gql(server.graphql, `mutation($i: RegisterInput!) { register(input: $i) { ${AUTH_FIELDS} } }`, {
      variables: { i: { email: newEmail(), password } },
    });
    assert.deepEqual(codes(r), []);
    const c = r.cookies.find((x) => x.name.endsWith('authql_refresh'));
    return { cookie: `${c.name}=${c.value}`, value: c.value, access: r.body.data.register.accessToken, sessionId: r.body.data.register.session.id };
  }
  const refreshByCookie = (cookie, origin) =>
    gql(server.graphql, `mutation { refresh { ${AUTH_FIELDS} } }`, { headers: { cookie, ...(origin ? { origin } : {}) } });

  it('refresh without an argument reads the cookie from a listed origin, rotates it', async () => {
    const s = await session();
    const r = await refreshByCookie(s.cookie, APP);
    assert.deepEqual(codes(r), []);
    assert.equal(r.body.data.refresh.refreshToken, null);
    assert.equal(r.body.data.refresh.session.id, s.sessionId);
    const next = r.cookies.find((x) => x.name === '__Secure-authql_refresh');
    assert.ok(next && next.value !== s.value, 'a new refresh cookie');
    // The old cookie is spent (within the reuse grace window it may give the same pair, never a third).
  });

  it('a cookie refresh from an unlisted origin, or with no Origin, is refused and spends nothing', async () => {
    const s = await session();
    for (const origin of [EVIL, undefined]) {
      const r = await refreshByCookie(s.cookie, origin);
      assert.deepEqual(codes(r), ['FORBIDDEN'], `origin ${origin}`);
      assert.equal(r.body.errors[0].extensions.reason, 'ORIGIN_NOT_ALLOWED');
      assert.ok(!r.body?.data?.refresh, 'no pair');
      assert.equal(r.cookies.filter((c) => !isCleared(c)).length, 0, 'no new cookie');
    }
    const ok = await refreshByCookie(s.cookie, APP);
    assert.deepEqual(codes(ok), [], 'the cookie still works from the listed origin');
  });

  it('refresh with no argument and no cookie: UNAUTHENTICATED', async () => {
    const r = await gql(server.graphql, `mutation { refresh { accessToken } }`, { headers: { origin: APP } });
    assert.deepEqual(codes(r), ['UNAUTHENTICATED']);
  });

  it('refresh with the token as argument still works in cookie mode', async () => {
    const s = await session();
    const r = await gql(server.graphql, `mutation($t: String) { refresh(refreshToken: $t) { ${AUTH_FIELDS} } }`, {
      variables: { t: s.value },
    });
    assert.deepEqual(codes(r), []);
    assert.equal(r.body.data.refresh.session.id, s.sessionId);
  });

  it('changePassword keeps the current session, and so its cookie', async () => {
    const s = await session();
    const r = await gql(server.graphql, 'mutation($i: ChangePasswordInput!) { changePassword(input: $i) }', {
      variables: { i: { currentPassword: password, newPassword: 'another long passphrase' } },
      headers: { authorization: `Bearer ${s.access}`, origin: APP, cookie: s.cookie },
    });
    assert.deepEqual(codes(r), []);
    assert.deepEqual(r.cookies.filter((c) => c.name === '__Secure-authql_refresh'), [], 'no Set-Cookie');
    const again = await refreshByCookie(s.cookie, APP);
    assert.deepEqual(codes(again), [], 'the cookie still refreshes');
  });

  it('logout with neither access token nor argument ends the session of the cookie', async () => {
    const s = await session();
    const r = await gql(server.graphql, 'mutation { logout }', { headers: { cookie: s.cookie, origin: APP } });
    assert.deepEqual(codes(r), []);
    assert.equal(r.body.data.logout, true);
    assert.ok(r.cookies.some((c) => c.name === '__Secure-authql_refresh' && isCleared(c)), 'the cookie is cleared');
    const me = await gql(server.graphql, '{ me { id } }', { headers: { authorization: `Bearer ${s.access}` } });
    assert.deepEqual(codes(me), ['UNAUTHENTICATED'], 'the access token died with its session');
    const again = await refreshByCookie(s.cookie, APP);
    assert.deepEqual(codes(again), ['UNAUTHENTICATED']);
  });

  for (const [name, mutation, variables] of [
    ['logout', 'mutation { logout }'],
    ['revokeTokens of the current session', 'mutation($i: RevokeTokensInput!) { revokeTokens(input: $i) { revokedCount } }'],
  ]) {
    it(`${name} clears the cookie`, async () => {
      const s = await session();
      const vars = variables ?? { i: { sessionIds: [s.sessionId] } };
      const r = await gql(server.graphql, mutation, {
        variables: mutation.includes('$i') ? vars : undefined,
        headers: { authorization: `Bearer ${s.access}`, origin: APP, cookie: s.cookie },
      });
      assert.deepEqual(codes(r), []);
      const cleared = r.cookies.filter((c) => c.name === '__Secure-authql_refresh');
      assert.equal(cleared.length, 1, 'one Set-Cookie for the refresh cookie');
      assert.ok(isCleared(cleared[0]), `cleared: ${JSON.stringify(cleared[0])}`);
      assert.equal(cleared[0].attrs.path, '/graphql');
    });
  }
});

describe('REFRESH_TOKEN_COOKIE_SECURE=false, SAME_SITE=Lax', () => {
  let server;
  before(async () => {
    server = await startAuthql({
      env: {
        CORS_ALLOWED_ORIGINS: APP,
        REFRESH_TOKEN_COOKIE: 'true',
        REFRESH_TOKEN_COOKIE_SECURE: 'false',
        REFRESH_TOKEN_COOKIE_SAME_SITE: 'Lax',
      },
    });
  });
  after(async () => { await server?.stop(); });

  it('names the cookie authql_refresh, without Secure, SameSite=Lax', async () => {
    const r = await gql(server.graphql, `mutation($i: RegisterInput!) { register(input: $i) { ${AUTH_FIELDS} } }`, {
      variables: { i: { email: newEmail(), password } },
    });
    assert.deepEqual(codes(r), []);
    const [cookie] = r.cookies;
    assert.equal(cookie.name, 'authql_refresh');
    assert.equal(cookie.attrs.secure, undefined);
    assert.equal(cookie.attrs.httponly, true);
    assert.equal(String(cookie.attrs.samesite).toLowerCase(), 'lax');
  });
});

describe('defaults: no cookie, no CORS, GraphiQL on', () => {
  let server;
  before(async () => { server = await startAuthql(); });
  after(async () => { await server?.stop(); });

  it('register answers the refresh token in the body and sets no cookie; no CORS headers', async () => {
    const r = await gql(server.graphql, `mutation($i: RegisterInput!) { register(input: $i) { ${AUTH_FIELDS} } }`, {
      variables: { i: { email: newEmail(), password } },
      headers: { origin: APP },
    });
    assert.deepEqual(codes(r), []);
    assert.equal(typeof r.body.data.register.refreshToken, 'string');
    assert.deepEqual(r.cookies, []);
    assert.equal(r.headers.get('access-control-allow-origin'), null);
  });

  it('response fields come in the order of the selection set (GraphQL spec, Serialized Map Ordering)', async () => {
    for (const accept of [GRAPHQL_RESPONSE, 'application/json']) {
      const r = await gql(server.graphql, '{ zz: __typename aa: __typename mm: __typename }', { accept });
      assert.deepEqual(Object.keys(r.body.data), ['zz', 'aa', 'mm'], accept);
      const reg = await gql(server.graphql, `mutation($i: RegisterInput!) {
        register(input: $i) { user { username id email } tokenType accessToken } }`, {
        variables: { i: { email: newEmail(), password } },
        accept,
      });
      assert.deepEqual(Object.keys(reg.body.data.register), ['user', 'tokenType', 'accessToken'], accept);
      assert.deepEqual(Object.keys(reg.body.data.register.user), ['username', 'id', 'email'], accept);
    }
  });

  it('GraphiQL: the page at / and its files at /graphiql/<file>', async () => {
    const page = await fetch(`${server.url}/`, { signal: AbortSignal.timeout(10000) });
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /text\/html/);
    const html = await page.text();
    for (const file of ['graphiql.min.js', 'graphiql.min.css', 'react.production.min.js', 'react-dom.production.min.js', 'init.js']) {
      assert.ok(html.includes(`/graphiql/${file}`), `the page loads ${file}`);
      const res = await fetch(`${server.url}/graphiql/${file}`, { signal: AbortSignal.timeout(10000) });
      assert.equal(res.status, 200, file);
      assert.match(res.headers.get('content-type') ?? '', file.endsWith('.css') ? /text\/css/ : /javascript/);
      await res.arrayBuffer();
    }
    const missing = await fetch(`${server.url}/graphiql/nope.js`, { signal: AbortSignal.timeout(10000) });
    assert.equal(missing.status, 404);
  });

  it('DateTime is @specifiedBy the date-time spec, in introspection and in print-schema', async () => {
    const r = await gql(server.graphql, '{ __type(name: "DateTime") { kind specifiedByURL } }');
    assert.deepEqual(r.body, { data: { __type: { kind: 'SCALAR', specifiedByURL: DATE_TIME_SPEC } } });
    const { stdout } = await promisify(execFile)(AUTHQL_BIN, ['print-schema'], { timeout: 30000 });
    assert.match(stdout, new RegExp(`scalar DateTime @specifiedBy\\(url: "${DATE_TIME_SPEC.replaceAll('.', '\\.')}"\\)`));
  });

  it('request errors under application/graphql-response+json: 400 without data', async () => {
    const cases = [
      ['parse', '{ me { id ', undefined, 'GRAPHQL_PARSE_FAILED'],
      ['validation', '{ nope }', undefined, 'GRAPHQL_VALIDATION_FAILED'],
      ['variable coercion', 'mutation($i: RegisterInput!) { register(input: $i) { accessToken } }', { i: { email: 1 } }, 'BAD_USER_INPUT'],
    ];
    for (const [what, query, variables, code] of cases) {
      const r = await gql(server.graphql, query, { variables });
      assert.equal(r.status, 400, what);
      assert.match(r.headers.get('content-type') ?? '', /application\/graphql-response\+json/, what);
      assert.equal('data' in (r.body ?? {}), false, `${what}: no data entry`);
      assert.ok(codes(r).length >= 1 && codes(r).every((c) => c === code), `${what}: ${codes(r)}`);
      // The legacy media type keeps 200.
      const legacy = await gql(server.graphql, query, { variables, accept: 'application/json' });
      assert.equal(legacy.status, 200, `${what} with application/json`);
      assert.ok(codes(legacy).length >= 1 && codes(legacy).every((c) => c === code), `${what} with application/json`);
    }
  });
});

describe('GRAPHIQL=false', () => {
  let server;
  before(async () => { server = await startAuthql({ env: { GRAPHIQL: 'false' } }); });
  after(async () => { await server?.stop(); });

  it('serves no page and no GraphiQL files', async () => {
    for (const path of ['/', '/graphiql/graphiql.min.js']) {
      const res = await fetch(`${server.url}${path}`, { signal: AbortSignal.timeout(10000) });
      assert.equal(res.status, 404, path);
      await res.arrayBuffer();
    }
  });
});
