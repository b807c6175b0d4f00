// What the signed-in pages (/console, /shipments) share: the session and its CSRF token,
// one way to call the API, and the header's user name and log-out button.
import { t } from './common.js';

export const session = {
  csrf: null,
  me: null, // { name, role } of the signed-in user
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const $ = (id) => document.getElementById(id);

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

export function toLogin() {
  location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
}

export function showBanner(text) {
  const banner = $('banner');
  banner.textContent = text || '';
  banner.hidden = !text;
}

// JSON in and out; a FormData body goes as multipart (the browser sets its boundary).
export async function api(method, url, body) {
  const headers = { Accept: 'application/json' };
  const form = body instanceof FormData;
  if (body !== undefined && !form) headers['Content-Type'] = 'application/json';
  // The session cookie is ambient: every state-changing request proves it came from our page.
  if (method !== 'GET' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : form ? body : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, t('console.error_network'));
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // Not JSON (a proxy's error page): the status alone will do.
  }
  if (response.status === 401) {
    toLogin();
    throw new ApiError(401, data?.error || 'HTTP 401');
  }
  if (!response.ok) {
    const detail = response.status === 403 ? t('console.error_forbidden') : data?.error || `HTTP ${response.status}`;
    throw new ApiError(response.status, detail);
  }
  return data;
}

export function renderUser() {
  const label = $('user');
  const me = session.me;
  label.hidden = !me?.name;
  if (!me) return;
  label.dataset.role = me.role;
  label.textContent = me.role ? t('console.signed_in', { name: me.name, role: t(`console.role_${me.role}`) }) : me.name;
}

// Who is signed in (false: not, and on the way to /login).
export async function loadSession() {
  let response;
  try {
    response = await fetch('/api/v1/session', { credentials: 'same-origin', cache: 'no-store' });
  } catch {
    showBanner(t('console.error_network'));
    return false;
  }
  if (response.status === 401) {
    toLogin();
    return false;
  }
  if (response.ok) {
    const s = await response.json();
    const user = typeof s.user === 'object' && s.user ? s.user : { name: s.user ?? s.name };
    const name = user.display_name || s.display_name || user.name || '';
    const role = user.role || s.role || '';
    session.csrf = s.csrf_token || null;
    session.me = { name, role };
    renderUser();
    $('logout').hidden = false;
  }
  // Anything else (no session API on this server): the API's own answers decide.
  document.body.dataset.auth = 'ok';
  return true;
}

export async function logout() {
  try {
    await api('DELETE', '/api/v1/session');
  } catch {
    // Signed out or not, the login page is where to go next.
  }
  toLogin();
}
