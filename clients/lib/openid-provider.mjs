// A real OpenID Provider for the "Sign in with OpenID Connect" tests: node-oidc-provider 9
// (the certified one), on http://127.0.0.1, with its own one-step sign-in page and a few
// /test/ control endpoints. The Rust tests and the Chromium test start it as a child process.
//
//   node clients/lib/openid-provider.mjs
//     OP_PORT      port to bind on 127.0.0.1 (default 0: any free port)
//     OP_CLIENTS   JSON array of client metadata, e.g. [{"client_id":"authql","client_secret":"…",
//                  "redirect_uris":["http://127.0.0.1:4000/auth/oidc/callback"]}]
//                  (authorization_code + code, client_secret_basic; client_secret_post works too)
//     OP_ACCOUNTS  JSON array [{"sub":"alice","email":"…","email_verified":true,"name":"Alice"}]
//   When ready it prints one line to stdout, {"issuer":"http://127.0.0.1:PORT","port":PORT},
//   and runs until SIGTERM/SIGINT (exit 0). Logs go to stderr.
//
// The provider: scopes openid email profile, claims email/email_verified/name in the ID token
// itself (conformIdTokenClaims: false), PKCE S256 required for every client, RS256 ID tokens.
// Sign-in: GET /interaction/:uid is a form (input "login", label "Account", button "Sign in");
// POST /interaction/:uid/login with login=<sub or email> logs in AND grants the requested scopes,
// then 303 → /auth/:uid (resume) → redirect_uri?code&state. No consent page.
// Control (JSON in and out, 400 on bad input):
//   POST /test/accounts     {"sub",...}            add or replace an account → {"sub"}
//   POST /test/clients      {client metadata}      add or replace a client   → {"client_id"}
//   POST /test/rotate-keys                         new RSA key signs from now on → {"kid"}
//   POST /test/tamper       {"claims":{…},"sign":"foreign-key"|"none"}: the next token response's
//                           id_token is rewritten (claims merged; re-signed with the current key
//                           unless "sign" says otherwise); {} clears it        → {"ok":true}
//   GET  /test/token-requests  [{grant_type, had_code_verifier, client_auth: basic|post|none}]
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import Provider from 'oidc-provider';

// oidc-provider prints notices with console.info: keep stdout for the ready line only.
console.log = console.info = (...args) => console.error(...args);

// State that outlives a Provider instance (a key rotation builds a new one).
const accounts = new Map(); // sub → { sub, email, email_verified, name }
const store = new Map(); // adapter storage: "Model:id" → { payload, exp }
const signingKeys = []; // newest first: { kid, jwk, privateKey }
const tokenRequests = [];
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
let tamper = null; // { claims, sign } for the next token response
let foreignKey = null;
let issuer;
let op; // the current Provider
let opHandler;

// ---- storage adapter (all models share `store`, so a new Provider sees the same state) ----
const grantable = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest']);
class Adapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    const exp = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(this.key(id), { payload, exp });
    if (this.model === 'Session') store.set(`SessionUid:${payload.uid}`, { payload: id, exp });
  }
  async find(id) {
    const entry = store.get(this.key(id));
    if (entry && entry.exp <= Date.now()) store.delete(this.key(id));
    else return entry?.payload;
    return undefined;
  }
  async findByUid(uid) {
    const entry = store.get(`SessionUid:${uid}`);
    return entry ? this.find(entry.payload) : undefined;
  }
  async findByUserCode() { return undefined; }
  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const [key, { payload }] of store) {
      if (grantable.has(key.slice(0, key.indexOf(':'))) && payload?.grantId === grantId) store.delete(key);
    }
  }
}
const putClient = (metadata) => store.set(`Client:${metadata.client_id}`,
  { payload: structuredClone(metadata), exp: Infinity });

// ---- keys and JWTs ----
function newRsaKey(prefix) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `${prefix}-${crypto.randomBytes(8).toString('base64url')}`;
  return { kid, privateKey, jwk: { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}
const b64json = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
function signJwt(header, payload, privateKey) {
  const input = `${b64json(header)}.${b64json(payload)}`;
  if (!privateKey) return `${input}.`;
  return `${input}.${crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}
function rewriteIdToken(idToken, { claims = {}, sign }) {
  const [h, p] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = { ...JSON.parse(Buffer.from(p, 'base64url')), ...claims };
  if (sign === 'none') return signJwt({ alg: 'none' }, payload);
  let key = signingKeys[0];
  if (sign === 'foreign-key') key = foreignKey ||= newRsaKey('foreign');
  return signJwt({ ...header, alg: 'RS256', kid: key.kid }, payload, key.privateKey);
}

// ---- the Provider ----
async function findAccount(_ctx, sub) {
  if (!accounts.has(sub)) return undefined;
  return {
    accountId: sub,
    async claims() {
      const { email, email_verified, name } = accounts.get(sub) ?? {};
      return { sub, email, email_verified, name };
    },
  };
}

function buildProvider() {
  const provider = new Provider(issuer, {
    adapter: Adapter,
    findAccount,
    jwks: { keys: signingKeys.map(({ jwk }) => structuredClone(jwk)) }, // the first one signs
    scopes: ['openid', 'email', 'profile'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    conformIdTokenClaims: false, // scope claims go into the ID token, not only userinfo
    pkce: { required: () => true }, // and S256 is the only method oidc-provider 9 knows
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: cookieKeys }, // same keys in every instance: cookies stay valid
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error', err));
  // Record each token request; rewrite the next id_token if /test/tamper asked for it.
  provider.use(async (ctx, next) => {
    try {
      await next();
    } finally {
      if (ctx.oidc?.route === 'token') {
        const body = ctx.oidc.body ?? {};
        const basic = /^basic /i.test(ctx.headers.authorization ?? '');
        tokenRequests.push({
          grant_type: body.grant_type ?? null,
          had_code_verifier: typeof body.code_verifier === 'string' && body.code_verifier !== '',
          client_auth: basic ? 'basic' : body.client_secret ? 'post' : 'none',
        });
        if (tamper && ctx.status === 200 && typeof ctx.body?.id_token === 'string') {
          const t = tamper;
          tamper = null;
          ctx.body = { ...ctx.body, id_token: rewriteIdToken(ctx.body.id_token, t) };
        }
      }
    }
  });
  op = provider;
  opHandler = provider.callback();
}

// ---- HTTP helpers ----
class BadRequest extends Error {}
async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new BadRequest('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
async function readJson(req) {
  const text = await readBody(req);
  let value;
  try { value = text.trim() === '' ? {} : JSON.parse(text); } catch { throw new BadRequest('body is not JSON'); }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new BadRequest('body must be a JSON object');
  return value;
}
function send(res, status, body, type = 'application/json') {
  const text = type === 'application/json' ? JSON.stringify(body) : body;
  res.writeHead(status, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' });
  res.end(text);
}
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const page = (title, body) => `<!doctype html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head><body>${body}</body></html>`;

// ---- validation of control input ----
const optional = (value, type) => value === undefined || typeof value === type;
function checkAccount(a) {
  if (typeof a?.sub !== 'string' || a.sub === '') throw new BadRequest('account.sub must be a non-empty string');
  if (!optional(a.email, 'string') || !optional(a.name, 'string') || !optional(a.email_verified, 'boolean')) {
    throw new BadRequest('account: email and name must be strings, email_verified a boolean');
  }
  return { sub: a.sub, email: a.email, email_verified: a.email_verified, name: a.name };
}
async function checkClient(metadata) {
  if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) throw new BadRequest('client metadata must be an object');
  if (typeof metadata.client_id !== 'string' || metadata.client_id === '') throw new BadRequest('client_id must be a non-empty string');
  try {
    await op.Client.validate(structuredClone(metadata));
  } catch (err) {
    throw new BadRequest(`invalid client metadata: ${err.error_description ?? err.message}`);
  }
  return metadata;
}

// ---- interactions: one form, login + grant in one step ----
async function finishWithGrant(req, res, interaction, accountId, login) {
  const { params, prompt } = interaction;
  let grant;
  if (!login && interaction.grantId) grant = await op.Grant.find(interaction.grantId);
  grant ||= new op.Grant({ accountId, clientId: params.client_id });
  if (typeof params.scope === 'string') grant.addOIDCScope(params.scope);
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const result = { consent: { grantId } };
  if (login) result.login = { accountId };
  await op.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await op.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, page('Error', `<p>${escapeHtml(err.error_description ?? err.message)}</p>`), 'text/html');
  }
  if (details.uid !== uid) return send(res, 400, page('Error', '<p>interaction mismatch</p>'), 'text/html');
  if (req.method === 'GET' && action === undefined) {
    if (details.prompt.name === 'consent' && details.session?.accountId) {
      return finishWithGrant(req, res, details, details.session.accountId, false);
    }
    const form = `<h1>Sign in</h1><form method="post" action="/interaction/${escapeHtml(uid)}/login">`
      + '<label>Account <input name="login" autocomplete="username" autofocus></label> '
      + '<button type="submit">Sign in</button></form>';
    return send(res, 200, page('Sign in', form), 'text/html');
  }
  if (req.method === 'POST' && action === 'login') {
    const login = new URLSearchParams(await readBody(req)).get('login')?.trim() ?? '';
    const account = accounts.get(login) ?? [...accounts.values()].find((a) => a.email === login);
    if (!account) return send(res, 400, page('Sign in', '<p>unknown account</p>'), 'text/html');
    return finishWithGrant(req, res, details, account.sub, true);
  }
  return send(res, 404, page('Not found', '<p>not found</p>'), 'text/html');
}

// ---- control endpoints ----
async function control(req, res, path) {
  const route = `${req.method} ${path}`;
  if (route === 'GET /test/token-requests') return send(res, 200, tokenRequests);
  if (req.method !== 'POST') return send(res, 404, { error: `no route ${route}` });
  const body = await readJson(req);
  switch (path) {
    case '/test/accounts': {
      const account = checkAccount(body);
      accounts.set(account.sub, account);
      return send(res, 200, { sub: account.sub });
    }
    case '/test/clients': {
      putClient(await checkClient(body));
      return send(res, 200, { client_id: body.client_id });
    }
    case '/test/rotate-keys': {
      signingKeys.unshift(newRsaKey('key'));
      buildProvider();
      console.error(`openid-provider: now signing with ${signingKeys[0].kid}`);
      return send(res, 200, { kid: signingKeys[0].kid });
    }
    case '/test/tamper': {
      const { claims, sign, ...rest } = body;
      if (Object.keys(rest).length) throw new BadRequest(`unknown members: ${Object.keys(rest).join(', ')}`);
      if (claims !== undefined && (claims === null || typeof claims !== 'object' || Array.isArray(claims))) {
        throw new BadRequest('claims must be an object');
      }
      if (sign !== undefined && sign !== 'foreign-key' && sign !== 'none') throw new BadRequest('sign must be "foreign-key" or "none"');
      tamper = claims === undefined && sign === undefined ? null : { claims, sign };
      return send(res, 200, { ok: true });
    }
    default:
      return send(res, 404, { error: `no route ${route}` });
  }
}

async function handle(req, res) {
  if (!op) return send(res, 503, { error: "starting" });
  const { pathname } = new URL(req.url, issuer);
  try {
    if (pathname.startsWith('/test/')) return await control(req, res, pathname);
    const m = /^\/interaction\/([^/]+)(?:\/(login))?\/?$/.exec(pathname);
    if (m) return await interaction(req, res, m[1], m[2]);
    return opHandler(req, res);
  } catch (err) {
    if (res.headersSent) return res.destroy();
    if (err instanceof BadRequest) return send(res, 400, { error: err.message });
    console.error('openid-provider:', err);
    return send(res, 500, { error: String(err?.message ?? err) });
  }
}

// ---- start ----
function parseEnvArray(name) {
  if (!process.env[name]) return [];
  const value = JSON.parse(process.env[name]);
  if (!Array.isArray(value)) throw new Error(`${name} must be a JSON array`);
  return value;
}

const server = http.createServer((req, res) => { handle(req, res); });
try {
  const port = Number(process.env.OP_PORT ?? 0);
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  issuer = `http://127.0.0.1:${server.address().port}`;
  signingKeys.push(newRsaKey('key'));
  buildProvider();
  for (const a of parseEnvArray('OP_ACCOUNTS')) { const account = checkAccount(a); accounts.set(account.sub, account); }
  for (const c of parseEnvArray('OP_CLIENTS')) putClient(await checkClient(c));
} catch (err) {
  console.error('openid-provider failed to start:', err.message);
  process.exit(1);
}
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => { server.close(); process.exit(0); });
}
process.stdout.write(`${JSON.stringify({ issuer, port: server.address().port })}\n`);
