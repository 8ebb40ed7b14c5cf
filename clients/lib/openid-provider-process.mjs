// Starts lib/openid-provider.mjs (node-oidc-provider behind a small script: see its header) as
// a child process for one test: waits for its ready line, gives its issuer and its /test/
// control endpoints, and kills it on stop() (and on exit, with the authql servers, whatever
// happened to the test).
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { killOnExit } from './authql-server.mjs';

const SCRIPT = fileURLToPath(new URL('./openid-provider.mjs', import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Start the provider. `clients` and `accounts` are its OP_CLIENTS and OP_ACCOUNTS (more can be
 * added later with addClient/addAccount); `port` 0 is any free port. Resolves to
 * { issuer, port, addClient(metadata), addAccount(account), tokenRequests(), logs(), stop() }.
 */
export async function startOpenIdProvider({ clients = [], accounts = [], port = 0, startTimeoutMs = 20000 } = {}) {
  const child = spawn(process.execPath, [SCRIPT], {
    env: {
      PATH: process.env.PATH,
      OP_PORT: String(port),
      OP_CLIENTS: JSON.stringify(clients),
      OP_ACCOUNTS: JSON.stringify(accounts),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const forget = killOnExit(child);
  let output = '';
  child.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  let ready;
  try {
    ready = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the OpenID Provider did not start within ${startTimeoutMs} ms`)), startTimeoutMs);
      exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`the OpenID Provider exited (${code ?? signal}) before it was ready`));
      });
      lines.once('line', (line) => {
        clearTimeout(timer);
        try {
          const value = JSON.parse(line);
          if (typeof value.issuer !== 'string' || typeof value.port !== 'number') throw new Error('no issuer or port');
          resolve(value);
        } catch (error) {
          reject(new Error(`unexpected first line from the OpenID Provider: ${line} (${error.message})`));
        }
      });
    });
  } catch (error) {
    child.kill('SIGKILL');
    await exited;
    forget();
    throw new Error(`${error.message}\nits output:\n${output}`);
  }
  // Anything it prints later on stdout goes to the logs too.
  lines.on('line', (line) => { output += `${line}\n`; });

  const { issuer } = ready;
  async function control(method, path, body) {
    const response = await fetch(`${issuer}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const answer = await response.json().catch(() => null);
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(answer)}`);
    return answer;
  }

  let stopped = false;
  return {
    issuer,
    port: ready.port,
    /** POST /test/clients: adds or replaces a client (metadata as OP_CLIENTS takes it). */
    addClient: (metadata) => control('POST', '/test/clients', metadata),
    /** POST /test/accounts: adds or replaces an account ({ sub, email, email_verified, name }). */
    addAccount: (account) => control('POST', '/test/accounts', account),
    /** GET /test/token-requests: what the token endpoint was asked. */
    tokenRequests: () => control('GET', '/test/token-requests'),
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
      forget();
    },
  };
}
