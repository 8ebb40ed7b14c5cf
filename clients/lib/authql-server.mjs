// Starts the authql binary for one test: a free port, a fresh SQLite file in a temp dir,
// a minimal environment; waits for /healthz; stop() kills it and removes the temp dir.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

export const AUTHQL_BIN =
  process.env.AUTHQL_BIN ||
  join(process.env.CARGO_TARGET_DIR || join(homedir(), '.cache', 'authql-target'), 'debug', 'authql');

/** A port that was free a moment ago (listen on 0, read it, close). */
export function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Every server started and not yet stopped: killed on exit whatever happened to the test.
const running = new Set();
function killAll() {
  for (const child of running) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
}
process.on('exit', killAll);

/**
 * Another child process of a test (the OpenID Provider, ...) killed on exit with the authql
 * servers, whatever happened to the test; returns the function that forgets it (once stopped).
 */
export function killOnExit(child) {
  running.add(child);
  return () => running.delete(child);
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

/**
 * Start authql. `env` adds to (or, with a value of undefined, removes from) the minimal
 * environment. Returns { url, graphql, port, host, env, logs(), stop() }.
 */
export async function startAuthql({ env = {}, host = '127.0.0.1', startTimeoutMs = 15000 } = {}) {
  if (!existsSync(AUTHQL_BIN)) {
    throw new Error(`authql binary not found at ${AUTHQL_BIN} (build it, or set AUTHQL_BIN)`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'authql-clients-'));
  let port;
  let child;
  let output = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    port = await freePort(host);
    const fullEnv = {
      PATH: process.env.PATH,
      PORT: String(port),
      HOST: host,
      DATABASE_URL: `sqlite://${join(dir, 'authql.db')}`,
      BCRYPT_COST: '4',
      RATE_LIMIT_IP_PER_MINUTE: '0',
      RATE_LIMIT_ACCOUNT_PER_MINUTE: '0',
      RUST_LOG: process.env.AUTHQL_RUST_LOG || 'authql=info,tower_http=warn',
      ...env,
    };
    for (const [k, v] of Object.entries(fullEnv)) if (v === undefined) delete fullEnv[k];
    output = '';
    child = spawn(AUTHQL_BIN, [], { cwd: dir, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    child.stdout.on('data', (d) => { output += d; });
    child.stderr.on('data', (d) => { output += d; });
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const ready = await waitHealthy(`http://${host}:${port}/healthz`, exited, startTimeoutMs);
    if (ready === true) {
      const url = `http://${host}:${port}`;
      let stopped = false;
      return {
        url,
        graphql: `${url}/graphql`,
        port,
        host,
        dir,
        logs: () => output,
        async stop() {
          if (stopped) return;
          stopped = true;
          if (child.exitCode === null && child.signalCode === null) {
            child.kill('SIGTERM');
            const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
            if (!done) {
              child.kill('SIGKILL');
              await exited;
            }
          }
          running.delete(child);
          await rm(dir, { recursive: true, force: true });
        },
      };
    }
    running.delete(child);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    // The port may have been taken between freePort() and bind: try another one.
    if (!/address already in use|AddrInUse/i.test(output)) break;
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error(`authql did not become healthy on port ${port}; its output:\n${output}`);
}

async function waitHealthy(url, exited, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let gone = false;
  exited.then(() => { gone = true; });
  while (Date.now() < deadline && !gone) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return true;
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  return false;
}

/** Convenience for tests: start, run fn(server), always stop. */
export async function withAuthql(options, fn) {
  const server = await startAuthql(options);
  try {
    return await fn(server);
  } finally {
    await server.stop();
  }
}
