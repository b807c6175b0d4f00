// The logistics console (/console): fleet table, alert inbox, a device's history chart and
// the streams, all live. The page is a static shell; every datum comes from the API, which
// is where authorization happens:
//   GET  /api/v1/session            who is signed in, and the CSRF token (401: go to /login)
//   GET  /api/v1/fleet              devices, profiles, limits, thresholds, latest readings
//   GET  /api/v1/alerts?state=active, GET /api/v1/alerts/{id} (its audit trail)
//   POST /api/v1/alerts/{id}/acknowledge | resolve      (X-CSRF-Token, like every write)
//   GET  /api/v1/devices/{id}/history?from=&to=         min/mean/max buckets + limits
//   GET  /api/v1/streams            every few seconds (status, viewers, uptime)
//   WS   /api/v1/live?all=1         snapshot, then readings and alert events
// Plain ES module, no framework; the chart is uPlot, vendored under /static/vendor/.
import { currentLanguage, formatElapsed, onLanguageChange, t } from './common.js';
import { $, api, el, loadSession, logout, renderUser, showBanner } from './staff.js';
import uPlot from './vendor/uplot/uPlot.esm.js';

const SITE_STORAGE = 'origincast.console.site';
const STREAMS_EVERY_MS = 5000;
const FLEET_EVERY_MS = 60000; // names, sites and profiles change rarely; readings come live
const HISTORY_EVERY_MS = 60000;
const RANGES = { '1h': 3600e3, '6h': 6 * 3600e3, '24h': 24 * 3600e3, '7d': 7 * 24 * 3600e3 };
const STATE_ORDER = { alert: 0, offline: 1, stale: 2, ok: 3 };
const SEVERITY_ORDER = { critical: 0, major: 1, minor: 2, warning: 3 };

const state = {
  devices: new Map(), // device_id -> fleet entry: name, site_id, profile_id, limits, offline_after_s
  readings: new Map(), // device_id -> newest reading
  alerts: new Map(), // alert id -> alert, open or acknowledged
  staleAfterS: 120,
  clockOffsetMs: 0, // server clock − this browser's, so ages do not depend on a wrong PC clock
  sort: { key: 'state', dir: 1 },
  site: '',
  selected: null, // the device whose history is shown
  range: '24h',
  custom: null, // { from: Date, to: Date }
  live: 'connecting',
  retryAt: 0,
  streams: [],
};

// -- formatting ----------------------------------------------------------------------------


function now() {
  return Date.now() + state.clockOffsetMs;
}

function ageText(seconds) {
  if (seconds == null) return t('console.never');
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return t('console.age_s', { n: s });
  if (s < 3600) return t('console.age_m', { n: Math.floor(s / 60) });
  if (s < 86400) return t('console.age_h', { n: Math.floor(s / 3600) });
  return t('console.age_d', { n: Math.floor(s / 86400) });
}

function timeText(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  const opts = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
  if (Math.abs(now() - d.getTime()) > 20 * 3600e3) Object.assign(opts, { month: 'short', day: 'numeric' });
  return d.toLocaleString(currentLanguage(), opts);
}

const num = (v, digits, unit) => (v == null ? '–' : `${v.toFixed(digits)} ${unit}`);

function deviceName(id) {
  return state.devices.get(id)?.name || id;
}

// -- the fleet -----------------------------------------------------------------------------

function alertsOf(id) {
  return [...state.alerts.values()].filter((a) => a.device_id === id);
}

function ageOf(id) {
  const r = state.readings.get(id);
  return r ? (now() - Date.parse(r.ts)) / 1000 : null;
}

// The same rule as web/api_fleet.py device_state, with the thresholds the server sent.
function deviceState(id) {
  const alerts = alertsOf(id);
  if (alerts.some((a) => a.rule_kind !== 'offline')) return 'alert';
  const age = ageOf(id);
  if (age == null || alerts.length) return 'offline';
  if (age > (state.devices.get(id)?.offline_after_s ?? 600)) return 'offline';
  if (age > state.staleAfterS) return 'stale';
  return 'ok';
}

function fleetIds() {
  const ids = new Set([...state.devices.keys(), ...state.readings.keys()]);
  return [...ids].filter((id) => !state.site || state.devices.get(id)?.site_id === state.site);
}

function sortValue(id, key) {
  const d = state.devices.get(id) || {};
  const r = state.readings.get(id) || {};
  switch (key) {
    case 'temp':
      return r.temp_c;
    case 'rh':
      return r.rh;
    case 'battery':
      return r.battery_v;
    case 'door':
      return r.door_open == null ? null : Number(r.door_open);
    case 'age':
      return ageOf(id);
    case 'state':
      return STATE_ORDER[deviceState(id)];
    case 'device_id':
      return id;
    default:
      return d[key] ?? null;
  }
}

function compare(a, b) {
  const { key, dir } = state.sort;
  const va = sortValue(a, key);
  const vb = sortValue(b, key);
  if (va == null && vb != null) return 1; // empty cells last, whichever the direction
  if (vb == null && va != null) return -1;
  let c = 0;
  if (va != null) c = typeof va === 'string' ? va.localeCompare(vb, currentLanguage()) : va - vb;
  return c * dir || a.localeCompare(b);
}

const rows = new Map(); // device_id -> { tr, cells }

function makeRow(id) {
  const tr = el('tr');
  tr.dataset.device = id;
  const cells = {};
  for (const name of ['device', 'name', 'site', 'profile', 'temp', 'rh', 'age', 'battery', 'door', 'state']) {
    cells[name] = el('td', `col-${name}`);
    tr.append(cells[name]);
  }
  for (const name of ['temp', 'rh', 'age', 'battery']) cells[name].classList.add('num');
  const pick = el('button', 'link device-link', id);
  pick.type = 'button';
  pick.addEventListener('click', () => selectDevice(id));
  cells.device.append(pick);
  cells.stateBadge = el('span', 'state-badge');
  cells.state.append(cells.stateBadge);
  tr.addEventListener('click', (event) => {
    if (!event.target.closest('button')) selectDevice(id);
  });
  return { tr, cells };
}

function fillRow(id, row) {
  const d = state.devices.get(id) || {};
  const r = state.readings.get(id);
  const { cells } = row;
  cells.name.textContent = d.name || '';
  cells.site.textContent = d.site_id || '–';
  cells.profile.textContent = d.profile_id || '–';
  cells.profile.title = d.profile_name || '';
  cells.temp.textContent = r ? num(r.temp_c, 1, '°C') : '–';
  cells.rh.textContent = r ? num(r.rh, 0, '%') : '–';
  cells.battery.textContent = r ? num(r.battery_v, 2, 'V') : '–';
  cells.door.textContent = r?.door_open == null ? '–' : t(r.door_open ? 'console.door_open' : 'console.door_closed');
  cells.door.classList.toggle('is-open', Boolean(r?.door_open));
  row.tr.setAttribute('aria-selected', String(state.selected === id));
  tickRow(id, row);
}

// What changes with the clock alone: the reading's age and the state it implies.
function tickRow(id, row) {
  const age = ageOf(id);
  const s = deviceState(id);
  row.cells.age.textContent = ageText(age);
  row.cells.stateBadge.textContent = t(`console.state_${s}`);
  row.cells.stateBadge.dataset.state = s;
  row.tr.dataset.state = s;
}

function renderFleet() {
  const ids = fleetIds().sort(compare);
  const body = $('fleet-body');
  const keep = new Set(ids);
  for (const [id, row] of rows) {
    if (!keep.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  const ordered = ids.map((id) => {
    let row = rows.get(id);
    if (!row) {
      row = makeRow(id);
      rows.set(id, row);
    }
    fillRow(id, row);
    return row.tr;
  });
  // Move rows only when the order changed: moving a row loses a focused button in it.
  if (ordered.some((tr, i) => body.children[i] !== tr)) body.append(...ordered);
  $('fleet-empty').hidden = ids.length > 0;
  $('fleet-count').textContent = t('console.fleet_count', { n: ids.length });
  for (const th of document.querySelectorAll('#fleet-table th[data-sort]')) {
    const active = th.dataset.sort === state.sort.key;
    if (active) th.setAttribute('aria-sort', state.sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
  renderSiteFilter();
}

function renderSiteFilter() {
  const select = $('site-filter');
  const sites = [...new Set([...state.devices.values()].map((d) => d.site_id).filter(Boolean))].sort();
  if (state.site && !sites.includes(state.site)) sites.push(state.site);
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join('\n') !== sites.join('\n')) {
    select.replaceChildren(select.options[0], ...sites.map((s) => el('option', null, s)));
  }
  select.value = state.site;
}

function tickFleet() {
  for (const [id, row] of rows) tickRow(id, row);
}

// Renders at most once a frame, and only the parts whose data changed: a burst of readings
// must not rebuild the inbox under someone's pointer.
const dirty = { fleet: false, inbox: false };
let renderQueued = false;
function scheduleRender({ fleet = true, inbox = false } = {}) {
  dirty.fleet ||= fleet;
  dirty.inbox ||= inbox;
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (dirty.fleet) renderFleet();
    if (dirty.inbox) renderInbox();
    dirty.fleet = dirty.inbox = false;
    renderLiveState();
  });
}

function applyReading(r) {
  const old = state.readings.get(r.device_id);
  if (old && Date.parse(old.ts) > Date.parse(r.ts)) return; // older than what is shown
  state.readings.set(r.device_id, r);
  if (!state.devices.has(r.device_id)) refreshFleetSoon(); // a new device: fetch its details
}

function applyAlert(a) {
  if (a.status === 'resolved') state.alerts.delete(a.id);
  else state.alerts.set(a.id, a);
}

async function loadFleet() {
  const body = await api('GET', '/api/v1/fleet');
  state.clockOffsetMs = Date.parse(body.now) - Date.now();
  state.staleAfterS = body.stale_after_s;
  state.devices = new Map(body.devices.map((d) => [d.device_id, d]));
  for (const d of body.devices) if (d.reading) applyReading({ device_id: d.device_id, ...d.reading });
  scheduleRender({ inbox: true }); // the inbox names devices by their names
}

let fleetTimer = null;
function refreshFleetSoon() {
  if (fleetTimer) return;
  fleetTimer = setTimeout(() => {
    fleetTimer = null;
    loadFleet().catch((err) => showBanner(t('console.error_load', { detail: err.message })));
  }, 500);
}

// -- the alert inbox -----------------------------------------------------------------------

function alertSummary(a) {
  const parts = [deviceName(a.device_id), a.rule_id];
  if (a.peak != null) parts.push(t('console.alert_peak', { peak: `${a.peak.toFixed(1)} °C` }));
  parts.push(t('console.alert_since', { time: timeText(a.start || a.raised_at) }));
  return parts.join(' · ');
}

function renderInbox() {
  const list = $('alert-list');
  const alerts = [...state.alerts.values()].sort(
    (a, b) => Date.parse(b.raised_at) - Date.parse(a.raised_at) || b.id - a.id,
  );
  const items = alerts.map((a) => {
    const li = el('li', `alert-item severity-${a.severity}`);
    li.dataset.alertId = a.id;
    li.dataset.status = a.status;
    const head = el('div', 'alert-head');
    head.append(
      el('span', `severity-badge severity-${a.severity}`, t(`console.severity_${a.severity}`)),
      el('span', 'alert-status', t(`console.status_${a.status}`)),
      el('span', 'alert-id', `#${a.id}`),
    );
    if (a.found_late) head.append(el('span', 'alert-late', t('console.alert_late')));
    const open = el('button', 'link alert-summary', alertSummary(a));
    open.type = 'button';
    open.dataset.act = 'audit';
    open.title = t('console.audit_open');
    open.addEventListener('click', () => showAudit(a.id));
    li.append(head, open);
    if (a.status === 'acknowledged') {
      const by = t('console.alert_ack_by', { by: a.acknowledged_by || '?', time: timeText(a.acknowledged_at) });
      li.append(el('p', 'alert-ack', a.ack_comment ? `${by}: ${a.ack_comment}` : by));
    }
    const actions = el('div', 'alert-actions');
    if (a.status === 'open') {
      const ack = el('button', 'btn btn-small btn-ack', t('console.ack'));
      ack.type = 'button';
      ack.dataset.act = 'acknowledge';
      ack.addEventListener('click', () => openAction(a.id, 'acknowledge'));
      actions.append(ack);
    }
    const resolve = el('button', 'btn btn-small btn-resolve', t('console.resolve'));
    resolve.type = 'button';
    resolve.dataset.act = 'resolve';
    resolve.addEventListener('click', () => openAction(a.id, 'resolve'));
    actions.append(resolve);
    li.append(actions);
    return li;
  });
  // A rebuilt list would drop the keyboard focus: put it back on the same button.
  const active = list.contains(document.activeElement) ? document.activeElement : null;
  const focus = active && [active.closest('[data-alert-id]')?.dataset.alertId, active.dataset.act];
  list.replaceChildren(...items);
  if (focus) list.querySelector(`[data-alert-id="${focus[0]}"] [data-act="${focus[1]}"]`)?.focus();
  $('alerts-empty').hidden = alerts.length > 0;
  const count = $('alert-count');
  count.hidden = alerts.length === 0;
  count.textContent = String(alerts.length);
}

async function loadAlerts() {
  const body = await api('GET', '/api/v1/alerts?state=active&limit=1000');
  state.alerts = new Map();
  for (const a of body.alerts) applyAlert(a);
  scheduleRender({ inbox: true });
}

const action = { id: null, kind: null };

function openAction(id, kind) {
  const a = state.alerts.get(id);
  action.id = id;
  action.kind = kind;
  $('action-title').textContent = t(kind === 'resolve' ? 'console.resolve_title' : 'console.ack_title', { id });
  $('action-summary').textContent = a ? alertSummary(a) : '';
  $('action-label').textContent = t(kind === 'resolve' ? 'console.resolve_comment' : 'console.ack_comment');
  $('action-submit').textContent = t(kind === 'resolve' ? 'console.resolve' : 'console.ack');
  $('action-submit').disabled = false;
  const comment = $('action-comment');
  comment.value = '';
  comment.required = kind === 'resolve';
  $('action-error').hidden = true;
  $('action-dialog').showModal();
  comment.focus();
}

async function submitAction(event) {
  event.preventDefault();
  const comment = $('action-comment').value.trim();
  const error = $('action-error');
  if (action.kind === 'resolve' && !comment) {
    error.textContent = t('console.resolve_required');
    error.hidden = false;
    return;
  }
  $('action-submit').disabled = true;
  try {
    const event_ = await api('POST', `/api/v1/alerts/${action.id}/${action.kind}`, { comment });
    // The answer is the alert engine's event: show it now, the live feed repeats it.
    if (event_?.alert) applyAlert(event_.alert);
    $('action-dialog').close();
    scheduleRender({ inbox: true });
  } catch (err) {
    error.textContent = t('console.action_failed', { detail: err.message });
    error.hidden = false;
    $('action-submit').disabled = false;
  }
}

async function showAudit(id) {
  const list = $('audit-list');
  $('audit-title').textContent = t('console.audit_title', { id });
  $('audit-summary').textContent = '';
  list.replaceChildren(el('li', 'muted', t('console.loading')));
  $('audit-dialog').showModal();
  try {
    const a = await api('GET', `/api/v1/alerts/${id}`);
    $('audit-summary').textContent =
      `${t(`console.severity_${a.severity}`)} · ${t(`console.status_${a.status}`)} · ${alertSummary(a)}`;
    list.replaceChildren(
      ...a.audit.map((e) => {
        const li = el('li', `audit-entry audit-${e.action}`);
        li.dataset.action = e.action;
        li.append(
          el('time', 'audit-time', timeText(e.at)),
          el('span', 'audit-action', t(`console.audit_${e.action}`)),
          el('span', 'audit-actor', e.actor),
        );
        if (e.detail?.value != null) li.append(el('span', 'audit-value', `${Number(e.detail.value).toFixed(1)} °C`));
        if (e.comment) li.append(el('p', 'audit-comment', e.comment));
        return li;
      }),
    );
  } catch (err) {
    list.replaceChildren(el('li', 'error', t('console.error_load', { detail: err.message })));
  }
}

// -- the history chart ---------------------------------------------------------------------

let chart = null;
let chartData = null; // the last answer, redrawn on resize and language change
let historyRequest = 0;

function selectDevice(id) {
  state.selected = id;
  for (const [rid, row] of rows) row.tr.setAttribute('aria-selected', String(rid === id));
  loadHistory();
}

function currentRange() {
  if (state.range === 'custom') return state.custom || currentRangeFor('24h');
  return currentRangeFor(state.range);
}

function renderRangeButtons() {
  for (const b of document.querySelectorAll('[data-range]')) {
    b.setAttribute('aria-pressed', String(b.dataset.range === state.range));
  }
  $('custom-range').hidden = state.range !== 'custom';
}

async function loadHistory() {
  const note = $('history-note');
  const id = state.selected;
  $('history-device').textContent = id ? `${deviceName(id)}${deviceName(id) !== id ? ` (${id})` : ''}` : '';
  if (!id) return;
  const { from, to } = currentRange();
  const ticket = ++historyRequest;
  if (chartData?.device_id !== id) note.textContent = t('console.loading');
  const params = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
  try {
    const body = await api('GET', `/api/v1/devices/${encodeURIComponent(id)}/history?${params}`);
    if (ticket !== historyRequest) return; // a newer choice is on its way
    chartData = body;
    drawChart();
  } catch (err) {
    if (ticket !== historyRequest) return;
    note.textContent = t('console.error_load', { detail: err.message });
  }
}

function bucketText(seconds) {
  if (seconds < 60) return t('console.age_s', { n: seconds });
  if (seconds < 3600) return t('console.age_m', { n: seconds / 60 });
  if (seconds < 86400) return t('console.age_h', { n: seconds / 3600 });
  return t('console.age_d', { n: seconds / 86400 });
}

const LIMIT_COLOURS = ['#ff6b6b', '#5aa9ff', '#f0b429', '#c792ea'];

function drawChart() {
  const body = chartData;
  const box = $('chart');
  const note = $('history-note');
  if (chart) {
    chart.destroy();
    chart = null;
  }
  if (!body) return;
  const step = body.bucket_s;
  // Columns for uPlot. A gap longer than the device's offline timeout (or than a bucket and
  // a half, for wide buckets) breaks the lines with a null: the chart must not draw a
  // straight line through hours nobody measured. Shorter gaps are just the sensor's pace.
  const gap = Math.max(step * 1.5, state.devices.get(body.device_id)?.offline_after_s ?? 600);
  const xs = [];
  const lo = [];
  const mean = [];
  const hi = [];
  let prev = null;
  for (const p of body.points) {
    const x = Date.parse(p.t) / 1000;
    if (prev != null && x - prev > gap) {
      xs.push(prev + step);
      lo.push(null);
      mean.push(null);
      hi.push(null);
    }
    xs.push(x);
    lo.push(p.min);
    mean.push(p.mean);
    hi.push(p.max);
    prev = x;
  }
  box.dataset.points = String(body.points.length);
  box.dataset.device = body.device_id;
  note.textContent = body.points.length
    ? t('console.history_bucket', { bucket: bucketText(step), n: body.points.length })
    : t('console.history_empty');
  const data = [xs, lo, mean, hi];
  const series = [
    {
      label: t('console.history_time'),
      value: (u, v) => (v == null ? '–' : new Date(v * 1000).toLocaleString(currentLanguage(), { hour12: false })),
    },
    { label: t('console.history_min'), stroke: 'rgba(90, 169, 255, 0.6)', width: 1 },
    { label: t('console.history_mean'), stroke: '#38b66a', width: 2 },
    { label: t('console.history_max'), stroke: 'rgba(255, 140, 90, 0.6)', width: 1 },
  ];
  for (const [i, limit] of body.limits.entries()) {
    data.push(xs.map(() => limit.threshold));
    series.push({
      label: t('console.history_limit', { rule: limit.rule_id, value: limit.threshold }),
      stroke: LIMIT_COLOURS[i % LIMIT_COLOURS.length],
      width: 1.5,
      dash: [6, 4],
      points: { show: false },
    });
  }
  for (const s of series.slice(1)) s.value = (u, v) => (v == null ? '–' : `${v.toFixed(1)} °C`);
  const spanS = (Date.parse(body.to) - Date.parse(body.from)) / 1000;
  const tick = (v) => {
    const d = new Date(v * 1000);
    const opts = spanS > 2 * 86400 ? { month: 'numeric', day: 'numeric' } : { hour: '2-digit', minute: '2-digit', hour12: false };
    return d.toLocaleString(currentLanguage(), opts);
  };
  const axis = { stroke: '#9aabbb', grid: { stroke: 'rgba(154, 171, 187, 0.15)' }, ticks: { stroke: 'rgba(154, 171, 187, 0.3)' } };
  const opts = {
    width: Math.max(280, box.clientWidth),
    height: 300,
    series,
    // The band between min and max of each bucket: how much the temperature moved in it.
    bands: [{ series: [3, 1], fill: 'rgba(56, 182, 106, 0.18)' }],
    scales: { x: { time: true, range: () => [Date.parse(body.from) / 1000, Date.parse(body.to) / 1000] } },
    axes: [
      { ...axis, values: (u, splits) => splits.map(tick) },
      { ...axis, label: '°C', values: (u, splits) => splits.map((v) => v.toFixed(1)) },
    ],
    cursor: { drag: { x: false, y: false } },
  };
  chart = new uPlot(opts, data, box);
}

// -- the streams ---------------------------------------------------------------------------

function renderStreams() {
  const body = $('streams-body');
  body.replaceChildren(
    ...state.streams.map((s) => {
      const tr = el('tr');
      tr.dataset.stream = s.slug;
      const st = s.state || {};
      const live = st.status === 'live';
      const title = el('td', 'col-stream');
      title.append(
        el('div', 'stream-title', s.title || s.slug),
        el('div', 'muted stream-meta', s.site ? `${s.slug} · ${s.site}` : s.slug),
      );
      const status = el('td');
      status.append(el('span', `state-badge stream-${live ? 'live' : 'offline'}`, t(live ? 'console.stream_live' : 'console.stream_offline')));
      const links = el('td', 'col-links');
      const watch = el('a', null, t('console.watch'));
      watch.href = s.urls?.watch || `/watch/${encodeURIComponent(s.slug)}`;
      links.append(watch);
      if (s.kind === 'whip') {
        const publish = el('a', null, t('console.publish'));
        publish.href = `/publish/${encodeURIComponent(s.slug)}`;
        links.append(publish);
      }
      const sensors = el('button', 'btn btn-small links-edit', t('console.links_edit'));
      sensors.type = 'button';
      sensors.addEventListener('click', () => openLinks(s.slug, s.title || s.slug));
      links.append(sensors);
      tr.append(
        title,
        status,
        el('td', 'num', String(st.viewers ?? 0)),
        el('td', 'num', live ? formatElapsed((st.uptime_s || 0) * 1000) : '–'),
        links,
      );
      return tr;
    }),
  );
  $('streams-empty').hidden = state.streams.length > 0;
}

// Which sensors' readings show over a stream's video: sites and devices, comma-separated.
let linksSlug = null;
const splitList = (text) => [...new Set(text.split(',').map((x) => x.trim()).filter(Boolean))];

async function openLinks(slug, title) {
  linksSlug = slug;
  $('links-title').textContent = t('console.links_title', { stream: title });
  $('links-error').hidden = true;
  $('links-submit').disabled = false;
  const sites = [...new Set([...state.devices.values()].map((d) => d.site_id).filter(Boolean))].sort();
  $('links-site-options').replaceChildren(...sites.map((v) => Object.assign(el('option'), { value: v })));
  $('links-device-options').replaceChildren(
    ...[...state.devices.keys()].sort().map((v) => Object.assign(el('option'), { value: v })),
  );
  try {
    const links = await api('GET', `/api/v1/streams/${encodeURIComponent(slug)}/links`);
    $('links-sites').value = links.sites.join(', ');
    $('links-devices').value = links.devices.join(', ');
  } catch (err) {
    if (err.status === 401) return;
    $('links-error').textContent = t('console.action_failed', { detail: err.message });
    $('links-error').hidden = false;
  }
  $('links-dialog').showModal();
  $('links-sites').focus();
}

async function submitLinks(event) {
  event.preventDefault();
  $('links-submit').disabled = true;
  try {
    await api('PUT', `/api/v1/streams/${encodeURIComponent(linksSlug)}/links`, {
      sites: splitList($('links-sites').value),
      devices: splitList($('links-devices').value),
    });
    $('links-dialog').close();
  } catch (err) {
    $('links-error').textContent = t('console.action_failed', { detail: err.message });
    $('links-error').hidden = false;
    $('links-submit').disabled = false;
  }
}

async function loadStreams() {
  try {
    const body = await api('GET', '/api/v1/streams');
    state.streams = body.streams;
    renderStreams();
  } catch (err) {
    if (err.status !== 401) showBanner(t('console.error_load', { detail: err.message }));
  }
}

// -- the live feed -------------------------------------------------------------------------

let ws = null;
let attempt = 0;
let retryTimer = null;

function renderLiveState() {
  const box = $('live-state');
  box.dataset.live = state.live;
  if (state.live === 'live') box.textContent = t('console.live_live');
  else if (state.live === 'reconnecting') {
    const s = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    box.textContent = t('console.live_reconnecting', { s });
  } else box.textContent = t('console.live_connecting');
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === 'snapshot') {
    attempt = 0;
    state.live = 'live';
    // The snapshot is the current state: alerts are replaced, readings merged (newest wins).
    state.alerts = new Map();
    for (const a of msg.alerts) applyAlert(a);
    for (const r of msg.readings) applyReading(r);
    refreshFleetSoon(); // devices may have been assigned while the socket was down
  } else if (msg.type === 'reading') {
    applyReading(msg);
  } else if (msg.type === 'alert') {
    applyAlert(msg.alert);
  }
  scheduleRender({ inbox: msg.type !== 'reading' });
}

function connect() {
  clearTimeout(retryTimer);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/live?all=1`);
  ws = socket;
  socket.addEventListener('message', onMessage);
  socket.addEventListener('close', () => {
    if (ws !== socket) return;
    ws = null;
    attempt += 1;
    const delay = Math.min(30, 2 ** (attempt - 1));
    state.live = 'reconnecting';
    state.retryAt = Date.now() + delay * 1000;
    renderLiveState();
    retryTimer = setTimeout(connect, delay * 1000);
  });
}

// -- start ---------------------------------------------------------------------------------

function initControls() {
  try {
    state.site = localStorage.getItem(SITE_STORAGE) || '';
  } catch {
    state.site = '';
  }
  $('site-filter').addEventListener('change', (event) => {
    state.site = event.target.value;
    try {
      localStorage.setItem(SITE_STORAGE, state.site);
    } catch {
      // Private mode: the filter holds for this visit only.
    }
    renderFleet();
  });
  for (const th of document.querySelectorAll('#fleet-table th[data-sort]')) {
    th.querySelector('button').addEventListener('click', () => {
      const key = th.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderFleet();
    });
  }
  for (const b of document.querySelectorAll('[data-range]')) {
    b.addEventListener('click', () => {
      state.range = b.dataset.range;
      renderRangeButtons();
      if (state.range === 'custom') {
        const { from, to } = state.custom || currentRangeFor('24h');
        $('range-from').value = localInput(from);
        $('range-to').value = localInput(to);
      } else loadHistory();
    });
  }
  $('custom-range').addEventListener('submit', (event) => {
    event.preventDefault();
    const from = new Date($('range-from').value);
    const to = new Date($('range-to').value);
    if (!(from < to)) {
      $('history-note').textContent = t('console.range_invalid');
      return;
    }
    state.custom = { from, to };
    loadHistory();
  });
  $('action-form').addEventListener('submit', submitAction);
  $('links-form').addEventListener('submit', submitLinks);
  $('links-cancel').addEventListener('click', () => $('links-dialog').close());
  $('action-cancel').addEventListener('click', () => $('action-dialog').close());
  $('audit-close').addEventListener('click', () => $('audit-dialog').close());
  $('logout').addEventListener('click', logout);
  new ResizeObserver(() => {
    if (chart) chart.setSize({ width: Math.max(280, $('chart').clientWidth), height: 300 });
  }).observe($('chart'));
  renderRangeButtons();
}

function currentRangeFor(range) {
  const to = new Date(now());
  return { from: new Date(to.getTime() - RANGES[range]), to };
}

// <input type="datetime-local"> speaks local time without a zone: "2026-11-24T08:00".
function localInput(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function start() {
  initControls();
  renderLiveState();
  if (!(await loadSession())) return;
  try {
    await Promise.all([loadFleet(), loadAlerts()]);
  } catch (err) {
    if (err.status !== 401) showBanner(t('console.error_load', { detail: err.message }));
  }
  connect();
  loadStreams();
  setInterval(() => {
    if (!document.hidden) loadStreams();
  }, STREAMS_EVERY_MS);
  setInterval(refreshFleetSoon, FLEET_EVERY_MS);
  // A period ending "now" moves on: redraw it with the buckets that filled meanwhile.
  setInterval(() => {
    if (state.selected && state.range !== 'custom' && !document.hidden) loadHistory();
  }, HISTORY_EVERY_MS);
  setInterval(() => {
    tickFleet();
    if (state.live !== 'live') renderLiveState();
  }, 1000);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && !ws) connect();
  });
}

onLanguageChange(() => {
  renderUser();
  renderFleet();
  renderInbox();
  renderStreams();
  renderLiveState();
  drawChart();
});
start();
