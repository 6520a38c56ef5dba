// Small helpers shared by the views. Every string that comes from the server is put in
// the page as text (text nodes, textContent, attribute values), never parsed as HTML.

// el('td', {class: 'x', dataset: {col: 'state'}}, 'text', child...): children that are
// strings or numbers become text nodes.
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const pad = (n) => String(n).padStart(2, '0');

// Unix seconds as local "YYYY-MM-DD HH:MM:SS"; "" for 0 or none.
export function fmtTime(t) {
  if (!t) return '';
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// fmtTime without the date when it is today.
export function fmtTimeShort(t) {
  const s = fmtTime(t);
  return s && s.slice(0, 10) === fmtTime(Date.now() / 1000).slice(0, 10) ? s.slice(11) : s;
}

// Seconds as squeue prints a run time: [D-]HH:MM:SS, or M:SS under an hour.
export function fmtDuration(s) {
  s = Math.max(0, Math.floor(s || 0));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d) return `${d}-${pad(h)}:${pad(m)}:${pad(sec)}`;
  if (h) return `${h}:${pad(m)}:${pad(sec)}`;
  return `${m}:${pad(sec)}`;
}

export function fmtSeconds(s) {
  if (s === undefined || s === null) return '';
  return s < 10 ? `${Number(s).toFixed(2)} s` : `${Number(s).toFixed(1)} s`;
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function fmtMiB(mb) {
  if (mb === undefined || mb === null) return '';
  return mb >= 10240 ? `${(mb / 1024).toFixed(1)} GiB` : `${mb} MiB`;
}

export function fmtPercent(r) {
  if (r === undefined || r === null) return '';
  return `${(r * 100).toFixed(0)}%`;
}

// A value of a job or node field as scontrol would show it.
export function fmtValue(key, v) {
  if (v === null || v === undefined) return '(null)';
  if (/_time$|^last_heartbeat$/.test(key) && typeof v === 'number' && key !== 'run_time' &&
      key !== 'time_limit') {
    return v ? `${fmtTime(v)} (${v})` : '0';
  }
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join('\n') : '(none)';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

// A poller: calls fn now and then every `ms`, never two at once, until stop(). A
// hidden page polls at most every 10 s.
export function poller(fn, ms) {
  let timer = null, stopped = false, running = false, again = false;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    running = true;
    try { await fn(); } catch { /* the view shows its own errors */ }
    running = false;
    if (stopped) return;
    const wait = again ? 0 : document.hidden ? Math.max(ms, 10000) : ms;
    again = false;
    timer = setTimeout(tick, wait);
  };
  tick();
  return {
    stop() { stopped = true; if (timer) clearTimeout(timer); },
    // Polls again at once (after the request under way, if one is).
    now() {
      if (running) again = true;
      else if (!stopped) { if (timer) clearTimeout(timer); tick(); }
    },
    set interval(v) { ms = v; },
  };
}
