// TypeScript types for authql's schema and the operations in examples/operations.graphql.
//   npm run codegen                       -> generated/graphql.ts (gitignored)
//   CODEGEN_OUT=/tmp/x npm run codegen    -> /tmp/x/graphql.ts (what the test does)
// AUTHQL_SCHEMA points at another schema file (default ../schema.graphql, authql's
// `print-schema` output).
import type { CodegenConfig } from '@graphql-codegen/cli';

const out = process.env.CODEGEN_OUT ?? 'generated';

const config: CodegenConfig = {
  overwrite: true,
  schema: process.env.AUTHQL_SCHEMA ?? '../schema.graphql',
  documents: ['../examples/operations.graphql'],
  generates: {
    [`${out}/graphql.ts`]: {
      plugins: ['typescript-operations'],
      config: {
        // DateTime values are RFC 3339 strings on the wire; JSON (WebAuthn options and credentials) is any JSON value.
        scalars: { DateTime: 'string', JSON: 'unknown' },
        strictScalars: true,
        useTypeImports: true,
        enumsAsTypes: true,
        avoidOptionals: { field: true },
      },
    },
  },
};

export default config;
