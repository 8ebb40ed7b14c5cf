// GraphQL Code Generator over the schema and examples/operations.graphql, then `tsc --noEmit`
// over the generated types and a file that uses them. Fails if either step fails.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AUTHQL_BIN } from '../lib/authql-server.mjs';

const run = promisify(execFile);
const clients = fileURLToPath(new URL('..', import.meta.url));
const bin = (name) => join(clients, 'node_modules', '.bin', name);
const dirs = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function codegenAndTsc(schemaFile) {
  const out = await mkdtemp(join(tmpdir(), 'authql-codegen-'));
  dirs.push(out);
  const env = { ...process.env, CODEGEN_OUT: out, ...(schemaFile ? { AUTHQL_SCHEMA: schemaFile } : {}) };
  try {
    await run(bin('graphql-codegen'), ['--config', 'codegen.ts'], { cwd: clients, env, timeout: 90000 });
  } catch (e) {
    assert.fail(`graphql-codegen failed:\n${e.stdout}\n${e.stderr}`);
  }
  const generated = await readFile(join(out, 'graphql.ts'), 'utf8');
  for (const name of ['RegisterMutation', 'LoginMutation', 'RefreshMutation', 'LogoutMutation', 'RevokeTokensMutation',
    'RevokeOtherSessionsMutation', 'ChangePasswordMutation', 'MeQuery', 'MySessionsQuery', 'SessionEventsSubscription',
    'RequestPasswordResetMutation', 'ResetPasswordMutation', 'SendVerificationEmailMutation', 'VerifyEmailMutation',
    'RequestEmailChangeMutation', 'OidcProvidersQuery', 'BeginOidcLoginMutation', 'CompleteOidcLoginMutation',
    'UnlinkIdentityMutation']) {
    assert.match(generated, new RegExp(`export type ${name} = `), `${name} is generated`);
  }
  await copyFile(join(clients, 'test', 'fixtures', 'typed-usage.ts'), join(out, 'typed-usage.ts'));
  await writeFile(join(out, 'package.json'), '{"type": "module"}\n');
  await writeFile(join(out, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext',
      verbatimModuleSyntax: true, noUnusedLocals: true, types: [],
    },
    files: ['graphql.ts', 'typed-usage.ts'],
  }));
  try {
    await run(bin('tsc'), ['-p', join(out, 'tsconfig.json')], { cwd: clients, timeout: 90000 });
  } catch (e) {
    assert.fail(`tsc --noEmit failed:\n${e.stdout}\n${e.stderr}`);
  }
}

test('codegen from ../schema.graphql (or AUTHQL_SCHEMA) and examples/operations.graphql type-checks', async () => {
  await codegenAndTsc(process.env.AUTHQL_SCHEMA);
});

test('codegen from the schema the authql binary prints type-checks', async () => {
  const out = await mkdtemp(join(tmpdir(), 'authql-schema-'));
  dirs.push(out);
  const { stdout } = await run(AUTHQL_BIN, ['print-schema'], { timeout: 30000, env: { PATH: process.env.PATH } });
  assert.match(stdout, /type Mutation/);
  await writeFile(join(out, 'schema.graphql'), stdout);
  await codegenAndTsc(join(out, 'schema.graphql'));
});
