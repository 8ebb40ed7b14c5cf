// authql as an Apollo Federation 2 subgraph behind @apollo/gateway: the gateway composes authql
// (FEDERATION=true) and a small @apollo/subgraph "notes" service that extends User with `notes`
// and checks every request through authql's /auth/verify (federation/notes-subgraph.mjs), and
// forwards the client's Authorization header to both (federation/gateway.mjs). The story:
// register, `{ me { email notes { text } } }` works, revokeTokens, and on the next request the
// same query is refused by authql and the token by the notes subgraph. Then codegen against the
// gateway's composed schema. The README's "Apollo Federation" blocks are these fixtures, run as
// written (the Router's YAML is checked for its shape: the Router is not an npm package).
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { buildClientSchema, getIntrospectionQuery, printSchema } from 'graphql';
import YAML from 'yaml'; // a dependency of @graphql-codegen/cli
import { AUTHQL_BIN, startAuthql } from '../lib/authql-server.mjs';

const run = promisify(execFile);
const clients = fileURLToPath(new URL('..', import.meta.url));
const repo = join(clients, '..');
// Not under test/: `node --test test/` would run them as test files.
const fixtures = join(clients, 'federation');
const bin = (name) => join(clients, 'node_modules', '.bin', name);

const SUPERGRAPH_QUERY = '{ me { email notes { text } } }';
const HANDLED = ['federation.sh', 'router.yaml', 'gateway.mjs', 'notes-subgraph.mjs'];

/** The fenced blocks of the README's "Apollo Federation" section: { language, file, code }. */
async function readmeBlocks() {
  const readme = await readFile(join(repo, 'README.md'), 'utf8');
  const heading = /^#{2,3} Apollo Federation\n/m.exec(readme);
  assert.ok(heading, 'the README has the "Apollo Federation" section');
  let section = readme.slice(heading.index + heading[0].length);
  const next = section.search(/\n#{2,3} /);
  if (next !== -1) section = section.slice(0, next);
  return [...section.matchAll(/```(\w*)([^\n]*)\n([\s\S]*?)```/g)].map(([, language, info, code]) => ({
    language,
    file: /file=(\S+)/.exec(info)?.[1] ?? null,
    code,
  }));
}

/** Runs a fixture with `node` and `env`; resolves with its URL once it prints "ready at <url>". */
async function startNode(file, env) {
  const child = spawn(process.execPath, [join(fixtures, file)], {
    cwd: clients,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${file} did not start:\n${output}`)), 30000);
    const read = (data) => {
      output += data;
      const ready = /ready at (http:\/\/\S+?)\/?\n/.exec(output);
      if (ready) {
        clearTimeout(timer);
        resolve(ready[1]);
      }
    };
    child.stdout.on('data', read);
    child.stderr.on('data', read);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${file} exited (${code}):\n${output}`));
    });
  });
  child.removeAllListeners('exit');
  return {
    url,
    logs: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function graphql(url, query, { token, variables } = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  return { status: response.status, body: await response.json() };
}

const codes = (body) => (body.errors ?? []).map((e) => e.extensions?.code);
const ENTITIES = 'query($r: [_Any!]!) { _entities(representations: $r) { ... on User { notes { text } } } }';

describe('authql as a Federation 2 subgraph behind @apollo/gateway', () => {
  let authql;
  let notes;
  let gateway;
  let blocks;
  const dirs = [];
  const email = `fed-${randomUUID()}@example.com`;
  let account; // { accessToken, sessionId, userId }

  before(async () => {
    blocks = await readmeBlocks();
    const serve = blocks.find((b) => b.file === 'federation.sh')?.code.split('\n')[0] ?? '';
    // The README's first line says how authql is started as a subgraph: that environment.
    const started = /^((?:\w+=\S+ )+)authql$/.exec(serve);
    assert.ok(started, `federation.sh starts authql with settings: ${serve}`);
    const env = Object.fromEntries(started[1].trim().split(' ').map((pair) => pair.split('=')));
    assert.equal(env.FEDERATION, 'true');
    authql = await startAuthql({ env });
    notes = await startNode('notes-subgraph.mjs', { AUTHQL_URL: authql.url, PORT: '0' });
    gateway = await startNode('gateway.mjs', { AUTHQL_URL: authql.url, NOTES_URL: notes.url, PORT: '0' });
  });
  after(async () => {
    await gateway?.stop();
    await notes?.stop();
    await authql?.stop();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('register through the gateway (a mutation of authql)', async () => {
    const { body } = await graphql(gateway.url, `mutation($input: RegisterInput!) {
      register(input: $input) { accessToken session { id } user { id email } } }`,
    { variables: { input: { email, password: 'correct horse battery staple' } } });
    assert.equal(body.errors, undefined, JSON.stringify(body));
    const { accessToken, session, user } = body.data.register;
    account = { accessToken, sessionId: session.id, userId: user.id };
  });

  it('{ me { email notes { text } } } joins both subgraphs with the token', async () => {
    const { body } = await graphql(gateway.url, SUPERGRAPH_QUERY, { token: account.accessToken });
    assert.equal(body.errors, undefined, JSON.stringify(body));
    assert.deepEqual(body.data, { me: { email, notes: [{ text: `Welcome, ${email}` }] } });
  });

  it('without a token both are refused: nothing of me or notes comes back', async () => {
    const { body } = await graphql(gateway.url, SUPERGRAPH_QUERY);
    assert.deepEqual(codes(body), ['UNAUTHENTICATED']);
    assert.equal(body.data, null);
    const direct = await graphql(notes.url, ENTITIES, { variables: { r: [{ __typename: 'User', id: account.userId }] } });
    assert.deepEqual(codes(direct.body), ['UNAUTHENTICATED']);
    assert.equal(direct.body.data, undefined);
  });

  it("each subgraph keeps _entities to the caller's own User", async () => {
    const other = { __typename: 'User', id: randomUUID() };
    const atNotes = await graphql(notes.url, ENTITIES, { token: account.accessToken, variables: { r: [other] } });
    assert.deepEqual(codes(atNotes.body), ['FORBIDDEN']);
    const atAuthql = await graphql(authql.graphql, 'query($r: [_Any!]!) { _entities(representations: $r) { ... on User { email } } }',
      { token: account.accessToken, variables: { r: [other] } });
    assert.deepEqual(codes(atAuthql.body), ['FORBIDDEN']);
    assert.equal(atAuthql.body.data, null);
    const own = await graphql(notes.url, ENTITIES,
      { token: account.accessToken, variables: { r: [{ __typename: 'User', id: account.userId }] } });
    assert.deepEqual(own.body.data, { _entities: [{ notes: [{ text: `Welcome, ${email}` }] }] });
  });

  it('after revokeTokens, the next request is refused by both subgraphs', async () => {
    const revoked = await graphql(gateway.url, `mutation($input: RevokeTokensInput!) {
      revokeTokens(input: $input) { revokedCount } }`,
    { token: account.accessToken, variables: { input: { sessionIds: [account.sessionId] } } });
    assert.equal(revoked.body.errors, undefined, JSON.stringify(revoked.body));
    assert.equal(revoked.body.data.revokeTokens.revokedCount, 1);

    // authql refuses `me`; with no User the gateway has nothing to ask the notes subgraph for.
    const { body } = await graphql(gateway.url, SUPERGRAPH_QUERY, { token: account.accessToken });
    assert.deepEqual(codes(body), ['UNAUTHENTICATED'], JSON.stringify(body));
    assert.equal(body.errors[0].extensions.reason, 'REVOKED');
    assert.equal(body.errors[0].extensions.serviceName, 'authql');
    assert.equal(body.data, null);
    assert.ok(!JSON.stringify(body).includes(email), 'no data of the user leaks');

    // The notes subgraph refuses the same token on its own: the fetch the gateway made for the
    // notes a moment ago, with the revoked token, is UNAUTHENTICATED (authql's /auth/verify 401).
    const direct = await graphql(notes.url, ENTITIES,
      { token: account.accessToken, variables: { r: [{ __typename: 'User', id: account.userId }] } });
    assert.equal(direct.status, 401);
    assert.deepEqual(codes(direct.body), ['UNAUTHENTICATED']);
    assert.equal(direct.body.data, undefined);
  });

  it('codegen against the supergraph: the query types notes, and tsc accepts their use', async () => {
    const out = await mkdtemp(join(tmpdir(), 'authql-supergraph-'));
    dirs.push(out);
    const { body } = await graphql(gateway.url, getIntrospectionQuery());
    assert.equal(body.errors, undefined);
    const sdl = printSchema(buildClientSchema(body.data));
    assert.match(sdl, /type User \{[^}]*\n {2}notes: \[Note!\]!/);
    await writeFile(join(out, 'supergraph.graphql'), sdl);
    await writeFile(join(out, 'operations.graphql'), `query MeWithNotes ${SUPERGRAPH_QUERY}\n`);
    await writeFile(join(out, 'codegen.json'), JSON.stringify({
      overwrite: true,
      schema: join(out, 'supergraph.graphql'),
      documents: [join(out, 'operations.graphql')],
      generates: {
        [join(out, 'graphql.ts')]: {
          plugins: ['typescript-operations'],
          config: {
            scalars: { DateTime: 'string', JSON: 'unknown' },
            strictScalars: true, useTypeImports: true, enumsAsTypes: true, avoidOptionals: { field: true },
          },
        },
      },
    }));
    try {
      await run(bin('graphql-codegen'), ['--config', join(out, 'codegen.json')], { cwd: clients, timeout: 90000 });
    } catch (e) {
      assert.fail(`graphql-codegen failed:\n${e.stdout}\n${e.stderr}`);
    }
    const generated = await readFile(join(out, 'graphql.ts'), 'utf8');
    assert.match(generated, /export type MeWithNotesQuery = \{ me: \{ email: string, notes: Array<\{ text: string \}> \} \};/);
    await writeFile(join(out, 'use.ts'), [
      "import type { MeWithNotesQuery } from './graphql.js';",
      'export const texts = (data: MeWithNotesQuery): string[] => data.me.notes.map((note) => note.text);',
      '',
    ].join('\n'));
    await writeFile(join(out, 'package.json'), '{"type": "module"}\n');
    await writeFile(join(out, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext',
        verbatimModuleSyntax: true, noUnusedLocals: true, types: [],
      },
      files: ['graphql.ts', 'use.ts'],
    }));
    try {
      await run(bin('tsc'), ['-p', join(out, 'tsconfig.json')], { cwd: clients, timeout: 90000 });
    } catch (e) {
      assert.fail(`tsc --noEmit failed:\n${e.stdout}\n${e.stderr}`);
    }
  });

  describe("the README's Apollo Federation blocks", () => {
    const block = (file) => {
      const found = blocks.find((b) => b.file === file);
      assert.ok(found, `the README has the block ${file}`);
      return found.code;
    };

    it('has no block without a check here', () => {
      assert.deepEqual(blocks.map((b) => b.file ?? `(a ${b.language || 'plain'} block without file=)`).sort(), [...HANDLED].sort());
    });

    it('gateway.mjs and notes-subgraph.mjs are the fixtures the story ran', async () => {
      for (const file of ['gateway.mjs', 'notes-subgraph.mjs']) {
        assert.equal(block(file), await readFile(join(fixtures, file), 'utf8'), `${file} differs from clients/federation/${file}`);
      }
    });

    it('federation.sh: print-schema --federation prints what _service { sdl } answers', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'authql-readme-federation-'));
      dirs.push(dir);
      // `authql` on the PATH is the binary under test, whatever its file is called.
      await mkdir(join(dir, 'bin'));
      await symlink(AUTHQL_BIN, join(dir, 'bin', 'authql'));
      const [, ...rest] = block('federation.sh').trimEnd().split('\n');
      await run('bash', ['-euo', 'pipefail', '-c', rest.join('\n')], {
        cwd: dir,
        env: { PATH: `${join(dir, 'bin')}:${process.env.PATH}` },
        timeout: 30000,
      });
      const printed = await readFile(join(dir, 'authql.subgraph.graphql'), 'utf8');
      const { body } = await graphql(authql.graphql, '{ _service { sdl } }');
      assert.equal(printed, body.data._service.sdl);
      assert.match(printed, /type User @key\(fields: "id"\)/);
    });

    it("router.yaml propagates the client's authorization header to all subgraphs", () => {
      assert.deepEqual(YAML.parse(block('router.yaml')), {
        headers: { all: { request: [{ propagate: { named: 'authorization' } }] } },
      });
    });
  });
});
