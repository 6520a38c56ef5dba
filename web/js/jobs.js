// Jobs: every job of the cluster, newest first, filtered by state and user, polled
// every 2 s (less often when the list takes long to come: at most a fifth of the
// controller's time for one console). Only the rows in sight are in the DOM (fixed row
// height), so 10,000 jobs cost the same to draw as 40.
import { get } from './api.js';
import { el, fmtDuration, fmtTime, poller } from './util.js';

const ROW_HEIGHT = 28; // px, as .jobs-table tbody tr in style.css
const OVERSCAN = 10;
const STATES = ['PENDING', 'RUNNING', 'SUSPENDED', 'COMPLETING', 'COMPLETED', 'FAILED', 'CANCELLED',
  'TIMEOUT', 'NODE_FAIL'];
const COLUMNS = [
  ['job_id', 'Job ID'], ['name', 'Name'], ['user', 'User'], ['state', 'State'], ['nodes', 'Node(s)'],
  ['run_time', 'Run time'], ['last_checkpoint', 'Last checkpoint'],
];

export class JobsView {
  constructor(ui) {
    this.ui = ui;
    this.jobs = [];
    this.shown = [];
    this.users = '';
    this.state = sessionStorage.getItem('fsched.jobs.state') || '';
    this.user = sessionStorage.getItem('fsched.jobs.user') || '';
    this.frame = 0;
  }

  mount(root) {
    this.stateSel = el('select', { id: 'filter-state', 'data-testid': 'filter-state', onchange: () => this.filter() },
      el('option', { value: '' }, 'All states'), el('option', { value: 'active' }, 'Active (not ended)'),
      ...STATES.map((s) => el('option', { value: s }, s)));
    this.userSel = el('select', { id: 'filter-user', 'data-testid': 'filter-user', onchange: () => this.filter() },
      el('option', { value: '' }, 'All users'));
    this.stateSel.value = this.state;
    this.count = el('span', { class: 'count', 'data-testid': 'jobs-count' });
    this.status = el('span', { class: 'muted', 'data-testid': 'jobs-status' }, 'Loading…');
    this.tbody = el('tbody', { 'data-testid': 'jobs-body', onclick: (ev) => this.click(ev) });
    const cols = el('colgroup', {}, ...COLUMNS.map(([k]) => el('col', { class: `c-${k}` })));
    const head = el('thead', {}, el('tr', {}, ...COLUMNS.map(([k, t]) => el('th', { scope: 'col', 'data-col': k }, t))));
    this.table = el('table', { class: 'jobs-table', 'data-testid': 'jobs-table' }, cols, head, this.tbody);
    this.scroller = el('div', { class: 'vscroll', 'data-testid': 'jobs-scroll', onscroll: () => this.schedule() }, this.table);
    root.append(
      el('h2', {}, 'Jobs'),
      el('div', { class: 'toolbar' },
        el('label', {}, 'State ', this.stateSel), el('label', {}, 'User ', this.userSel), this.count, this.status),
      this.scroller);
    this.onResize = () => this.schedule();
    window.addEventListener('resize', this.onResize);
    this.poll = poller(() => this.refresh(), 2000);
  }

  unmount() {
    this.poll.stop();
    this.gone = true;
    cancelAnimationFrame(this.frame);
    window.removeEventListener('resize', this.onResize);
  }

  async refresh() {
    const t0 = performance.now();
    try {
      const r = await get('/v1/jobs');
      if (this.gone) return;
      const fetched = performance.now() - t0;
      this.poll.interval = Math.max(2000, 5 * fetched);
      this.jobs = r.jobs || [];
      this.jobs.sort((a, b) => b.job_id - a.job_id);
      this.updateUsers();
      this.filter();
      this.status.textContent = '';
      this.table.dataset.loadedMs = String(Math.round(performance.now() - t0));
      this.table.dataset.loaded = String((Number(this.table.dataset.loaded) || 0) + 1);
    } catch (e) {
      if (!this.gone) this.status.textContent = `Not updated: ${e.message}`;
    }
  }

  updateUsers() {
    const users = [...new Set(this.jobs.map((j) => j.user))].sort();
    const key = users.join('\n');
    if (key === this.users) return;
    this.users = key;
    const keep = this.userSel.value || this.user;
    this.userSel.replaceChildren(el('option', { value: '' }, 'All users'),
      ...users.map((u) => el('option', { value: u }, u)));
    if (keep && !users.includes(keep)) this.userSel.append(el('option', { value: keep }, keep));
    this.userSel.value = keep;
  }

  filter() {
    this.state = this.stateSel.value;
    this.user = this.userSel.value;
    sessionStorage.setItem('fsched.jobs.state', this.state);
    sessionStorage.setItem('fsched.jobs.user', this.user);
    const ended = new Set(['COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL']);
    this.shown = this.jobs.filter((j) =>
      (!this.state || (this.state === 'active' ? !ended.has(j.state) : j.state === this.state)) &&
      (!this.user || j.user === this.user));
    this.count.textContent = this.shown.length === this.jobs.length
      ? `${this.jobs.length} jobs` : `${this.shown.length} of ${this.jobs.length} jobs`;
    this.draw();
  }

  schedule() {
    cancelAnimationFrame(this.frame);
    this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    const n = this.shown.length;
    const view = this.scroller.clientHeight || 800;
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(n, Math.ceil((this.scroller.scrollTop + view) / ROW_HEIGHT) + OVERSCAN);
    const rows = [];
    if (first > 0) rows.push(spacer(first * ROW_HEIGHT));
    for (let i = first; i < last; i++) rows.push(row(this.shown[i]));
    if (last < n) rows.push(spacer((n - last) * ROW_HEIGHT));
    if (!n) {
      rows.push(el('tr', { class: 'empty' }, el('td', { colspan: COLUMNS.length },
        this.jobs.length ? 'No job matches the filters.' : 'No jobs.')));
    }
    this.tbody.replaceChildren(...rows);
  }

  click(ev) {
    if (ev.target.closest('a')) return;
    const tr = ev.target.closest('tr[data-job-id]');
    if (tr) location.hash = `#/jobs/${tr.dataset.jobId}`;
  }
}

function spacer(h) {
  return el('tr', { class: 'spacer', 'aria-hidden': 'true' }, el('td', { colspan: COLUMNS.length, style: `height:${h}px` }));
}

function row(j) {
  const lc = j.last_checkpoint;
  return el('tr', { class: 'job', 'data-testid': `job-row-${j.job_id}`, dataset: { jobId: j.job_id } },
    el('td', { 'data-col': 'job_id' }, el('a', { href: `#/jobs/${j.job_id}` }, String(j.job_id))),
    el('td', { 'data-col': 'name', title: j.name }, j.name),
    el('td', { 'data-col': 'user' }, j.user),
    el('td', { 'data-col': 'state' }, el('span', { class: `state st-${j.state}` }, j.state),
      j.state === 'PENDING' && j.reason && j.reason !== 'None' ? el('span', { class: 'muted' }, ` (${j.reason})`) : null),
    el('td', { 'data-col': 'nodes' }, j.nodes || ''),
    el('td', { 'data-col': 'run_time' }, fmtDuration(j.run_time)),
    el('td', { 'data-col': 'last_checkpoint', title: lc && lc.checkpoint_id ? `checkpoint ${lc.checkpoint_id}` : undefined },
      lc ? el('span', { class: `status ck-${lc.status}` }, lc.status) : '',
      lc ? ` ${fmtTime(lc.time)}` : ''));
}
