#!/usr/bin/env node
// Copies GraphiQL's built browser files (and React's, which GraphiQL 3's UMD build needs as
// globals) from clients/node_modules into assets/graphiql/, with their licences.
//
//   cd clients && npm ci && npm run vendor-graphiql
//
// The versions are the ones pinned in clients/package.json (devDependencies graphiql, react,
// react-dom). To move to newer ones: `npm install --save-dev --save-exact graphiql@3 react@18
// react-dom@18`, run this script, run `npm test`, commit assets/graphiql/ with the lockfile.
// GraphiQL 3 is the last major with a self-contained UMD build (4 and later load Monaco's web
// workers as ES modules); React 18 is the last React with UMD builds.
import { copyFileSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const clients = dirname(dirname(fileURLToPath(import.meta.url)));
const nodeModules = join(clients, 'node_modules');
const out = join(dirname(clients), 'assets', 'graphiql');

const pkgDir = (name) => join(nodeModules, ...name.split('/'));
const version = (name) => JSON.parse(readFileSync(join(pkgDir(name), 'package.json'), 'utf8')).version;

const files = [
  ['graphiql', 'graphiql.min.js', 'graphiql.min.js'],
  ['graphiql', 'graphiql.min.css', 'graphiql.min.css'],
  ['react', 'umd/react.production.min.js', 'react.production.min.js'],
  ['react-dom', 'umd/react-dom.production.min.js', 'react-dom.production.min.js'],
];

for (const [pkg, from, to] of files) {
  const src = join(pkgDir(pkg), from);
  if (!existsSync(src)) throw new Error(`${src} is missing: run npm ci in clients/ first`);
  // Drop the sourceMappingURL comment: the maps are not vendored, and a browser would ask
  // the server for them.
  const text = readFileSync(src, 'utf8').replace(/\n?\/[/*]# sourceMappingURL=[^\n]*\s*$/, '\n');
  writeFileSync(join(out, to), text);
}

const licenceFile = (dir) =>
  readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.|-|$)/i.test(f) && statSync(join(dir, f)).isFile());

for (const pkg of ['graphiql', 'react', 'react-dom']) {
  const file = licenceFile(pkgDir(pkg));
  copyFileSync(join(pkgDir(pkg), file), join(out, `LICENSE.${pkg}.txt`));
}

// Everything graphiql.min.js bundles, read from its source map, with each package's licence.
const map = JSON.parse(readFileSync(join(pkgDir('graphiql'), 'graphiql.min.js.map'), 'utf8'));
const monorepo = {
  'codemirror-graphql': 'codemirror-graphql',
  'graphiql-react': '@graphiql/react',
  'graphiql-toolkit': '@graphiql/toolkit',
  'graphql-language-service': 'graphql-language-service',
};
const bundled = new Set();
for (const source of map.sources) {
  const i = source.lastIndexOf('node_modules/');
  if (i >= 0) {
    const parts = source.slice(i + 'node_modules/'.length).split('/');
    bundled.add(parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]);
  } else {
    const m = /^\.\.\/\.\.\/([^/]+)\//.exec(source);
    if (m && monorepo[m[1]]) bundled.add(monorepo[m[1]]);
  }
}

// Every installed copy of a package (nested copies may be other versions).
function installed(name, dir = nodeModules, found = []) {
  const candidate = join(dir, ...name.split('/'));
  if (existsSync(join(candidate, 'package.json'))) found.push(candidate);
  for (const entry of readdirSync(dir)) {
    if (entry.startsWith('.')) continue;
    const scopeOrPkg = join(dir, entry);
    if (!statSync(scopeOrPkg).isDirectory()) continue;
    const pkgs = entry.startsWith('@') ? readdirSync(scopeOrPkg).map((p) => join(scopeOrPkg, p)) : [scopeOrPkg];
    for (const p of pkgs) {
      const nested = join(p, 'node_modules');
      if (existsSync(nested)) installed(name, nested, found);
    }
  }
  return found;
}

// Bundled packages that npm no longer installs beside graphiql (newer versions of their
// dependents inline them); their licence as published on the npm registry.
const knownLicences = {
  '@radix-ui/react-use-escape-keydown':
    'MIT, from radix-ui/primitives: the same licence text as the other @radix-ui packages in this file.',
};

const sections = [];
const missing = [];
for (const name of [...bundled].sort()) {
  const copies = installed(name);
  if (copies.length === 0) {
    if (knownLicences[name]) sections.push(`${name} (not installed)\n${'-'.repeat(name.length)}\n${knownLicences[name]}\n`);
    else missing.push(name);
    continue;
  }
  const seen = new Set();
  for (const dir of copies) {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const key = `${pkg.name}@${pkg.version}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const file = licenceFile(dir);
    const text = file ? readFileSync(join(dir, file), 'utf8').trim() : `(no licence file; package.json says: ${JSON.stringify(pkg.license)})`;
    sections.push(`${key} (${typeof pkg.license === 'string' ? pkg.license : 'see below'})\n${'-'.repeat(key.length)}\n${text}\n`);
  }
}
writeFileSync(
  join(out, 'THIRD-PARTY-LICENSES.txt'),
  `Licences of the packages bundled into graphiql.min.js ${version('graphiql')} (the list is read from\n` +
    `its source map; the texts from the copies npm installs with it, whose versions may differ from\n` +
    `the ones bundled). React ${version('react')} and ReactDOM are in LICENSE.react.txt and\n` +
    `LICENSE.react-dom.txt, GraphiQL itself in LICENSE.graphiql.txt.\n` +
    `Generated by clients/scripts/vendor-graphiql.mjs.\n\n` +
    sections.join('\n'),
);

console.log(`vendored into ${relative(process.cwd(), out) || '.'}:`);
console.log(`  graphiql ${version('graphiql')}, react ${version('react')}, react-dom ${version('react-dom')}`);
console.log(`  ${sections.length} bundled package licences in THIRD-PARTY-LICENSES.txt`);
if (missing.length) {
  console.error(`not installed, licence not collected: ${missing.join(', ')}; add them to knownLicences`);
  process.exitCode = 1;
}
