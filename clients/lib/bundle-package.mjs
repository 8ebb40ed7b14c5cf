// Bundles browser/package-app.mjs (@authql/client from its built dist/, Apollo Client 4,
// graphql-ws) for the browser tests of the package. Build the package first:
// `npm run build -w @authql/client`.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

export async function bundlePackageApp() {
  const result = await build({
    entryPoints: [fileURLToPath(new URL('../browser/package-app.mjs', import.meta.url))],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    target: 'es2022',
    define: { 'process.env.NODE_ENV': '"production"', __DEV__: 'false' },
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

export const PACKAGE_PAGE = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>authql package</title></head>
<body><p>@authql/client test page</p><script src="/app.js"></script></body>
</html>
`;
