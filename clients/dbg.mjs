import { startAuthql } from './lib/authql-server.mjs';
import { launchChromium } from './lib/browser.mjs';
const s = await startAuthql();
try {
  for (const p of ['/', '/graphiql/init.js', '/graphiql/graphiql.min.js']) { const r = await fetch(s.url + p); const t = await r.text(); console.log(p, r.status, r.headers.get('content-type'), r.headers.get('content-security-policy'), t.length); }
  const b = await launchChromium();
  const page = await b.newPage();
  page.on('console', (m) => console.log('console', m.type(), m.text().slice(0, 300)));
  page.on('pageerror', (e) => console.log('pageerror', e.message));
  page.on('requestfailed', (r) => console.log('failed', r.url(), r.failure()?.errorText));
  await page.goto(s.url + '/');
  await page.waitForTimeout(4000);
  await page.screenshot({ path: '/tmp/dbg.png' });
  await b.close();
} finally { await s.stop(); }
