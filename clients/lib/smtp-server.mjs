// A real SMTP server for the browser tests: aiosmtpd, started from ../tests/smtp_server.py with
// the Python that AUTHQL_TEST_SMTP_PYTHON names (scripts/test installs one; `python3` when
// unset). Every message it accepts is read back as the JSON the script writes beside it
// (envelope, subject, and the text and HTML parts as Python's email package decodes them).
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../tests/smtp_server.py', import.meta.url));
export const SMTP_PYTHON = process.env.AUTHQL_TEST_SMTP_PYTHON || 'python3';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Start the server; resolves to { url, port, messagesTo(address), waitFor(address, n), stop() }. */
export async function startSmtpServer() {
  const dir = await mkdtemp(join(tmpdir(), 'authql-smtp-'));
  const maildir = join(dir, 'delivered');
  const child = spawn(SMTP_PYTHON, [SCRIPT, '--maildir', maildir], { stdio: ['pipe', 'pipe', 'ignore'] });
  const lines = createInterface({ input: child.stdout });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the SMTP server did not start within 20 s')), 20000);
    child.once('exit', (code) => reject(new Error(`the SMTP server exited (${code}): is aiosmtpd installed?`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      const match = /^LISTENING (\d+)$/.exec(line.trim());
      match ? resolve(Number(match[1])) : reject(new Error(`unexpected line ${line}`));
    });
  });

  async function messages() {
    let names = [];
    try {
      names = (await readdir(maildir)).filter((name) => name.endsWith('.json')).sort();
    } catch { /* nothing yet */ }
    return Promise.all(names.map(async (name) => JSON.parse(await readFile(join(maildir, name), 'utf8'))));
  }

  const messagesTo = async (address) =>
    (await messages()).filter((m) => m.rcpt_tos.some((to) => to.toLowerCase() === address.toLowerCase()));

  return {
    port,
    url: `smtp://127.0.0.1:${port}`,
    messagesTo,
    /** The first `count` messages to `address`, waiting up to 20 s for them. */
    async waitFor(address, count = 1) {
      const deadline = Date.now() + 20000;
      for (;;) {
        const found = await messagesTo(address);
        if (found.length >= count) return found;
        if (Date.now() > deadline) throw new Error(`${found.length} message(s) to ${address}, expected ${count}`);
        await sleep(50);
      }
    },
    async stop() {
      child.stdin.end();
      child.kill('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The first link in `text` that starts with `prefix`. */
export function linkIn(text, prefix) {
  const link = text.split(/\s+/).find((word) => word.startsWith(prefix));
  if (!link) throw new Error(`no link starting with ${prefix} in:\n${text}`);
  return link;
}
