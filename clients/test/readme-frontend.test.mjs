// Every code block of the README's "Using authql from a frontend", run as written (authql's
// address 127.0.0.1:8000 becomes the test server's): the install commands pack and install
// @authql/client into a fresh app beside a link to this clone; vite.config.js and src/authql.js
// run under Vite's dev server in Chromium against authql in cookie mode through the proxy;
// node-app.mjs runs in Node; typed.ts is compiled by tsc and run; the Set-Cookie line is
// compared with authql's own; the sessionEvents document is subscribed over graphql-ws.
// A block this file does not know fails the test: a snippet added to the section needs a run.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort, startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { subscribeSessionEvents, whenLive } from '../lib/session-events.mjs';

const run = promisify(execFile);
const clients = fileURLToPath(new URL('..', import.meta.url));
const repo = join(clients, '..');
const tsc = join(clients, 'node_modules', '.bin', 'tsc');

const HEADING = '## Using authql from a frontend';
const HANDLED = ['install.sh', 'vite.config.js', 'src/authql.js', 'node-app.mjs', 'typed.ts', 'set-cookie', 'session-events.graphql'];

/** The fenced blocks of the section: { language, file, code }. */
async function readmeBlocks() {
  const readme = await readFile(join(repo, 'README.md'), 'utf8');
  const start = readme.indexOf(HEADING);
  assert.ok(start >= 0, 'the README has the section');
  let section = readme.slice(start + HEADING.length);
  section = section.slice(0, section.search(/\n## /) === -1 ? section.length : section.search(/\n## /));
  return [...section.matchAll(/```(\w*)([^\n]*)\n([\s\S]*?)```/g)].map(([, language, info, code]) => ({
    language,
    file: /file=(\S+)/.exec(info)?.[1] ?? null,
    code,
  }));
}

const sameAddress = (code, server) => code.replaceAll('127.0.0.1:8000', `127.0.0.1:${server.port}`);

describe("the README's frontend section, block by block", () => {
  let dir;
  let blocks;
  let app;
  const started = [];
  const block = (file) => {
    const found = blocks.find((b) => b.file === file);
    assert.ok(found, `the README has the block ${file}`);
    return found.code;
  };
  const server = async (env = {}) => {
    const s = await startAuthql({ env });
    started.push(s);
    return s;
  };

  before(async () => {
    blocks = await readmeBlocks();
    dir = await mkdtemp(join(tmpdir(), 'authql-readme-frontend-'));
    await symlink(repo, join(dir, 'authql'));
    app = join(dir, 'my-app');
    await mkdir(app);
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'my-app', private: true, type: 'module' }));
  });
  after(async () => {
    for (const s of started) await s.stop();
    await rm(join(clients, 'authql-client-0.1.0.tgz'), { force: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('has no block without a run here', () => {
    assert.deepEqual(blocks.map((b) => b.file ?? `(a ${b.language || 'plain'} block without file=)`).sort(), [...HANDLED].sort());
  });

  it('install.sh packs the package and installs it with its peers into a fresh app', async () => {
    try {
      await run('bash', ['-euo', 'pipefail', '-c', block('install.sh')], { cwd: dir, timeout: 300000 });
    } catch (e) {
      assert.fail(`install.sh failed:\n${e.stdout}\n${e.stderr}`);
    }
    const installed = JSON.parse(await readFile(join(app, 'node_modules', '@authql', 'client', 'package.json'), 'utf8'));
    assert.equal(installed.name, '@authql/client');
  });

  it('node-app.mjs runs in Node: registers, sees its events, signs out, and exits', async () => {
    const s = await server();
    await writeFile(join(app, 'node-app.mjs'), sameAddress(block('node-app.mjs'), s));
    const { stdout } = await run('node', ['node-app.mjs'], { cwd: app, timeout: 30000 });
    const lines = stdout.trim().split('\n');
    assert.equal(lines[0], 'true', 'me is the registered user');
    assert.deepEqual(lines.slice(1), ['CREATED false', 'REVOKED false'], 'the phone\'s sign-in and sign-out, as events of another session');
  });

  it('typed.ts compiles under strict tsc and runs', async () => {
    const s = await server();
    await writeFile(join(app, 'typed.ts'), sameAddress(block('typed.ts'), s));
    await writeFile(join(app, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        strict: true, target: 'es2022', lib: ['es2022', 'dom'], module: 'nodenext', moduleResolution: 'nodenext',
        verbatimModuleSyntax: true, skipLibCheck: true, types: [], outDir: 'out',
      },
      files: ['typed.ts'],
    }));
    try {
      await run(tsc, ['-p', 'tsconfig.json'], { cwd: app, timeout: 120000 });
    } catch (e) {
      assert.fail(`tsc refused typed.ts:\n${e.stdout}${e.stderr}`);
    }
    await writeFile(join(app, 'out', 'package.json'), '{"type":"module"}');
    const { stdout } = await run('node', ['out/typed.js'], { cwd: app, timeout: 30000 });
    assert.equal(stdout.trim(), 'true false true', 'INVALID_CREDENTIALS, unverified, the one session is current');
  });

  it("the Set-Cookie line is authql's", async () => {
    const s = await server({ REFRESH_TOKEN_COOKIE: 'true' });
    const response = await fetch(s.graphql, {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin: s.url },
      body: JSON.stringify({
        query: 'mutation ($input: RegisterInput!) { register(input: $input) { accessToken } }',
        variables: { input: { email: `c-${Date.now()}@example.com`, password: 'correct horse battery staple' } },
      }),
    });
    const [cookie] = response.headers.getSetCookie();
    const template = block('set-cookie').trim();
    const pattern = template
      .split(/<[^>]+>/)
      .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
      .join('[^;]+');
    assert.match(`Set-Cookie: ${cookie}`, new RegExp(`^${pattern}$`));
  });

  it('session-events.graphql is answered over graphql-ws with each field', async () => {
    const s = await server();
    const login = async () => {
      const answer = await fetch(s.graphql, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          query: 'mutation ($input: LoginInput!) { login(input: $input) { session { id } } }',
          variables: { input: { emailOrUsername: email, password: 'correct horse battery staple' } },
        }),
      }).then((r) => r.json());
      return answer.data.login.session.id;
    };
    const email = `e-${Date.now()}@example.com`;
    const registered = await fetch(s.graphql, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        query: 'mutation ($input: RegisterInput!) { register(input: $input) { accessToken } }',
        variables: { input: { email, password: 'correct horse battery staple' } },
      }),
    }).then((r) => r.json());
    const sub = subscribeSessionEvents(s.graphql.replace(/^http/, 'ws'), registered.data.register.accessToken, {
      query: block('session-events.graphql'),
    });
    try {
      await whenLive(sub, login);
      const event = sub.events()[0];
      assert.deepEqual(Object.keys(event).sort(), ['at', 'current', 'sessionId', 'type']);
    } finally {
      await sub.stop();
    }
  });

  describe('vite.config.js and src/authql.js under Vite in Chromium, cookie mode through the proxy', { skip: chromiumMissing }, () => {
    let vite;
    let browser;
    let viteUrl;
    let s;
    before(async () => {
      s = await server({ REFRESH_TOKEN_COOKIE: 'true', JWT_ACCESS_TOKEN_EXPIRES: '2', JWT_LEEWAY_SECONDS: '0' });
      await writeFile(join(app, 'vite.config.js'), sameAddress(block('vite.config.js'), s));
      await mkdir(join(app, 'src'), { recursive: true });
      await writeFile(join(app, 'src', 'authql.js'), sameAddress(block('src/authql.js'), s));
      // The test's own page: it only hands the README's module to the test.
      await writeFile(join(app, 'index.html'), '<!doctype html><title>my app</title><script type="module" src="/src/page.js"></script>\n');
      await writeFile(join(app, 'src', 'page.js'), "import * as app from './authql.js';\nwindow.app = app;\ndocument.title = 'ready';\n");
      const port = await freePort('127.0.0.1');
      viteUrl = `http://localhost:${port}`;
      vite = spawn('node', [join(app, 'node_modules', 'vite', 'bin', 'vite.js'), '--port', String(port), '--strictPort', '--host', 'localhost'], {
        cwd: app,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      vite.stdout.on('data', (d) => { output += d; });
      vite.stderr.on('data', (d) => { output += d; });
      const deadline = Date.now() + 30000;
      for (;;) {
        const up = await fetch(`${viteUrl}/`).then((r) => r.ok, () => false);
        if (up) break;
        assert.ok(Date.now() < deadline, `vite did not start:\n${output}`);
        await sleep(200);
      }
      browser = await launchChromium();
    });
    after(async () => {
      await browser?.close();
      vite?.kill('SIGTERM');
    });

    it('signs up, renews through the cookie, shares the session with a second tab, and both tabs hear a sign-out', async () => {
      const context = await browser.newContext();
      const blocked = await loopbackOnly(context);
      const refreshes = [];
      context.on('request', (r) => {
        if (r.method() === 'POST' && /\brefresh\s*\(/.test(r.postData() ?? '')) refreshes.push(r.url());
      });
      const open = async () => {
        const page = await context.newPage();
        await page.goto(`${viteUrl}/`);
        await page.waitForFunction(() => document.title === 'ready', null, { timeout: 30000 });
        return page;
      };
      const one = await open();
      assert.equal(await one.evaluate(() => window.app.signedIn), false, 'no session before sign-up');
      assert.deepEqual(await one.evaluate(() => window.app.authql.diagnostics), [], 'one site: nothing to warn about');
      const email = `v-${Date.now()}@example.com`;
      await one.evaluate(async (email) => {
        await window.app.ops.register({ input: { email, password: 'correct horse battery staple' } });
      }, email);
      assert.equal(await one.evaluate(async () => (await window.app.ops.me()).email), email);
      const cookies = await context.cookies(viteUrl + '/graphql');
      assert.ok(cookies.some((c) => c.name === '__Secure-authql_refresh' && c.httpOnly), 'the browser kept the cookie');
      const before = refreshes.length;
      await sleep(2200);
      assert.equal(await one.evaluate(async () => (await window.app.ops.me()).email), email, 'me after expiry');
      assert.equal(refreshes.length - before, 1, 'one refresh through the cookie');
      const two = await open();
      assert.equal(await two.evaluate(() => window.app.signedIn), true, 'the second tab has the session');
      assert.equal(refreshes.length - before, 1, 'from the first tab, without a refresh');
      assert.equal(await two.evaluate(async () => (await window.app.ops.me()).email), email);
      await two.evaluate(() => window.app.authql.signOut());
      await one.waitForFunction(() => document.body.dataset.signedOut === 'LOGOUT', null, { timeout: 5000 });
      assert.equal(await two.evaluate(() => document.body.dataset.signedOut), 'LOGOUT');
      assert.deepEqual(blocked, []);
      await context.close();
    });
  });
});

