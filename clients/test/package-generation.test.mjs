// The typed operations of @authql/client come from the schema, not from a list: every root
// field of schema.graphql has its helper in the built package, and a field added to the schema
// (here a sign-in mutation answering an AuthPayload, as later features add) gets its document,
// types and helper, and is known to issue tokens, at the next generation.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { buildSchema } from 'graphql';
import { authqlOperations, rootFields } from '@authql/client';

const run = promisify(execFile);
const clients = fileURLToPath(new URL('..', import.meta.url));
const schemaText = await readFile(join(clients, '..', 'schema.graphql'), 'utf8');

describe('typed operations generated from the schema', () => {
  const dirs = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('every root field of schema.graphql has a helper, and the token-issuing ones are known', () => {
    const schema = buildSchema(schemaText);
    const fields = [schema.getQueryType(), schema.getMutationType(), schema.getSubscriptionType()]
      .flatMap((type) => Object.keys(type.getFields()));
    const ops = authqlOperations({});
    assert.deepEqual(Object.keys(ops).sort(), [...fields].sort());
    assert.deepEqual(Object.keys(rootFields).sort(), [...fields].sort());
    const issuing = Object.entries(rootFields).filter(([, f]) => f.issuesTokens).map(([name]) => name).sort();
    assert.deepEqual(issuing, ['completeOidcLogin', 'finishPasskeyLogin', 'login', 'refresh', 'register', 'verifyMfa']);
  });

  it('a root field added to the schema gets its document, types and helper at the next generation', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'authql-generate-'));
    dirs.push(dir);
    const extended = schemaText.replace(
      'type Mutation {',
      'input CompleteMagicLinkInput {\n\ttoken: String!\n}\n\ntype Mutation {\n\tcompleteMagicLink(input: CompleteMagicLinkInput!): AuthPayload!',
    );
    await writeFile(join(dir, 'schema.graphql'), extended);
    await run('node', [join(clients, 'authql-client', 'scripts', 'generate.mjs')], {
      cwd: clients,
      env: { ...process.env, AUTHQL_SCHEMA: join(dir, 'schema.graphql'), AUTHQL_CLIENT_GENERATED: join(dir, 'generated') },
      timeout: 120000,
    });
    const operations = await readFile(join(dir, 'generated', 'operations.ts'), 'utf8');
    const types = await readFile(join(dir, 'generated', 'types.ts'), 'utf8');
    assert.match(operations, /export const CompleteMagicLinkDocument = parse\(/);
    assert.match(operations, /completeMagicLink: \{ operation: 'mutation', issuesTokens: true \}/);
    assert.match(operations, /completeMagicLink\(variables: T\.CompleteMagicLinkMutationVariables, options\?: OperationOptions\): Promise<T\.CompleteMagicLinkMutation\['completeMagicLink'\]>/);
    assert.match(types, /export type CompleteMagicLinkMutation = /);
    assert.match(types, /export type CompleteMagicLinkInput = /);
  });
});
