// Shipments (/shipments), for producers and staff: open a shipment, hand it from device to
// device as the goods move, attach the batch's test reports and origin photos, print the
// QR label for the package and close the shipment. A static shell over the API, which
// authorizes every call:
//   GET  /api/v1/shipments?state=         the list          POST /api/v1/shipments   open one
//   POST /api/v1/shipments/{id}/segments  the next device   POST .../close           close it
//   GET/POST /api/v1/batches/{batch}/files  test reports and photos (multipart upload)
//   GET  /api/v1/shipments/{id}/qr.svg|png  the label; GET /api/v1/evidence/key for the link
//   GET  /api/v1/fleet, /api/v1/streams     suggestions for device and stream fields
import { config, currentLanguage, onLanguageChange, t } from './common.js';
import { $, api, ApiError, el, loadSession, logout, renderUser, session, showBanner } from './staff.js';

const STAFF = new Set(['admin', 'logistics']);
const LIST_EVERY_MS = 30000;
// telemetry.readings.PLAIN_ID: what the API takes as a device id.
const PLAIN_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const state = {
  shipments: [],
  filter: '',
  selected: null, // shipment id
  files: [],
  vkey: undefined, // the log's public key (null: the server has none yet)
};

const enc = encodeURIComponent;
const splitList = (text) => [...new Set(text.split(',').map((x) => x.trim()).filter(Boolean))];

function timeText(iso) {
  if (!iso) return '–';
  return new Date(iso).toLocaleString(currentLanguage(), {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false,
  });
}

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function currentDevice(s) {
  const open = s.segments.filter((g) => g.end == null);
  const last = open.length ? open[open.length - 1] : s.segments[s.segments.length - 1];
  return last ? last.device_id : '–';
}

function selected() {
  return state.shipments.find((s) => s.id === state.selected) || null;
}

// -- the list ------------------------------------------------------------------------------

function renderList() {
  const body = $('shipments-body');
  body.replaceChildren(
    ...state.shipments.map((s) => {
      const tr = el('tr');
      tr.dataset.shipment = s.id;
      tr.tabIndex = 0;
      tr.classList.toggle('selected', s.id === state.selected);
      const product = el('td');
      product.append(el('div', null, s.product), el('div', 'muted', s.batch));
      tr.append(
        el('td', 'mono', s.id),
        product,
        el('td', null, s.origin_site),
        el('td', 'mono', currentDevice(s)),
        el('td', null, timeText(s.opened_at)),
        el('td', null, t(`shipments.state_${s.state}`)),
      );
      tr.addEventListener('click', () => select(s.id));
      tr.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') select(s.id);
      });
      return tr;
    }),
  );
  $('shipments-empty').hidden = state.shipments.length > 0;
}

async function loadList() {
  const q = state.filter ? `?state=${enc(state.filter)}` : '';
  try {
    const body = await api('GET', `/api/v1/shipments${q}`);
    state.shipments = body.shipments;
    renderList();
    renderDetail();
  } catch (err) {
    if (err.status !== 401) showBanner(t('console.error_load', { detail: err.message }));
  }
}

// -- one shipment --------------------------------------------------------------------------

async function select(id) {
  state.selected = id;
  state.files = [];
  renderList();
  renderDetail();
  await loadFiles();
}

function fact(dl, key, value) {
  dl.append(el('dt', null, t(key)), el('dd', null, value));
}

function renderDetail() {
  const s = selected();
  $('detail').hidden = !s;
  if (!s) return;
  const open = s.state === 'open';
  $('detail-heading').textContent = t('shipments.detail_heading', { id: s.id });
  const badge = $('detail-state');
  badge.textContent = t(`shipments.state_${s.state}`);
  badge.dataset.state = s.state;
  const facts = $('detail-facts');
  facts.replaceChildren();
  fact(facts, 'shipments.product', s.product);
  fact(facts, 'shipments.batch', s.batch);
  fact(facts, 'shipments.origin', s.origin_site);
  fact(facts, 'shipments.profile', profileName(s.profile_id));
  fact(facts, 'shipments.col_opened', timeText(s.opened_at));
  if (s.closed_at) fact(facts, 'shipments.closed_at', timeText(s.closed_at));
  if (s.streams.length) fact(facts, 'shipments.streams', s.streams.join(', '));

  $('route-list').replaceChildren(
    ...s.segments.map((g) => {
      const li = el('li');
      li.dataset.device = g.device_id;
      li.append(
        el('span', 'mono', g.device_id),
        el('span', 'muted', ` ${timeText(g.start)} → ${g.end ? timeText(g.end) : t('shipments.now')}`),
      );
      if (g.label) li.append(el('span', null, ` · ${g.label}`));
      return li;
    }),
  );
  if (!s.segments.length) $('route-list').append(el('li', 'muted', t('shipments.route_empty')));
  $('handover-form').hidden = !open;
  $('upload-form').hidden = false;
  $('close-shipment').hidden = !open;

  const staff = STAFF.has(session.me?.role);
  for (const li of document.querySelectorAll('.staff-only')) li.hidden = !staff;
  $('report-pdf').href = `/api/v1/shipments/${enc(s.id)}/report.pdf?lang=${enc(currentLanguage())}`;
  $('report-csv').href = `/api/v1/shipments/${enc(s.id)}/report.csv`;
  renderLabel(s);
  renderFiles();
}

function renderLabel(s) {
  const trust = $('trust-link');
  trust.href = `/v/${enc(s.id)}${state.vkey ? `#k=${state.vkey}` : ''}`;
  const qr = $('qr');
  if (state.vkey === null) {
    // A label without the key would open a page that cannot verify: no QR until there is one.
    qr.hidden = true;
    $('qr-png').hidden = true;
    $('detail-error').textContent = t('shipments.no_key');
    $('detail-error').hidden = false;
    return;
  }
  qr.hidden = false;
  qr.src = `/api/v1/shipments/${enc(s.id)}/qr.svg`;
  qr.alt = t('shipments.qr_alt', { id: s.id });
  $('qr-png').hidden = false;
  $('qr-png').href = `/api/v1/shipments/${enc(s.id)}/qr.png`;
}

// Built-in profiles have names in both languages; a custom one has the name it was given.
function profileName(id) {
  const key = `profile.${id}`;
  const named = t(key);
  return named !== key ? named : (config.profiles || []).find((p) => p.id === id)?.name || id;
}

function showDetailError(err) {
  $('detail-error').textContent = t('console.action_failed', { detail: err.message });
  $('detail-error').hidden = false;
}

async function handover(event) {
  event.preventDefault();
  const s = selected();
  const device = $('handover-device').value.trim();
  if (!s || !device) return;
  $('detail-error').hidden = true;
  const body = { device_id: device };
  const label = $('handover-label').value.trim();
  if (label) body.label = label;
  try {
    const saved = await api('POST', `/api/v1/shipments/${enc(s.id)}/segments`, body);
    replaceShipment(saved);
    $('handover-device').value = '';
    $('handover-label').value = '';
  } catch (err) {
    if (err.status !== 401) showDetailError(err);
  }
}

async function closeShipment(event) {
  event.preventDefault();
  const s = selected();
  if (!s) return;
  $('close-submit').disabled = true;
  $('close-error').hidden = true;
  try {
    const saved = await api('POST', `/api/v1/shipments/${enc(s.id)}/close`, {});
    replaceShipment(saved);
    $('close-dialog').close();
  } catch (err) {
    if (err.status !== 401) {
      $('close-error').textContent = t('console.action_failed', { detail: err.message });
      $('close-error').hidden = false;
    }
  } finally {
    $('close-submit').disabled = false;
  }
}

function replaceShipment(saved) {
  const i = state.shipments.findIndex((x) => x.id === saved.id);
  if (i >= 0) state.shipments[i] = saved;
  else state.shipments.unshift(saved);
  renderList();
  renderDetail();
}

// -- files: test reports and origin photos of the product batch ---------------------------

async function loadFiles() {
  const s = selected();
  if (!s) return;
  try {
    const body = await api('GET', `/api/v1/batches/${enc(s.batch)}/files`);
    if (state.selected !== s.id) return; // another shipment was picked meanwhile
    state.files = body.files;
    renderFiles();
  } catch (err) {
    if (err.status !== 401) showDetailError(err);
  }
}

function renderFiles() {
  const list = $('file-list');
  list.replaceChildren(
    ...state.files.map((f) => {
      const li = el('li');
      li.dataset.sha256 = f.sha256;
      const a = el('a', null, f.name || f.sha256.slice(0, 12));
      a.href = f.url;
      a.target = '_blank';
      a.rel = 'noopener';
      li.append(
        el('span', 'file-kind', t(`shipments.kind_${f.kind}`)),
        a,
        el('span', 'muted', ` ${sizeText(f.size)} · ${timeText(f.uploaded_at)} · SHA-256 ${f.sha256.slice(0, 16)}…`),
      );
      return li;
    }),
  );
  $('files-empty').hidden = state.files.length > 0;
}

async function upload(event) {
  event.preventDefault();
  const s = selected();
  const file = $('upload-file').files[0];
  if (!s) return;
  $('detail-error').hidden = true;
  if (!file) {
    $('detail-error').textContent = t('shipments.pick_file');
    $('detail-error').hidden = false;
    return;
  }
  const form = new FormData();
  form.append('kind', $('upload-kind').value);
  form.append('shipment_id', s.id);
  form.append('file', file, file.name);
  try {
    await api('POST', `/api/v1/batches/${enc(s.batch)}/files`, form);
    $('upload-file').value = '';
    await loadFiles();
  } catch (err) {
    if (err.status !== 401) showDetailError(err);
  }
}

// -- a new shipment ------------------------------------------------------------------------

function openNew() {
  $('new-error').hidden = true;
  $('new-submit').disabled = false;
  const select = $('new-profile');
  select.replaceChildren(
    ...(config.profiles || []).map((p) => Object.assign(el('option', null, profileName(p.id)), { value: p.id })),
  );
  $('new-dialog').showModal();
  $('new-product').focus();
}

async function submitNew(event) {
  event.preventDefault();
  const body = {
    product: $('new-product').value.trim(),
    batch: $('new-batch').value.trim(),
    origin_site: $('new-origin').value.trim(),
    profile_id: $('new-profile').value,
    streams: splitList($('new-streams').value),
  };
  const device = $('new-device').value.trim();
  const missing = ['product', 'batch', 'origin_site'].find((k) => !body[k]);
  if (missing) {
    $('new-error').textContent = t('shipments.required', { field: t(`shipments.${missing === 'origin_site' ? 'origin' : missing}`) });
    $('new-error').hidden = false;
    return;
  }
  $('new-submit').disabled = true;
  try {
    // The device is checked first, so a wrong one creates nothing.
    if (device && !PLAIN_ID.test(device)) throw new ApiError(400, t('shipments.bad_device', { id: device }));
    let saved = await api('POST', '/api/v1/shipments', body);
    $('new-dialog').close();
    $('new-form').reset();
    replaceShipment(saved);
    // The first segment starts at the server's "now" (this browser's clock may be off).
    if (device) saved = await api('POST', `/api/v1/shipments/${enc(saved.id)}/segments`, { device_id: device });
    replaceShipment(saved);
    await select(saved.id);
  } catch (err) {
    if (err.status !== 401) {
      $('new-error').textContent = t('console.action_failed', { detail: err.message });
      $('new-error').hidden = false;
    }
  } finally {
    $('new-submit').disabled = false;
  }
}

// -- suggestions (what this user may read; a producer types ids) -------------------------

async function loadSuggestions() {
  const options = (id, values) =>
    $(id).replaceChildren(...[...new Set(values)].sort().map((v) => Object.assign(el('option'), { value: v })));
  if (STAFF.has(session.me?.role)) {
    try {
      const fleet = await api('GET', '/api/v1/fleet');
      options('device-options', fleet.devices.map((d) => d.device_id));
    } catch {
      // Suggestions only: the field takes any id.
    }
  }
  try {
    const streams = await api('GET', '/api/v1/streams');
    options('stream-options', streams.streams.map((s) => s.slug));
  } catch {
    // Suggestions only.
  }
}

async function loadKey() {
  try {
    const key = await api('GET', '/api/v1/evidence/key');
    state.vkey = key.vkey;
  } catch (err) {
    state.vkey = err.status === 503 ? null : undefined;
  }
}

// -- start ---------------------------------------------------------------------------------

function initControls() {
  $('state-filter').addEventListener('change', (e) => {
    state.filter = e.target.value;
    loadList();
  });
  $('new-shipment').addEventListener('click', openNew);
  $('new-form').addEventListener('submit', submitNew);
  $('new-cancel').addEventListener('click', () => $('new-dialog').close());
  $('handover-form').addEventListener('submit', handover);
  $('upload-form').addEventListener('submit', upload);
  $('close-shipment').addEventListener('click', () => {
    $('close-error').hidden = true;
    $('close-dialog').showModal();
  });
  $('close-form').addEventListener('submit', closeShipment);
  $('close-cancel').addEventListener('click', () => $('close-dialog').close());
  $('logout').addEventListener('click', logout);
}

async function start() {
  initControls();
  if (!(await loadSession())) return;
  $('to-console').hidden = !STAFF.has(session.me?.role);
  await Promise.all([loadKey(), loadList(), loadSuggestions()]);
  setInterval(() => {
    if (!document.hidden) loadList();
  }, LIST_EVERY_MS);
}

onLanguageChange(() => {
  renderUser();
  renderList();
  renderDetail();
});
start();
