/**
 * What the client found about a cookie-mode setup at start (`AuthqlLink.diagnostics`), each
 * also logged once with `console.warn` and emitted as a `warning` event:
 * - `CROSS_SITE`: the page and authql are on different sites, so the browser will not keep or
 *   send authql's `SameSite=Strict`/`Lax` refresh cookie (and blocks third-party cookies even
 *   with `SameSite=None` when the user's settings say so, as Chromium does by default in
 *   incognito and Safari always);
 * - `INSECURE_CONTEXT`: the page is plain `http:` on a host other than `localhost`/`127.0.0.1`,
 *   where a `Secure` cookie (authql's default) is never stored;
 * - `COOKIE_NOT_STORED`: a refresh right after this page signed in found no cookie: the
 *   browser dropped it (raised at that moment, not at start);
 * - `MODE_MISMATCH`: authql keeps the refresh token in a cookie (`REFRESH_TOKEN_COOKIE=true`)
 *   while the client is in mode `token` (raised at the first sign-in);
 * - `STORAGE_FAILED`: the token-mode `storage` refused the pair (full, blocked): it is kept in
 *   memory only, and other tabs cannot share it.
 */
export interface Diagnostic {
  code: 'CROSS_SITE' | 'INSECURE_CONTEXT' | 'COOKIE_NOT_STORED' | 'MODE_MISMATCH' | 'STORAGE_FAILED';
  /** What is wrong and what to do, in English, for the developer's console. */
  message: string;
}

const isIp = (host: string) => /^\d+\.\d+\.\d+\.\d+$/.test(host) || host.startsWith('[');

/**
 * The site of a URL for cookies, as far as a client without the Public Suffix List can tell:
 * the scheme and the last two labels of the host name (an IP address or `localhost` is its own
 * site). HTML Standard § 7.1 "Sites" (schemeful same-site); ports never count. Two names under
 * one public suffix of more than one label (`a.github.io`, `b.github.io`) look same-site here
 * though browsers keep them apart; authql's own start-up check uses the full list.
 */
export function siteOf(url: URL): string {
  const host = url.hostname.toLowerCase().replace(/\.$/, '');
  if (isIp(host) || !host.includes('.')) return `${url.protocol}//${host}`;
  return `${url.protocol}//${host.split('.').slice(-2).join('.')}`;
}

/** Whether two URLs are same-site (see `siteOf`). */
export function sameSite(a: URL, b: URL): boolean {
  return siteOf(a) === siteOf(b);
}

/**
 * The diagnostics of a cookie-mode client whose page is at `page` and whose authql is at `api`
 * (both absolute); `[]` when a cookie can work.
 */
export function cookieDiagnostics(page: URL, api: URL): Diagnostic[] {
  const found: Diagnostic[] = [];
  if (!sameSite(page, api)) {
    found.push({
      code: 'CROSS_SITE',
      message:
        `authql at ${api.origin} is another site than this page (${page.origin}), so the browser ` +
        `will not keep authql's refresh cookie and every refresh will be MISSING. Serve both ` +
        `from one site: in development proxy /graphql through the dev server (Vite: ` +
        `server.proxy { '/graphql': { target: '${api.origin}', ws: true } }) and use uri ` +
        `'/graphql'; or use one host name for both (localhost and 127.0.0.1 are different ` +
        `sites). A frontend really on another site needs mode 'token', or ` +
        `REFRESH_TOKEN_COOKIE_SAME_SITE=None (and browsers that allow third-party cookies).`,
    });
  }
  const local = ['localhost', '127.0.0.1', '[::1]'].includes(api.hostname) || api.hostname.endsWith('.localhost');
  if (api.protocol === 'http:' && !local) {
    found.push({
      code: 'INSECURE_CONTEXT',
      message:
        `authql is reached over plain http on ${api.hostname}: the browser drops its Secure ` +
        `refresh cookie there. Use https, or for development localhost, or set ` +
        `REFRESH_TOKEN_COOKIE_SECURE=false on authql (never in production).`,
    });
  }
  return found;
}
