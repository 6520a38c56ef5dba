// Nodes: state, reason, CPUs and memory in use, load and the jobs on each node.
import { get } from './api.js';
import { el, fmtMiB, fmtPercent, fmtTime, poller } from './util.js';

const ON_NODE = new Set(['RUNNING', 'COMPLETING', 'SUSPENDED']);

export class NodesView {
  constructor(ui) {
    this.ui = ui;
    this.drawn = '';
  }

  mount(root) {
    this.body = el('tbody', { 'data-testid': 'nodes-body' });
    this.status = el('span', { class: 'muted', 'data-testid': 'nodes-status' }, 'Loading…');
    const head = ['Node', 'State', 'Reason', 'CPUs (alloc/total)', 'Memory (alloc/total)', 'Free memory', 'Load',
      'CPU', 'I/O wait', 'Memory use', 'Partitions', 'Last heartbeat', 'Jobs'];
    root.append(el('h2', {}, 'Nodes'), el('div', { class: 'toolbar' }, this.status),
      el('div', { class: 'hscroll' }, el('table', { class: 'nodes-table', 'data-testid': 'nodes-table' },
        el('thead', {}, el('tr', {}, ...head.map((h) => el('th', { scope: 'col' }, h)))), this.body)));
    this.poll = poller(() => this.refresh(), 2000);
  }

  unmount() {
    this.poll.stop();
    this.gone = true;
  }

  async refresh() {
    let nodes, jobs;
    const t0 = performance.now();
    try {
      [nodes, jobs] = await Promise.all([get('/v1/nodes'), get('/v1/jobs')]);
      this.poll.interval = Math.max(2000, 5 * (performance.now() - t0)); // as the Jobs page
    } catch (e) {
      if (!this.gone) this.status.textContent = `Not updated: ${e.message}`;
      return;
    }
    if (this.gone) return;
    this.status.textContent = '';
    const byNode = new Map();
    for (const j of jobs.jobs || []) {
      if (!ON_NODE.has(j.state) || !j.nodes) continue;
      for (const n of String(j.nodes).split(',')) {
        if (!byNode.has(n)) byNode.set(n, []);
        byNode.get(n).push(j.job_id);
      }
    }
    const list = nodes.nodes || [];
    const key = JSON.stringify([list, [...byNode]]);
    if (key === this.drawn) return;
    this.drawn = key;
    this.body.replaceChildren(...list.map((n) => row(n, (byNode.get(n.name) || []).sort((a, b) => a - b))));
  }
}

function row(n, jobs) {
  const reason = n.reason ? `${n.reason}${n.reason_user ? ` [${n.reason_user}@${fmtTime(n.reason_time)}]` : ''}` : '';
  return el('tr', { 'data-testid': `node-row-${n.name}` },
    el('td', { 'data-col': 'name' }, n.name),
    el('td', { 'data-col': 'state' }, el('span', { class: `state nst-${n.state}` }, n.state + (n.not_responding ? '*' : '')),
      n.not_responding ? el('div', { class: 'reason' }, 'not responding') : null),
    el('td', { 'data-col': 'reason', class: 'desc' }, reason,
      (n.drain_blocked || []).length ? el('div', { class: 'reason' }, `Drain blocked: ${JSON.stringify(n.drain_blocked)}`) : null),
    el('td', { 'data-col': 'cpus' }, `${n.alloc_cpus} / ${n.cpus}`),
    el('td', { 'data-col': 'memory' }, `${fmtMiB(n.alloc_memory)} / ${fmtMiB(n.real_memory)}`),
    el('td', { 'data-col': 'free_memory' }, fmtMiB(n.free_memory)),
    el('td', { 'data-col': 'load' }, n.load !== undefined ? Number(n.load).toFixed(2) : ''),
    el('td', { 'data-col': 'cpu_util' }, fmtPercent(n.cpu_util)),
    el('td', { 'data-col': 'io_wait' }, fmtPercent(n.io_wait)),
    el('td', { 'data-col': 'mem_util' }, fmtPercent(n.mem_util)),
    el('td', { 'data-col': 'partitions' }, (n.partitions || []).join(', ')),
    el('td', { 'data-col': 'last_heartbeat' }, fmtTime(n.last_heartbeat)),
    el('td', { 'data-col': 'jobs' }, ...jobs.flatMap((id, i) => [i ? ', ' : '', el('a', { href: `#/jobs/${id}` }, String(id))])));
}
