// Time to first render of the console's Jobs page in headless Chromium (Debian's
// /usr/bin/chromium, playwright-core from web/node_modules). Run by
// bench/console_bench.py, which starts the cluster and passes CONSOLE_URL, TOKEN and
// RUNS; prints one JSON object: per run the milliseconds from the start of the
// navigation to the first job row drawn (first_render_ms), the page's own measure of
// GET /v1/jobs + JSON parse + draw (fetch_draw_ms), and of that the time to the reply's
// first byte (server_ms, from the Resource Timing entry); and the reply's size on the
// wire (encoded_bytes: Chromium offers gzip, br and zstd).
import { createRequire } from 'node:module';

const require = createRequire(new URL('../web/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const url = process.env.CONSOLE_URL;
const runs = Number(process.env.RUNS || 5);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
const errors = [];
page.on('pageerror', (e) => errors.push(e.message));
await page.goto(`${url}/console/`);
await page.getByTestId('token-input').fill(process.env.TOKEN);
await page.getByTestId('login-submit').click();
await page.locator('tr.job').first().waitFor({ timeout: 60_000 });
const result = { first_render_ms: [], fetch_draw_ms: [], server_ms: [], rows_in_dom: 0, jobs: '' };
for (let i = 0; i < runs; i++) {
  const t0 = Date.now();
  await page.reload();
  await page.locator('tr.job').first().waitFor({ timeout: 60_000 });
  result.first_render_ms.push(Date.now() - t0);
  result.fetch_draw_ms.push(Number(await page.getByTestId('jobs-table').getAttribute('data-loaded-ms')));
  const t = await page.evaluate(() => {
    const e = performance.getEntriesByType('resource').find((x) => new URL(x.name).pathname === '/v1/jobs');
    return e && { server_ms: Math.round(e.responseStart - e.requestStart), encoded: e.encodedBodySize };
  });
  result.server_ms.push(t && t.server_ms);
  result.encoded_bytes = t && t.encoded;
}
result.rows_in_dom = await page.locator('tr.job').count();
result.jobs = await page.getByTestId('jobs-count').textContent();
// Scrolling to the end draws the last rows.
const t1 = Date.now();
await page.getByTestId('jobs-scroll').evaluate((e) => { e.scrollTop = e.scrollHeight; });
await page.locator('tr.job[data-job-id="1"]').waitFor({ timeout: 10_000 });
result.scroll_to_end_ms = Date.now() - t1;
result.page_errors = errors;
await browser.close();
console.log(JSON.stringify(result));
