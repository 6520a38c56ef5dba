// A job's page: Overview (every field of the job's JSON, as scontrol show job), its
// Checkpoints (trigger, vacate, restart from one, delete, how many are retained) and
// Plots of its checkpoints. Polled every 2 s; faster while a checkpoint is being made.
import { del, get, post } from './api.js';
import { el, fmtBytes, fmtSeconds, fmtTime, fmtTimeShort, fmtValue, poller } from './util.js';
import { Chart } from './charts.js';

const TABS = [['overview', 'Overview'], ['checkpoints', 'Checkpoints'], ['plots', 'Plots']];
const ACTIONS = [['cancel', 'Cancel'], ['hold', 'Hold'], ['release', 'Release'], ['requeue', 'Requeue'],
  ['suspend', 'Suspend'], ['resume', 'Resume']];
const CKPT_COLUMNS = [
  ['checkpoint_id', 'ID'], ['description', 'Description'], ['trigger_time', 'Triggered'],
  ['completion_time', 'Completed'], ['duration', 'Duration'], ['status', 'Status'], ['source', 'Source'],
  ['job_version', 'Job version'], ['location', 'Location'], ['size', 'Size'], ['freeze_ms', 'Freeze'],
  ['kind', 'Kind'], ['parent_id', 'Parent'], ['actions', ''],
];

export class JobView {
  constructor(ui, id) {
    this.ui = ui;
    this.id = id;
    this.job = null;
    this.ckpts = [];
    this.pending = []; // checkpoints asked for whose request has not answered: {n, mode, description, above}
    this.seq = 0;
    this.armed = null; // checkpoint id whose Delete waits for its confirmation click
    this.drawn = {};
    this.charts = [];
  }

  path(rest = '') {
    return `/v1/jobs/${encodeURIComponent(this.id)}${rest}`;
  }

  mount(root, tab) {
    this.title = el('h2', { 'data-testid': 'job-title' }, `Job ${this.id}`);
    this.tabLinks = {};
    this.panels = {};
    const nav = el('nav', { class: 'tabs', role: 'tablist' });
    for (const [k, t] of TABS) {
      this.tabLinks[k] = el('a', { href: `#/jobs/${this.id}${k === 'overview' ? '' : `/${k}`}`, role: 'tab',
        id: `tab-${k}`, 'data-testid': `tab-${k}` }, t);
      nav.append(this.tabLinks[k]);
      this.panels[k] = el('section', { class: 'panel', role: 'tabpanel', 'data-testid': `panel-${k}`, hidden: true });
    }
    this.status = el('span', { class: 'muted', 'data-testid': 'job-status' });
    root.append(el('p', { class: 'crumbs' }, el('a', { href: '#/jobs' }, '← Jobs'), ' ', this.status),
      this.title, nav, ...Object.values(this.panels));
    this.buildOverview();
    this.buildCheckpoints();
    this.setTab(tab || 'overview');
    this.poll = poller(() => this.refresh(), 2000);
  }

  unmount() {
    this.poll.stop();
    for (const c of this.charts) c.destroy();
    this.charts = [];
    this.gone = true;
  }

  setTab(tab) {
    if (!this.panels[tab]) tab = 'overview';
    this.tab = tab;
    for (const [k, p] of Object.entries(this.panels)) {
      p.hidden = k !== tab;
      this.tabLinks[k].classList.toggle('active', k === tab);
      this.tabLinks[k].setAttribute('aria-selected', String(k === tab));
    }
    if (tab === 'plots' && !this.charts.length) this.buildPlots();
    this.draw();
  }

  async refresh() {
    const [job, ck] = await Promise.allSettled([get(this.path()), get(this.path('/checkpoints'))]);
    if (this.gone) return;
    if (job.status === 'rejected') {
      this.status.textContent = job.reason.status === 404 ? 'No such job.' : `Not updated: ${job.reason.message}`;
      return;
    }
    this.status.textContent = '';
    this.job = job.value;
    if (ck.status === 'fulfilled') this.ckpts = ck.value.checkpoints || [];
    this.draw();
  }

  draw() {
    if (!this.job) return;
    const j = this.job;
    this.title.replaceChildren(`Job ${j.job_id}: `, el('span', { 'data-testid': 'job-name' }, j.name), ' ',
      el('span', { class: `state st-${j.state}`, 'data-testid': 'job-state' }, j.state));
    if (this.tab === 'overview') this.drawOverview();
    if (this.tab === 'checkpoints') this.drawCheckpoints();
    if (this.tab === 'plots') this.drawPlots();
  }

  // Redraws a part only when what it shows has changed, so that clicks and the
  // selection are not disturbed every 2 s.
  changed(part, value) {
    const s = JSON.stringify(value);
    if (this.drawn[part] === s) return false;
    this.drawn[part] = s;
    return true;
  }

  // ------------------------------------------------------------- overview
  buildOverview() {
    const p = this.panels.overview;
    const bar = el('div', { class: 'toolbar', 'data-testid': 'job-actions' });
    for (const [a, label] of ACTIONS) {
      bar.append(el('button', { type: 'button', 'data-testid': `action-${a}`, onclick: () => this.action(a, label) }, label));
    }
    this.fields = el('tbody');
    p.append(bar, el('table', { class: 'fields', 'data-testid': 'job-fields' }, this.fields));
  }

  async action(a, label) {
    const r = await this.ui.act(post(this.path(`/${a}`), {}), `${label}: done for job ${this.id}`);
    if (r !== undefined) this.poll.now();
  }

  drawOverview() {
    if (!this.changed('overview', this.job)) return;
    const rows = Object.entries(this.job).map(([k, v]) =>
      el('tr', { 'data-field': k }, el('th', { scope: 'row' }, k), el('td', { class: 'pre' }, fmtValue(k, v))));
    this.fields.replaceChildren(...rows);
  }

  // ------------------------------------------------------------- checkpoints
  buildCheckpoints() {
    const p = this.panels.checkpoints;
    this.formMode = null;
    this.descInput = el('input', { type: 'text', id: 'ckpt-description', 'data-testid': 'ckpt-description',
      maxlength: '1000', placeholder: 'Description (optional)' });
    this.formTitle = el('span', { class: 'form-title' });
    this.formSubmit = el('button', { type: 'submit', 'data-testid': 'ckpt-submit' }, 'Start');
    this.form = el('form', { class: 'inline-form', 'data-testid': 'ckpt-form', hidden: true,
      onsubmit: (ev) => { ev.preventDefault(); this.submitForm(); } },
    this.formTitle, this.descInput, this.formSubmit,
    el('button', { type: 'button', 'data-testid': 'ckpt-cancel', onclick: () => this.closeForm() }, 'Cancel'));
    this.retained = el('input', { type: 'number', min: '0', max: '1000', step: '1', id: 'num-retained',
      'data-testid': 'num-retained', class: 'num', oninput: () => { this.retainedDirty = true; } });
    const bar = el('div', { class: 'toolbar' },
      el('button', { type: 'button', 'data-testid': 'trigger-checkpoint', onclick: () => this.openForm('checkpoint') },
        'Trigger checkpoint'),
      el('button', { type: 'button', 'data-testid': 'vacate', onclick: () => this.openForm('vacate') }, 'Vacate'),
      el('span', { class: 'spacer-x' }),
      el('label', { for: 'num-retained' }, 'Retained checkpoints '), this.retained,
      el('button', { type: 'button', 'data-testid': 'save-retained', onclick: () => this.saveRetained() }, 'Save'),
      el('span', { class: 'muted', 'data-testid': 'retained-hint' }, '0 = the cluster default'));
    this.ckBody = el('tbody', { 'data-testid': 'ckpt-body', onclick: (ev) => this.rowClick(ev) });
    const head = el('thead', {}, el('tr', {}, ...CKPT_COLUMNS.map(([k, t]) => el('th', { scope: 'col', 'data-col': k }, t))));
    p.append(bar, this.form,
      el('div', { class: 'hscroll' }, el('table', { class: 'ckpt-table', 'data-testid': 'ckpt-table' }, head, this.ckBody)));
  }

  openForm(mode) {
    this.formMode = mode;
    this.formTitle.textContent = mode === 'vacate'
      ? 'Vacate: checkpoint the job, then stop it (it stays pending until restarted).'
      : 'Trigger a checkpoint of the running job.';
    this.formSubmit.textContent = mode === 'vacate' ? 'Vacate' : 'Trigger';
    this.form.hidden = false;
    this.descInput.focus();
  }

  closeForm() {
    this.form.hidden = true;
    this.descInput.value = '';
    this.formMode = null;
  }

  // The request answers once the checkpoint is Present (seconds): meanwhile a
  // placeholder row says Creating, until the polled list shows the checkpoint itself.
  async submitForm() {
    const mode = this.formMode;
    const description = this.descInput.value;
    this.closeForm();
    const above = this.ckpts.reduce((m, c) => Math.max(m, c.checkpoint_id), 0);
    const p = { n: ++this.seq, mode, description, above };
    this.pending.push(p);
    this.poll.interval = 500;
    this.draw();
    this.poll.now();
    const what = mode === 'vacate' ? 'Vacate' : 'Checkpoint';
    await this.ui.act(post(this.path(`/${mode}`), { description }),
      (c) => `${what} of job ${this.id}: checkpoint ${c.checkpoint_id} is ${c.status}` +
        (mode === 'vacate' ? '; the job is pending until restarted.' : '.'));
    this.pending = this.pending.filter((x) => x !== p);
    if (!this.pending.length) this.poll.interval = 2000;
    if (!this.gone) this.poll.now();
  }

  async saveRetained() {
    const v = Number(this.retained.value);
    if (!Number.isInteger(v) || v < 0) {
      this.ui.showError('Retained checkpoints: give a whole number, 0 or more.');
      return;
    }
    const r = await this.ui.act(post(this.path('/update'), { num_retained: v }),
      `Job ${this.id} keeps ${v === 0 ? 'the cluster default number of' : v} checkpoints.`);
    if (r !== undefined) {
      this.retainedDirty = false;
      this.poll.now();
    }
  }

  async rowClick(ev) {
    const b = ev.target.closest('button[data-action]');
    if (!b) return;
    const cid = Number(b.dataset.ckpt);
    if (b.dataset.action === 'restart') {
      const r = await this.ui.act(post(this.path('/restart'), { checkpoint_id: cid }),
        `Job ${this.id} will restart from checkpoint ${cid}.`);
      if (r !== undefined) this.poll.now();
    } else if (b.dataset.action === 'delete') {
      if (this.armed !== cid) {
        this.armed = cid;
        clearTimeout(this.armTimer);
        this.armTimer = setTimeout(() => { this.armed = null; this.drawCheckpoints(); }, 5000);
        this.drawCheckpoints();
        return;
      }
      this.armed = null;
      const r = await this.ui.act(del(this.path(`/checkpoints/${cid}`)), `Checkpoint ${cid} deleted.`);
      if (r !== undefined) this.poll.now();
      else this.drawCheckpoints();
    }
  }

  drawCheckpoints() {
    if (!this.job) return;
    if (!this.retainedDirty && document.activeElement !== this.retained) {
      this.retained.value = String(this.job.num_retained ?? 0);
    }
    const shown = this.pending.filter((p) =>
      !this.ckpts.some((c) => c.checkpoint_id > p.above && c.description === p.description));
    if (!this.changed('checkpoints', [this.ckpts, shown, this.armed])) return;
    const rows = this.ckpts.map((c) => this.ckRow(c));
    for (const p of shown) {
      rows.push(el('tr', { class: 'pending-row', 'data-testid': `ckpt-row-pending-${p.n}`, dataset: { description: p.description } },
        el('td', { 'data-col': 'checkpoint_id' }, '…'),
        el('td', { 'data-col': 'description' }, p.description),
        el('td', { colspan: 3 }, p.mode === 'vacate' ? 'vacate requested' : 'requested'),
        el('td', { 'data-col': 'status' }, el('span', { class: 'status ck-Creating' }, 'Creating')),
        el('td', { colspan: CKPT_COLUMNS.length - 6 })));
    }
    if (!rows.length) rows.push(el('tr', { class: 'empty' }, el('td', { colspan: CKPT_COLUMNS.length }, 'No checkpoints yet.')));
    this.ckBody.replaceChildren(...rows);
  }

  ckRow(c) {
    const id = c.checkpoint_id;
    const actions = el('td', { 'data-col': 'actions', class: 'actions' });
    if (c.status === 'Present') {
      actions.append(el('button', { type: 'button', 'data-testid': `restart-${id}`, dataset: { action: 'restart', ckpt: id },
        title: 'Restart the job from this checkpoint' }, 'Restart from this checkpoint'));
    }
    if (c.status !== 'Cleared' && c.status !== 'Creating') {
      actions.append(el('button', { type: 'button', class: this.armed === id ? 'danger' : '', 'data-testid': `delete-${id}`,
        dataset: { action: 'delete', ckpt: id } }, this.armed === id ? 'Confirm delete' : 'Delete'));
    }
    const incremental = c.kind === 'incremental';
    return el('tr', { 'data-testid': `ckpt-row-${id}`, dataset: { ckptId: id, status: c.status, description: c.description } },
      el('td', { 'data-col': 'checkpoint_id' }, String(id)),
      el('td', { 'data-col': 'description', class: 'desc' }, c.description),
      el('td', { 'data-col': 'trigger_time', title: fmtTime(c.trigger_time) }, fmtTimeShort(c.trigger_time)),
      el('td', { 'data-col': 'completion_time', title: fmtTime(c.completion_time) }, fmtTimeShort(c.completion_time)),
      el('td', { 'data-col': 'duration' }, c.completion_time ? fmtSeconds(c.duration) : ''),
      el('td', { 'data-col': 'status' }, el('span', { class: `status ck-${c.status}` }, c.status),
        c.reason ? el('div', { class: 'reason', 'data-testid': `reason-${id}` }, c.reason) : null),
      el('td', { 'data-col': 'source' }, c.source),
      el('td', { 'data-col': 'job_version' }, String(c.job_version ?? '')),
      el('td', { 'data-col': 'location', class: 'path', title: c.location }, el('bdi', {}, c.location)),
      el('td', { 'data-col': 'size' }, c.size ? fmtBytes(c.size) : ''),
      el('td', { 'data-col': 'freeze_ms' }, c.freeze_ms ? `${Number(c.freeze_ms).toFixed(1)} ms` : ''),
      el('td', { 'data-col': 'kind' }, c.kind || ''),
      el('td', { 'data-col': 'parent_id' }, incremental && c.parent_id ? String(c.parent_id) : ''),
      actions);
  }

  // ------------------------------------------------------------- plots
  buildPlots() {
    const p = this.panels.plots;
    const box = el('div', { class: 'charts' });
    p.append(box);
    this.charts = [
      new Chart(box, { title: 'Checkpoint duration', yLabel: 'seconds', testid: 'chart-duration',
        series: [{ label: 'duration (s)', color: '#1565c0' }] }),
      new Chart(box, { title: 'Freeze time', yLabel: 'ms', testid: 'chart-freeze',
        series: [{ label: 'freeze (ms)', color: '#ef6c00' }] }),
      new Chart(box, { title: 'Image size', yLabel: 'bytes', bytes: true, testid: 'chart-size',
        series: [{ label: 'size', color: '#2e7d32' }, { label: 'chain size', color: '#9e9e9e' }] }),
    ];
  }

  drawPlots() {
    const made = this.ckpts.filter((c) => c.completion_time && (c.status === 'Present' || c.status === 'Cleared'))
      .sort((a, b) => a.trigger_time - b.trigger_time);
    if (!this.charts.length || !this.changed('plots', made)) return;
    const x = made.map((c) => c.trigger_time);
    this.charts[0].setData([x, made.map((c) => c.duration)]);
    this.charts[1].setData([x, made.map((c) => c.freeze_ms)]);
    this.charts[2].setData([x, made.map((c) => c.size), made.map((c) => c.chain_size ?? c.size)]);
  }
}
