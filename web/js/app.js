// The console's shell: login, sidebar, messages and the hash router
// (#/jobs, #/jobs/ID[/checkpoints|/plots], #/nodes, #/cluster).
import { ApiError, get, getToken, parseToken, setToken, setUnauthorizedHandler } from './api.js';
import { JobsView } from './jobs.js';
import { JobView } from './job.js';
import { NodesView } from './nodes.js';
import { ClusterView } from './cluster.js';

const $ = (id) => document.getElementById(id);
let current = null; // { key, view }
let whoami = null;
let noticeTimer = null;

export const ui = {
  get whoami() { return whoami; },
  showError(msg) {
    $('message-text').textContent = msg;
    $('message').hidden = false;
  },
  clearError() {
    $('message').hidden = true;
    $('message-text').textContent = '';
  },
  showNotice(msg) {
    const n = $('notice');
    n.textContent = msg;
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { n.hidden = true; }, 8000);
  },
  // Runs a request for a button: errors (403, 409, 500...) go to the message bar.
  async act(promise, okText) {
    try {
      const r = await promise;
      ui.clearError();
      if (okText) ui.showNotice(typeof okText === 'function' ? okText(r) : okText);
      return r;
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) ui.showError(e.message);
      return undefined;
    }
  },
};

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  const section = parts[0] || 'jobs';
  if (section === 'jobs' && parts[1]) {
    return { key: `job/${parts[1]}`, section, make: () => new JobView(ui, parts[1]), tab: parts[2] || 'overview' };
  }
  if (section === 'nodes') return { key: 'nodes', section, make: () => new NodesView(ui) };
  if (section === 'cluster') return { key: 'cluster', section, make: () => new ClusterView(ui) };
  return { key: 'jobs', section: 'jobs', make: () => new JobsView(ui) };
}

function unmount() {
  if (current) current.view.unmount();
  current = null;
  $('view').replaceChildren();
}

function render() {
  if (!whoami) return;
  const r = route();
  for (const a of document.querySelectorAll('.sidebar nav a')) {
    a.classList.toggle('active', a.dataset.section === r.section);
    if (a.dataset.section === r.section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (current && current.key === r.key) {
    if (r.tab && current.view.setTab) current.view.setTab(r.tab);
    return;
  }
  unmount();
  ui.clearError();
  const view = r.make();
  current = { key: r.key, view };
  view.mount($('view'), r.tab);
}

function showLogin(msg) {
  unmount();
  whoami = null;
  $('shell').hidden = true;
  $('login').hidden = false;
  const e = $('login-error');
  e.textContent = msg || '';
  e.hidden = !msg;
  $('token-input').focus();
}

async function enter() {
  try {
    whoami = await get('/v1/whoami');
  } catch (e) {
    setToken('');
    showLogin(e.message);
    return;
  }
  $('login').hidden = true;
  $('shell').hidden = false;
  $('whoami').textContent = `${whoami.user} (uid ${whoami.uid}${whoami.root ? ', root' : ''})`;
  render();
}

setUnauthorizedHandler((msg) => {
  setToken('');
  showLogin(msg);
});

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = parseToken($('token-input').value);
  if (!t) {
    showLogin('Paste a token first (scontrol token prints one).');
    return;
  }
  setToken(t);
  $('token-input').value = '';
  $('login-error').hidden = true;
  enter();
});
$('token-input').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) {
    ev.preventDefault();
    $('login-form').requestSubmit();
  }
});
$('logout').addEventListener('click', () => {
  setToken('');
  showLogin('');
});
$('message-close').addEventListener('click', () => ui.clearError());
window.addEventListener('hashchange', render);

if (getToken()) enter();
else showLogin('');
