// The REST API of fschedctld. The token (a JWT from `scontrol token`) is kept in
// sessionStorage and sent in the X-SLURM-USER-TOKEN header of every request; no cookie
// is ever sent (credentials: 'omit'), so a state-changing request needs the token.

const KEY = 'fsched.token';
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getToken() {
  return sessionStorage.getItem(KEY) || '';
}

// Accepts what `scontrol token` prints (SLURM_JWT=..., also after "export ") or the
// bare token.
export function parseToken(text) {
  let t = String(text || '').trim();
  t = t.replace(/^export\s+/, '').replace(/^SLURM_JWT=/, '').trim();
  t = t.replace(/^["']|["']$/g, '');
  return t;
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export async function api(method, path, body) {
  const headers = { 'X-SLURM-USER-TOKEN': getToken(), Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `cannot reach fschedctld: ${e.message}`);
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    if (r.ok) throw new ApiError(r.status, `${method} ${path}: the reply is not JSON`);
  }
  if (!r.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `${r.status} ${r.statusText}`;
    const err = new ApiError(r.status, msg);
    if (r.status === 401) onUnauthorized(msg);
    throw err;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body = {}) => api('POST', path, body);
export const del = (path) => api('DELETE', path);
