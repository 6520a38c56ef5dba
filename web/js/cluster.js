// Cluster: checkpoints per hour by status over the last 24 hours
// (GET /v1/checkpoints/stats), and the partitions.
import { get } from './api.js';
import { el, fmtTime, poller } from './util.js';
import { Chart, STATUS_COLORS } from './charts.js';

const STATUSES = ['Present', 'Cleared', 'Creating', 'Failed', 'Timeout', 'Skipped'];

export class ClusterView {
  constructor(ui) {
    this.ui = ui;
    this.drawn = '';
  }

  mount(root) {
    this.status = el('span', { class: 'muted', 'data-testid': 'cluster-status' }, 'Loading…');
    const box = el('div', { class: 'charts' });
    this.statsBody = el('tbody', { 'data-testid': 'stats-body' });
    this.partsBody = el('tbody', { 'data-testid': 'partitions-body' });
    root.append(el('h2', {}, 'Cluster'), el('div', { class: 'toolbar' }, this.status), box,
      el('h3', {}, 'Checkpoints per hour'),
      el('div', { class: 'hscroll' }, el('table', { class: 'stats-table', 'data-testid': 'stats-table' },
        el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Hour'),
          ...STATUSES.map((s) => el('th', { scope: 'col' }, s)))), this.statsBody)),
      el('h3', {}, 'Partitions'),
      el('table', { class: 'parts-table', 'data-testid': 'partitions-table' },
        el('thead', {}, el('tr', {}, ...['Partition', 'State', 'Default', 'Nodes', 'CPUs', 'Max time']
          .map((h) => el('th', { scope: 'col' }, h)))), this.partsBody));
    this.chart = new Chart(box, { title: 'Checkpoints per hour by status (last 24 hours)', yLabel: 'checkpoints',
      stepped: true, testid: 'chart-stats', series: STATUSES.map((s) => ({ label: s, color: STATUS_COLORS[s] })) });
    this.poll = poller(() => this.refresh(), 10000);
  }

  unmount() {
    this.poll.stop();
    this.chart.destroy();
    this.gone = true;
  }

  async refresh() {
    let stats, parts;
    try {
      [stats, parts] = await Promise.all([get('/v1/checkpoints/stats'), get('/v1/partitions')]);
    } catch (e) {
      if (!this.gone) this.status.textContent = `Not updated: ${e.message}`;
      return;
    }
    if (this.gone) return;
    this.status.textContent = '';
    const key = JSON.stringify([stats, parts]);
    if (key === this.drawn) return;
    this.drawn = key;
    const hours = [...(stats.hours || [])].sort((a, b) => a.hour - b.hour);
    this.chart.setData([hours.map((h) => h.hour),
      ...STATUSES.map((s) => hours.map((h) => (h.counts && h.counts[s]) || 0))]);
    this.statsBody.replaceChildren(...hours.filter((h) => STATUSES.some((s) => h.counts && h.counts[s]))
      .reverse().map((h) => el('tr', { 'data-hour': h.hour }, el('td', {}, fmtTime(h.hour)),
        ...STATUSES.map((s) => el('td', { 'data-col': s }, String((h.counts && h.counts[s]) || 0))))));
    if (!this.statsBody.children.length) {
      this.statsBody.append(el('tr', { class: 'empty' }, el('td', { colspan: STATUSES.length + 1 }, 'No checkpoints in the last 24 hours.')));
    }
    this.partsBody.replaceChildren(...(parts.partitions || []).map((p) => el('tr', { 'data-testid': `partition-row-${p.name}` },
      el('td', {}, p.name), el('td', {}, p.state), el('td', {}, p.default ? 'yes' : ''),
      el('td', {}, `${(p.nodes || []).join(', ')} (${p.total_nodes})`), el('td', {}, String(p.total_cpus)),
      el('td', {}, p.max_time ? `${p.max_time} s` : 'UNLIMITED'))));
  }
}
