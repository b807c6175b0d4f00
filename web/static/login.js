// /login: name and password → POST /api/v1/session (JSON) → the page asked for in ?next=
// (the server has already checked it is a path on this site) or the console. A browser
// that is already logged in sees who it is, with Continue and Log out.
import { onLanguageChange, t } from './common.js';

const config = JSON.parse(document.getElementById('oc-config').textContent);
const $ = (id) => document.getElementById(id);
const els = {
  form: $('login-form'),
  name: $('name'),
  password: $('password'),
  submit: $('submit'),
  error: $('error'),
  signedIn: $('signed-in'),
  signedInText: $('signed-in-text'),
  continueLink: $('continue'),
  logout: $('logout'),
};
const next = config.next || '/console';
// The console is for staff: a producer who was sent there goes to the shipments instead.
const destination = (role) => (role === 'producer' && next === '/console' ? '/shipments' : next);
let lastError = null; // [key, vars]: re-rendered when the language changes
let current = null; // {user, role, csrf_token} while logged in

function showError(key, vars = {}) {
  lastError = key ? [key, vars] : null;
  els.error.hidden = !key;
  els.error.textContent = key ? t(key, vars) : '';
}

function render() {
  if (lastError) showError(...lastError);
  els.signedIn.hidden = !current;
  els.form.hidden = Boolean(current);
  if (current) {
    els.continueLink.href = destination(current.role);
    els.signedInText.textContent = t('login.signed_in', { user: current.user, role: t(`role.${current.role}`) });
  }
}

onLanguageChange(render);
els.continueLink.href = next;

async function post(method, body, headers = {}) {
  return fetch('/api/v1/session', {
    method,
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
}

els.form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const name = els.name.value.trim();
  const password = els.password.value;
  if (!name || !password) {
    showError('login.error_empty');
    return;
  }
  showError(null);
  els.submit.disabled = true;
  document.body.dataset.state = 'working';
  try {
    const response = await post('POST', { name, password });
    if (response.ok) {
      document.body.dataset.state = 'done';
      const who = await response.json().catch(() => ({}));
      window.location.assign(destination(who.role));
      return;
    }
    if (response.status === 401) showError('login.error_wrong');
    else if (response.status === 429) {
      const s = Number.parseInt(response.headers.get('Retry-After') || '60', 10);
      showError('login.error_locked', { s });
    } else showError('login.error_server', { status: response.status });
  } catch {
    showError('login.error_network');
  } finally {
    els.submit.disabled = false;
    if (document.body.dataset.state === 'working') document.body.dataset.state = 'error';
  }
});

els.logout.addEventListener('click', async () => {
  try {
    await post('DELETE', undefined, { 'X-CSRF-Token': current?.csrf_token || '' });
  } catch {
    // The cookie may outlive a failed request; the next login replaces it anyway.
  }
  current = null;
  render();
});

async function init() {
  try {
    const response = await fetch('/api/v1/session', { cache: 'no-store', credentials: 'same-origin' });
    if (response.ok) current = await response.json();
  } catch {
    // Not reachable now: the form is shown and says so when submitted.
  }
  render();
  if (!current) els.name.focus();
}

init();
