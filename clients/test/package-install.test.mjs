// `npm pack` of @authql/client, then a fresh app that installs the tarball (with its peers from
// the registry, as a user's app would), type-checks against it (a use that must compile and a
// misuse that must not), and runs it against the authql binary.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startAuthql } from '../lib/authql-server.mjs';

const run = promisify(execFile);
const clients = fileURLToPath(new URL('..', import.meta.url));
const tsc = join(clients, 'node_modules', '.bin', 'tsc');
const peers = JSON.parse(await (await import('node:fs/promises')).readFile(join(clients, 'package.json'), 'utf8')).dependencies;

const TSCONFIG = {
  compilerOptions: {
    strict: true, noEmit: true, target: 'es2022', lib: ['es2022', 'dom'], module: 'nodenext',
    moduleResolution: 'nodenext', verbatimModuleSyntax: true, types: [],
    // As an app's own tsconfig has it (Vite's templates do): Apollo's dependencies' declarations
    // do not all pass nodenext resolution.
    skipLibCheck: true,
  },
};

const USE = `import { ApolloClient, InMemoryCache } from '@apollo/client';
import {
  authqlOperations, createAuthqlLink, errorCodes, LoginDocument,
  type LoginMutation, type MeQuery, type SessionEvent, type SignOutReason,
} from '@authql/client';

const authql = createAuthqlLink({ uri: 'http://127.0.0.1:8000/graphql', mode: 'token', storage: null });
const client = new ApolloClient({ link: authql, cache: new InMemoryCache() });
const ops = authqlOperations(client);

export async function use(): Promise<string> {
  const payload: LoginMutation['login'] = await ops.login({ input: { emailOrUsername: 'ada', password: 'pw' } });
  const me: MeQuery['me'] = await ops.me();
  const sessions = await ops.mySessions({ first: 10 });
  const off = authql.on('signedOut', ({ reason }: { reason: SignOutReason }) => console.log(reason));
  off();
  authql.sessionEvents().subscribe((event: SessionEvent) => console.log(event.type === 'REVOKED', event.current));
  const { data } = await client.mutate({ mutation: LoginDocument, variables: { input: { emailOrUsername: 'a', password: 'b' } } });
  try { await ops.changePassword({ input: { currentPassword: 'a', newPassword: 'b' } }); }
  catch (error) { errorCodes(error).includes('INVALID_CREDENTIALS'); }
  return payload.accessToken + me.email + sessions.map((s) => s.cursor).join() + String(data?.login.session.id);
}
`;

// Each line must be refused by the compiler: wrong variables, a field that does not exist, a wrong mode.
const MISUSES = [
  `await ops.login({ input: { email: 'ada', password: 'pw' } });`,
  `(await ops.me()).password;`,
  `createAuthqlLink({ uri: '/graphql', mode: 'cookies' });`,
  `await ops.changePassword({ input: { currentPassword: 'a' } });`,
];

describe('@authql/client as a user installs it', () => {
  let dir;
  let tarball;
  let server;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'authql-package-'));
  });
  after(async () => {
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('npm pack builds the tarball with the built code, types, README and CHANGELOG only', async () => {
    await run('npm', ['pack', '-w', '@authql/client', '--pack-destination', dir, '--loglevel=error'], { cwd: clients, timeout: 120000 });
    const [name] = (await readdir(dir)).filter((f) => f.endsWith('.tgz'));
    assert.equal(name, 'authql-client-0.1.0.tgz');
    tarball = join(dir, name);
    const { stdout } = await run('tar', ['tzf', tarball]);
    const files = stdout.trim().split('\n').sort();
    for (const f of ['package/package.json', 'package/README.md', 'package/CHANGELOG.md', 'package/dist/index.js',
      'package/dist/index.d.ts', 'package/dist/generated/operations.js', 'package/dist/generated/types.d.ts']) {
      assert.ok(files.includes(f), `${f} is packed`);
    }
    assert.deepEqual(files.filter((f) => !f.startsWith('package/dist/') && !['package/package.json', 'package/README.md', 'package/CHANGELOG.md'].includes(f)), []);
  });

  it('a fresh app installs the tarball and its peers, type-checks a use of it, and refuses misuses', async () => {
    assert.ok(tarball, 'the tarball was packed');
    const app = join(dir, 'app');
    await (await import('node:fs/promises')).mkdir(app);
    await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, type: 'module' }));
    const wanted = ['@apollo/client', 'graphql', 'graphql-ws', 'rxjs'].map((p) => `${p}@${peers[p]}`);
    await run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', tarball, ...wanted], { cwd: app, timeout: 180000 });
    await writeFile(join(app, 'tsconfig.json'), JSON.stringify({ ...TSCONFIG, files: ['use.ts'] }));
    await writeFile(join(app, 'use.ts'), USE);
    try {
      await run(tsc, ['-p', join(app, 'tsconfig.json')], { cwd: app, timeout: 120000 });
    } catch (e) {
      assert.fail(`tsc refused the use:\n${e.stdout}${e.stderr}`);
    }
    for (const [i, line] of MISUSES.entries()) {
      const file = `misuse${i}.ts`;
      const body = USE.replace('  return payload.accessToken', `  ${line}\n  return payload.accessToken`);
      await writeFile(join(app, file), body);
      await writeFile(join(app, `tsconfig.${i}.json`), JSON.stringify({ ...TSCONFIG, files: [file] }));
      const refused = await run(tsc, ['-p', join(app, `tsconfig.${i}.json`)], { cwd: app, timeout: 120000 }).then(() => null, (e) => e.stdout);
      assert.match(refused ?? '', /error TS\d+/, `tsc refuses: ${line}`);
    }
  });

  it('the installed package runs in Node against authql', async () => {
    server = await startAuthql();
    const app = join(dir, 'app');
    await writeFile(join(app, 'run.mjs'), `
import { ApolloClient, InMemoryCache } from '@apollo/client';
import { authqlOperations, createAuthqlLink } from '@authql/client';
const authql = createAuthqlLink({ uri: process.argv[2], storage: null });
const ops = authqlOperations(new ApolloClient({ link: authql, cache: new InMemoryCache() }));
const email = 'fresh-' + Date.now() + '@example.com';
await ops.register({ input: { email, password: 'correct horse battery staple' } });
const me = await ops.me();
console.log(JSON.stringify({ email: me.email, held: Boolean(authql.tokens?.refreshToken), expected: email }));
authql.dispose();
`);
    const { stdout } = await run('node', ['run.mjs', server.graphql], { cwd: app, timeout: 30000 });
    const result = JSON.parse(stdout.trim().split('\n').at(-1));
    assert.equal(result.email, result.expected);
    assert.equal(result.held, true);
  });
});
