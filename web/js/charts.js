// Thin wrappers around uPlot (vendored by scripts/build-web.sh into vendor/).
import uPlot from '../vendor/uPlot.esm.js';
import { el, fmtBytes } from './util.js';

export const STATUS_COLORS = {
  Present: '#2e7d32', Cleared: '#9e9e9e', Creating: '#1565c0', Failed: '#c62828', Timeout: '#ef6c00',
  Skipped: '#6a1b9a',
};

// A time series chart in `box`: x is Unix seconds; series [{label, color, unit}].
export class Chart {
  constructor(box, { title, series, yLabel, bytes = false, stepped = false, testid }) {
    this.box = box;
    this.wrap = el('figure', { class: 'chart', 'data-testid': testid },
      el('figcaption', {}, title));
    this.plotBox = el('div', { class: 'plot' });
    this.empty = el('p', { class: 'muted empty-chart' }, 'No data yet.');
    this.wrap.append(this.plotBox, this.empty);
    box.append(this.wrap);
    const paths = stepped ? uPlot.paths.stepped({ align: 1 }) : undefined;
    const yValues = bytes ? (u, ticks) => ticks.map((v) => fmtBytes(v)) : undefined;
    this.opts = {
      width: this.width(),
      height: 220,
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { label: yLabel, values: yValues, size: bytes ? 70 : 50 }],
      series: [{}, ...series.map((s) => ({
        label: s.label, stroke: s.color, width: 2, paths,
        points: { show: true, size: 5, fill: s.color },
        value: bytes ? (u, v) => (v == null ? '' : fmtBytes(v)) : undefined,
      }))],
    };
    this.plot = null;
    this.onResize = () => this.plot && this.plot.setSize({ width: this.width(), height: 220 });
    window.addEventListener('resize', this.onResize);
  }

  width() {
    return Math.max(300, (this.box.clientWidth || 800) - 20);
  }

  setData(data) {
    const n = data[0].length;
    this.empty.hidden = n > 0;
    this.plotBox.hidden = n === 0;
    this.wrap.dataset.points = String(n);
    if (!n) return;
    if (!this.plot) this.plot = new uPlot({ ...this.opts, width: this.width() }, data, this.plotBox);
    else this.plot.setData(data);
  }

  destroy() {
    window.removeEventListener('resize', this.onResize);
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
