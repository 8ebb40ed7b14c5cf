// The hostile-client cases of issue 17 that concern WebSockets, from real clients: the `ws`
// library in Node and a page in headless Chromium. Each attacks authql's /graphql socket and
// then checks that the server still serves:
// - 300 pings pipelined before connection_init get 300 pongs, and the init timeout still
//   closes the connection (4408): the connection's loop never waits on a write;
// - a `subscribe` nesting 2,000 levels before connection_init is closed unread (4401), and
//   after it answered with the protocol's error (QUERY_TOO_DEEP), the connection still open;
// - a 640-byte fragment fan-out is refused at once (GRAPHQL_VALIDATION_FAILED);
// - a client that stops reading and leaves frees its connection slot.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { startAuthql } from '../lib/authql-server.mjs';
import { chromiumMissing, launchChromium, loopbackOnly } from '../lib/browser.mjs';
import { startStaticServer } from '../lib/static-server.mjs';

const PROTOCOL = 'graphql-transport-ws';
const password = 'correct horse battery staple';
const deepSubscribe = (id) =>
  JSON.stringify({
    id,
    type: 'subscribe',
    payload: { query: `subscription { sessionEvents(x: ${'['.repeat(2000)}1${']'.repeat(2000)}) { type } }` },
  });
const fanOut = () => {
  let query = 'subscription { ...F0 }';
  for (let level = 0; level < 7; level++) {
    query += ` fragment F${level} on Subscription { ${`...F${level + 1} `.repeat(10)}}`;
  }
  return `${query} fragment F7 on Subscription { __typename }`;
};

/** Everything a socket receives until it closes: { messages, code }. */
function record(socket) {
  const messages = [];
  const closed = new Promise((resolve) => {
    socket.on('message', (data) => messages.push(JSON.parse(String(data))));
    socket.on('close', (code) => resolve(code));
  });
  return { messages, closed };
}

const opened = (socket) =>
  new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });

async function register(server, email) {
  const answer = await fetch(server.graphql, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      query: 'mutation($i: RegisterInput!) { register(input: $i) { accessToken } }',
      variables: { i: { email, password } },
    }),
  });
  const body = await answer.json();
  assert.equal(body.errors, undefined, JSON.stringify(body));
  return body.data.register.accessToken;
}

async function healthy(server) {
  const answer = await fetch(`${server.url}/healthz`, { signal: AbortSignal.timeout(3000) });
  assert.equal(answer.status, 200);
}

const wsUrl = (server) => `${server.url.replace('http', 'ws')}/graphql`;

/** A socket acknowledged with `token`, and its recording. */
async function signedIn(server, token) {
  const socket = new WebSocket(wsUrl(server), PROTOCOL);
  const recording = record(socket);
  await opened(socket);
  socket.send(JSON.stringify({ type: 'connection_init', payload: { Authorization: `Bearer ${token}` } }));
  const deadline = Date.now() + 5000;
  while (!recording.messages.some((m) => m.type === 'connection_ack')) {
    assert.ok(Date.now() < deadline, 'connection_ack in time');
    await new Promise((r) => setTimeout(r, 10));
  }
  return { socket, recording };
}

async function answerTo(recording, id) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const answer = recording.messages.find((m) => m.id === id);
    if (answer) return answer;
    assert.ok(Date.now() < deadline, `an answer to ${id} in time`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('hostile WebSocket clients in Node (ws)', () => {
  let server;
  let token;

  before(async () => {
    server = await startAuthql({ env: { WEBSOCKET_INIT_TIMEOUT_SECONDS: '2', MAX_CONNECTIONS: '8' } });
    token = await register(server, `hostile-${randomUUID()}@example.com`);
  });
  after(async () => server?.stop());

  it('300 pipelined pings get 300 pongs, then the init timeout closes with 4408', async () => {
    const socket = new WebSocket(wsUrl(server), PROTOCOL);
    const { messages, closed } = record(socket);
    await opened(socket);
    for (let i = 0; i < 300; i++) socket.send('{"type":"ping"}');
    const code = await closed;
    assert.equal(messages.filter((m) => m.type === 'pong').length, 300);
    assert.equal(code, 4408);
    await healthy(server);
  });

  it('a subscribe nesting 2,000 levels is closed unread before connection_init, answered after', async () => {
    const early = new WebSocket(wsUrl(server), PROTOCOL);
    const earlyRecording = record(early);
    await opened(early);
    early.send(deepSubscribe('1'));
    assert.equal(await earlyRecording.closed, 4401);

    const { socket, recording } = await signedIn(server, token);
    socket.send(deepSubscribe('deep'));
    const answer = await answerTo(recording, 'deep');
    assert.equal(answer.type, 'error');
    assert.equal(answer.payload[0].extensions.code, 'QUERY_TOO_DEEP');
    socket.send(JSON.stringify({ id: 'fan', type: 'subscribe', payload: { query: fanOut() } }));
    const refused = await answerTo(recording, 'fan');
    assert.equal(refused.type, 'error');
    assert.equal(refused.payload[0].extensions.code, 'GRAPHQL_VALIDATION_FAILED');
    socket.close();
    await healthy(server);
  });

  it('clients that pipeline and leave without reading give their slots back', async () => {
    // Twice as many as MAX_CONNECTIONS, one after another.
    for (let i = 0; i < 16; i++) {
      const socket = new WebSocket(wsUrl(server), PROTOCOL);
      await opened(socket);
      socket._socket.pause(); // stops reading
      for (let j = 0; j < 300; j++) socket.send('{"type":"ping"}');
      socket.terminate();
    }
    await healthy(server);
    const { socket } = await signedIn(server, token);
    socket.close();
  });
});

describe('hostile WebSocket clients in Chromium', { skip: chromiumMissing }, () => {
  let server;
  let page;
  let site;
  let browser;
  let token;

  before(async () => {
    site = await startStaticServer({ routes: { '/': { body: '<title>hostile</title>', type: 'text/html' } } });
    server = await startAuthql({ env: { CORS_ALLOWED_ORIGINS: site.url, WEBSOCKET_INIT_TIMEOUT_SECONDS: '2' } });
    token = await register(server, `browser-hostile-${randomUUID()}@example.com`);
    browser = await launchChromium();
    const context = await browser.newContext();
    await loopbackOnly(context);
    page = await context.newPage();
    await page.goto(`${site.url}/`);
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    await site?.stop();
  });

  it('a page that pipelines 300 pings and sends a 2,000-level subscribe harms nothing', async () => {
    const seen = await page.evaluate(
      ([url, deep]) =>
        new Promise((resolve) => {
          const socket = new WebSocket(url, 'graphql-transport-ws');
          let pongs = 0;
          socket.onmessage = (event) => {
            if (JSON.parse(event.data).type === 'pong') pongs += 1;
          };
          socket.onclose = (event) => resolve({ pongs, code: event.code });
          socket.onopen = () => {
            for (let i = 0; i < 300; i++) socket.send('{"type":"ping"}');
            socket.send(deep);
          };
        }),
      [wsUrl(server), deepSubscribe('1')],
    );
    assert.equal(seen.pongs, 300);
    assert.equal(seen.code, 4401, 'the subscribe before connection_init closes it');
    await healthy(server);
    const answer = await page.evaluate(
      ([url, bearer, deep]) =>
        new Promise((resolve) => {
          const socket = new WebSocket(url, 'graphql-transport-ws');
          socket.onopen = () => socket.send(JSON.stringify({ type: 'connection_init', payload: { Authorization: bearer } }));
          socket.onmessage = (event) => {
            const message = JSON.parse(event.data);
            if (message.type === 'connection_ack') socket.send(deep);
            if (message.type === 'error') {
              resolve(message.payload[0].extensions.code);
              socket.close();
            }
          };
        }),
      [wsUrl(server), `Bearer ${token}`, deepSubscribe('deep')],
    );
    assert.equal(answer, 'QUERY_TOO_DEEP');
  });
});
