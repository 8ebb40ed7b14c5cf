// Bundles browser/app.mjs (Apollo Client 4 + the shared app) for the browser tests.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

export async function bundleBrowserApp() {
  const result = await build({
    entryPoints: [fileURLToPath(new URL('../browser/app.mjs', import.meta.url))],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    target: 'es2022',
    loader: { '.graphql': 'text' },
    define: { 'process.env.NODE_ENV': '"production"', __DEV__: 'false' },
    logLevel: 'silent',
  });
  return result.outputFiles[0].text;
}

export const APP_PAGE = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>authql app</title></head>
<body><p>authql test app</p><script src="/app.js"></script></body>
</html>
`;
