// The web console in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core from web/node_modules), against a real fschedctld. Run by
// tests/e2e/test_console.py, which starts the cluster and the jobs and passes:
//   CONSOLE_URL      the controller's REST address (http://127.0.0.1:PORT)
//   USER_NAME, USER_TOKEN    the unprivileged user who owns JOB_ID, and a token of theirs
//   OTHER_NAME, OTHER_TOKEN  another unprivileged user
//   EXPIRED_TOKEN    a token of USER_NAME that has expired
//   JOB_ID           USER_NAME's running job, checkpointed periodically
//   XSS_JOB_ID       a held job of USER_NAME named <img src=x onerror=alert(1)>
//   SCREENSHOT_DIR   where each test saves its screenshot
// The tests run in order and share the user's page (logged in by the first one). Any
// console error, page error or dialog in a page fails the test, except the failed
// requests (401, 403) a test expects and names.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../web/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set (tests/e2e/test_console.py runs this file)`);
  return v;
};
const URL_ = env('CONSOLE_URL');
const USER = env('USER_NAME');
const OTHER = env('OTHER_NAME');
const JOB = env('JOB_ID');
const XSS_JOB = env('XSS_JOB_ID');
const SHOTS = env('SCREENSHOT_DIR');
const XSS = '<img src=x onerror=alert(1)>';
const LONG = 240_000;

let browser;
let userPage; // the owner's page, logged in by the first test
const pages = new Set();

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  // launch() runs Chromium on a fresh profile (user-data-dir) of its own, removed at close.
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
});

// A new page in a context of its own (its own sessionStorage), watched for errors.
async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await ctx.newPage();
  page.problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') page.problems.push(`console error: ${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => page.problems.push(`page error: ${e.message}`));
  page.on('dialog', (d) => {
    page.problems.push(`dialog (${d.type()}): ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  pages.add(page);
  return page;
}

// Runs a test's body on `page`, then saves its screenshot and fails on any problem in
// the page, but the failed requests of the statuses in `allow` (e.g. [403]).
async function check(name, page, body, allow = []) {
  const from = page.problems.length;
  try {
    await body();
  } finally {
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true }).catch(() => {});
  }
  const allowed = (p) => allow.some((s) => p.startsWith(`console error: Failed to load resource: the server responded with a status of ${s} `));
  const problems = page.problems.slice(from).filter((p) => !allowed(p));
  assert.deepEqual(problems, [], `problems in the page:\n${problems.join('\n')}`);
}

async function login(page, token) {
  await page.goto(`${URL_}/`);
  await page.getByTestId('token-input').fill(`SLURM_JWT=${token}`);
  await page.getByTestId('login-submit').click();
}

// What the REST API answers to `token`, for comparison with what the page shows.
async function rest(method, route, token, body) {
  const r = await fetch(`${URL_}${route}`, {
    method, headers: { 'X-SLURM-USER-TOKEN': token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

const rows = (page) => page.locator('[data-testid=ckpt-body] tr[data-ckpt-id]');

// The checkpoints of the table: [{id, status, source, description}], oldest first.
async function tableCheckpoints(page) {
  return rows(page).evaluateAll((trs) => trs.map((tr) => ({
    id: Number(tr.dataset.ckptId), status: tr.dataset.status, description: tr.dataset.description,
    source: tr.querySelector('[data-col=source]').textContent,
  })));
}

async function waitFor(page, what, fn, timeout = 60_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
    await page.waitForTimeout(200);
  }
}

test('log in with the user\'s token and see the running job in the Jobs list', async () => {
  userPage = await newPage();
  const page = userPage;
  await check('01-jobs', page, async () => {
    await login(page, process.env.USER_TOKEN);
    await page.getByTestId('whoami').filter({ hasText: USER }).waitFor();
    assert.equal(await page.evaluate(() => document.cookie), '', 'the console keeps no cookie');
    const row = page.getByTestId(`job-row-${JOB}`);
    await row.locator('[data-col=state]', { hasText: 'RUNNING' }).waitFor();
    assert.equal(await row.locator('[data-col=user]').textContent(), USER);
    assert.match(await row.locator('[data-col=nodes]').textContent(), /^node\d/);
    // The held job named like an XSS attack: its name is text.
    const xss = page.getByTestId(`job-row-${XSS_JOB}`);
    assert.equal(await xss.locator('[data-col=name]').textContent(), XSS);
    assert.equal(await page.locator('img').count(), 0);
    // Filters: by state, by user.
    await page.getByTestId('filter-state').selectOption('PENDING');
    await xss.waitFor();
    await row.waitFor({ state: 'detached' });
    await page.getByTestId('filter-state').selectOption('RUNNING');
    await row.waitFor();
    await page.getByTestId('filter-user').selectOption(USER);
    await row.waitFor();
    await page.getByTestId('filter-state').selectOption('');
    assert.match(await page.getByTestId('jobs-count').textContent(), /^2 (of \d+ )?jobs$/);
    await page.getByTestId('filter-user').selectOption('');
  });
});

test('the Checkpoints tab shows the periodic checkpoints and a triggered one going Creating -> Present', { timeout: LONG }, async () => {
  const page = userPage;
  await check('02-checkpoints', page, async () => {
    await page.getByTestId(`job-row-${JOB}`).locator('[data-col=name]').click();
    await page.getByTestId('job-title').filter({ hasText: `Job ${JOB}` }).waitFor();
    await page.getByTestId('tab-checkpoints').click();
    await waitFor(page, 'two periodic checkpoints Present', async () =>
      (await tableCheckpoints(page)).filter((c) => c.source === 'periodic' && c.status === 'Present').length >= 2);

    // Retained checkpoints: per job, saved with the job.
    await page.getByTestId('num-retained').fill('10');
    await page.getByTestId('save-retained').click();
    await page.getByTestId('notice').filter({ hasText: 'keeps 10 checkpoints' }).waitFor();
    assert.equal((await rest('GET', `/v1/jobs/${JOB}`, process.env.USER_TOKEN)).body.num_retained, 10);

    // Trigger one, with a description that is an XSS attack; watch its row.
    await page.getByTestId('trigger-checkpoint').click();
    await page.getByTestId('ckpt-description').fill(XSS);
    await page.getByTestId('ckpt-submit').click();
    const seen = [];
    await waitFor(page, 'the triggered checkpoint to be Present', async () => {
      const st = await page.locator('[data-testid=ckpt-body] tr').evaluateAll((trs, d) => trs
        .filter((tr) => tr.dataset.description === d)
        .map((tr) => tr.querySelector('[data-col=status] .status').textContent), XSS);
      if (st.length && seen[seen.length - 1] !== st[0]) seen.push(st[0]);
      return st[0] === 'Present';
    });
    assert.equal(seen[0], 'Creating', `statuses seen: ${seen}`);
    assert.equal(seen[seen.length - 1], 'Present', `statuses seen: ${seen}`);
    const mine = (await tableCheckpoints(page)).filter((c) => c.description === XSS);
    assert.equal(mine.length, 1);
    assert.equal(mine[0].source, 'manual');
    await page.getByTestId('notice').filter({ hasText: `checkpoint ${mine[0].id} is Present` }).waitFor();
    // The description is shown as text, and made no element.
    const cell = page.getByTestId(`ckpt-row-${mine[0].id}`).locator('[data-col=description]');
    assert.equal(await cell.textContent(), XSS);
    assert.ok(await cell.isVisible());
    assert.equal(await page.locator('img').count(), 0);
    // Every column of the issue is there.
    const heads = await page.locator('[data-testid=ckpt-table] thead th').allTextContents();
    for (const h of ['ID', 'Description', 'Triggered', 'Completed', 'Duration', 'Status', 'Source', 'Job version',
      'Location', 'Size', 'Freeze', 'Kind', 'Parent']) assert.ok(heads.includes(h), `no column ${h}: ${heads}`);
    const row = page.getByTestId(`ckpt-row-${mine[0].id}`);
    assert.match(await row.locator('[data-col=size]').textContent(), /\d.*(B|KiB|MiB|GiB)$/);
    assert.match(await row.locator('[data-col=location]').textContent(), new RegExp(`/${JOB}/`));
  });
});

test('the Overview and Plots tabs show the job and its checkpoints', async () => {
  const page = userPage;
  await check('03-overview-plots', page, async () => {
    await page.getByTestId('tab-overview').click();
    const fields = page.getByTestId('job-fields');
    await fields.locator('tr[data-field=job_id] td', { hasText: JOB }).waitFor();
    const job = (await rest('GET', `/v1/jobs/${JOB}`, process.env.USER_TOKEN)).body;
    const shown = await fields.locator('tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.field));
    assert.deepEqual(shown.sort(), Object.keys(job).sort(), 'every field of the job is shown');
    assert.equal(await fields.locator('tr[data-field=user] td').textContent(), USER);
    await page.screenshot({ path: path.join(SHOTS, '03-overview.png'), fullPage: true });
    await page.getByTestId('tab-plots').click();
    for (const c of ['chart-duration', 'chart-freeze', 'chart-size']) {
      await page.locator(`[data-testid=${c}][data-points]`).waitFor();
      assert.ok(Number(await page.getByTestId(c).getAttribute('data-points')) >= 3, c);
      assert.equal(await page.getByTestId(c).locator('canvas').count(), 1, c);
    }
  });
});

test('another user sees the job but its buttons are refused with the server\'s 403 message', async () => {
  const page = await newPage();
  await check('04-other-user', page, async () => {
    await login(page, process.env.OTHER_TOKEN);
    await page.getByTestId('whoami').filter({ hasText: OTHER }).waitFor();
    await page.getByTestId(`job-row-${JOB}`).waitFor();
    await page.goto(`${URL_}/console/#/jobs/${JOB}/checkpoints`);
    const before = await waitFor(page, 'the checkpoints', async () => {
      const c = await tableCheckpoints(page);
      return c.some((x) => x.status === 'Present') && c;
    });
    const refused = await rest('POST', `/v1/jobs/${JOB}/checkpoint`, process.env.OTHER_TOKEN, { description: 'not mine' });
    assert.equal(refused.status, 403, JSON.stringify(refused));

    await page.getByTestId('trigger-checkpoint').click();
    await page.getByTestId('ckpt-description').fill('not mine');
    await page.getByTestId('ckpt-submit').click();
    const msg = page.getByTestId('message');
    await msg.waitFor();
    assert.equal(await msg.getAttribute('role'), 'alert');
    assert.equal(await page.getByTestId('message-text').textContent(), refused.body.error);

    // Each refusal shows the message anew (dismissed in between).
    const refusedAgain = async () => {
      await msg.filter({ hasText: refused.body.error }).waitFor();
      await page.locator('#message-close').click();
      await msg.waitFor({ state: 'hidden' });
    };
    await refusedAgain();
    const present = before.filter((c) => c.status === 'Present').pop();
    await page.getByTestId(`delete-${present.id}`).click();
    await page.getByTestId(`delete-${present.id}`).filter({ hasText: 'Confirm delete' }).click();
    await refusedAgain();
    await page.getByTestId(`restart-${present.id}`).click();
    await refusedAgain();
    await page.getByTestId('num-retained').fill('1');
    await page.getByTestId('save-retained').click();
    await refusedAgain();
    await page.getByTestId('tab-overview').click();
    await page.getByTestId('action-cancel').click();
    await msg.filter({ hasText: refused.body.error }).waitFor(); // left shown for the screenshot
    // Nothing changed.
    const job = (await rest('GET', `/v1/jobs/${JOB}`, process.env.OTHER_TOKEN)).body;
    assert.equal(job.state, 'RUNNING');
    const cks = (await rest('GET', `/v1/jobs/${JOB}/checkpoints`, process.env.OTHER_TOKEN)).body.checkpoints;
    assert.ok(!cks.some((c) => c.description === 'not mine'));
    assert.equal(cks.find((c) => c.checkpoint_id === present.id).status, 'Present');
  }, [403]);
  await page.context().close();
});

test('an expired token, and a forged one, are refused with the server\'s message', async () => {
  const page = await newPage();
  await check('05-expired-token', page, async () => {
    const expired = await rest('GET', '/v1/whoami', process.env.EXPIRED_TOKEN);
    assert.equal(expired.status, 401);
    await login(page, process.env.EXPIRED_TOKEN);
    const err = page.getByTestId('login-error');
    await err.filter({ hasText: expired.body.error }).waitFor();
    assert.equal(await err.getAttribute('role'), 'alert');
    assert.ok(await page.getByTestId('token-input').isVisible());
    assert.ok(!(await page.getByTestId('whoami').isVisible()));
    assert.equal(await page.evaluate(() => sessionStorage.getItem('fsched.token')), null);

    // One character of the signature changed (not the last: some of its bits are padding).
    const t = process.env.USER_TOKEN;
    const i = t.length - 5;
    const forgedToken = t.slice(0, i) + (t[i] === 'A' ? 'B' : 'A') + t.slice(i + 1);
    const forged = await rest('GET', '/v1/jobs', forgedToken);
    assert.equal(forged.status, 401);
    await page.getByTestId('token-input').fill(forgedToken);
    await page.getByTestId('login-submit').click();
    await err.filter({ hasText: forged.body.error }).waitFor();
  }, [401]);
  await page.context().close();
});

test('vacate, restart from an older checkpoint chosen in the table, and the job finishes', { timeout: LONG }, async () => {
  const page = userPage;
  await check('06-vacate-restart', page, async () => {
    await page.goto(`${URL_}/console/#/jobs/${JOB}/checkpoints`);
    await page.getByTestId('job-state').filter({ hasText: 'RUNNING' }).waitFor();
    await page.getByTestId('vacate').click();
    await page.getByTestId('ckpt-description').fill('vacated from the console');
    await page.getByTestId('ckpt-submit').click();
    await page.getByTestId('job-state').filter({ hasText: 'PENDING' }).waitFor({ timeout: 60_000 });
    const cks = await waitFor(page, 'the vacate checkpoint Present', async () => {
      const c = await tableCheckpoints(page);
      return c.some((x) => x.source === 'vacate' && x.status === 'Present') && c;
    });
    const vacate = cks.find((x) => x.source === 'vacate');
    assert.equal(vacate.description, 'vacated from the console');
    await page.getByTestId('notice').filter({ hasText: 'pending until restarted' }).waitFor();
    // An older one than the vacate's: the oldest Present one (periodic checkpoints
    // before it may have been Cleared by retention).
    const older = cks.find((x) => x.status === 'Present' && x.id < vacate.id - 1);
    assert.ok(older, JSON.stringify(cks));
    await page.screenshot({ path: path.join(SHOTS, '06-before-restart.png'), fullPage: true });
    await page.getByTestId(`restart-${older.id}`).click();
    await page.getByTestId('notice').filter({ hasText: `restart from checkpoint ${older.id}` }).waitFor();
    await page.getByTestId('job-state').filter({ hasText: 'RUNNING' }).waitFor({ timeout: 60_000 });
    await page.getByTestId('job-state').filter({ hasText: 'COMPLETED' }).waitFor({ timeout: 200_000 });
    await page.getByTestId('tab-overview').click();
    const history = await page.locator('[data-testid=job-fields] tr[data-field=history] td').textContent();
    assert.match(history, new RegExp(`restored from checkpoint ${older.id} `));
    assert.equal(await page.locator('[data-testid=job-fields] tr[data-field=restarts] td').textContent(), '1');
    fs.writeFileSync(path.join(SHOTS, 'restart.json'), JSON.stringify({ restart_from: older.id, vacate: vacate.id }));
  });
});

test('delete a checkpoint from the table', async () => {
  const page = userPage;
  await check('07-delete', page, async () => {
    await page.getByTestId('tab-checkpoints').click();
    const cks = await tableCheckpoints(page);
    const victim = cks.filter((x) => x.status === 'Present' && x.source === 'periodic')[0];
    assert.ok(victim, JSON.stringify(cks));
    await page.getByTestId(`delete-${victim.id}`).click();
    await page.getByTestId(`delete-${victim.id}`).filter({ hasText: 'Confirm delete' }).click();
    await page.getByTestId('notice').filter({ hasText: `Checkpoint ${victim.id} deleted` }).waitFor();
    await page.locator(`[data-testid=ckpt-row-${victim.id}][data-status=Cleared]`).waitFor();
    assert.equal(await page.getByTestId(`restart-${victim.id}`).count(), 0);
  });
});

test('the Nodes and Cluster pages', async () => {
  const page = userPage;
  await check('08-nodes-cluster', page, async () => {
    await page.getByTestId('nav-nodes').click();
    const row = page.getByTestId('node-row-node1');
    await row.waitFor();
    assert.match(await row.locator('[data-col=state]').textContent(), /^(IDLE|MIXED|ALLOCATED)/);
    assert.match(await row.locator('[data-col=cpus]').textContent(), /^\d+ \/ \d+$/);
    await page.screenshot({ path: path.join(SHOTS, '08-nodes.png'), fullPage: true });
    await page.getByTestId('nav-cluster').click();
    await page.locator('[data-testid=chart-stats][data-points]').waitFor();
    const counts = await page.locator('[data-testid=stats-body] td[data-col]').allTextContents();
    assert.ok(counts.reduce((a, b) => a + Number(b), 0) >= 4, `checkpoints per hour: ${counts}`);
    await page.getByTestId('partition-row-debug').waitFor();
    await page.getByTestId('logout').click();
    await page.getByTestId('token-input').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('fsched.token')), null);
  });
});
