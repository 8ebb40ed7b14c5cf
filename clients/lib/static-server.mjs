// A small static file server for the browser tests: serves the page and bundle of a test
// app (or GraphiQL's files) from another origin than authql's.
import { createServer, request as httpRequest } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
};

/**
 * routes: { '/path': { file } | { body, type } }. Anything else is a 404.
 * proxy: { '/path': 'http://host:port' } forwards those paths (method, headers, body) there.
 * headers: added to every file answered. publicHost: the host name in `url` (e.g. localhost).
 * Returns { url, port, requests, stop() }; `requests` lists every path asked for.
 */
export async function startStaticServer({ routes, proxy = {}, headers = {}, host = '127.0.0.1', publicHost = host }) {
  const requests = [];
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    requests.push(path);
    if (proxy[path]) {
      const upstream = new URL(req.url, proxy[path]);
      const forward = httpRequest(upstream, { method: req.method, headers: { ...req.headers, host: upstream.host } }, (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      });
      forward.on('error', (e) => res.writeHead(502, { 'content-type': 'text/plain' }).end(String(e)));
      req.pipe(forward);
      return;
    }
    const route = routes[path];
    if (!route) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    try {
      const body = route.file ? await readFile(route.file) : route.body;
      const type = route.type || TYPES[extname(route.file || path)] || 'application/octet-stream';
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store', ...headers }).end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(e));
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address();
  return {
    url: `http://${publicHost}:${port}`,
    port,
    requests,
    stop: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}
