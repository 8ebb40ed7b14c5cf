// Bundles the browser entries of the tests with esbuild: browser/app.mjs (the tests' own Apollo
// Client 4 app), browser/package-app.mjs, browser/passkey-app.mjs and browser/oidc-app.mjs
// (@authql/client from its built dist/; build the package first: `npm run build -w
// @authql/client`, which `npm test` does).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

/** One browser entry (under ../browser/) as an IIFE script; `.graphql` files load as text. */
async function bundle(entry) {
  const result = await build({
    entryPoints: [fileURLToPath(new URL(`../browser/${entry}`, import.meta.url))],
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

export const bundleBrowserApp = () => bundle('app.mjs');
export const bundlePackageApp = () => bundle('package-app.mjs');
/** browser/passkey-app.mjs: second factors and passkeys (Apollo Client 4 over @authql/client). */
export const bundlePasskeyApp = () => bundle('passkey-app.mjs');
/** browser/oidc-app.mjs: "Sign in with OpenID Connect" (Apollo Client 4 over @authql/client). */
export const bundleOidcApp = () => bundle('oidc-app.mjs');

const page = (title, text) => `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>${title}</title></head>
<body><p>${text}</p><script src="/app.js"></script></body>
</html>
`;

export const APP_PAGE = page('authql app', 'authql test app');
export const PACKAGE_PAGE = page('authql package', '@authql/client test page');
export const PASSKEY_PAGE = page('authql passkeys', 'authql second factor and passkey test app');
export const OIDC_PAGE = page('authql OpenID Connect', 'authql OpenID Connect sign-in test app');
