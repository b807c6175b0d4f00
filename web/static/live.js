// The live telemetry overlay of /watch/<slug>: the stream's linked sensors over the video
// (value °C, trend arrow, age of the reading, stale after 2 min) and an alert banner while
// any alert of those sensors is open. Data: the WebSocket GET /api/v1/live?stream=<slug>.
//
// Resume = snapshot + changes: every (re)connection starts with a snapshot of the current
// state, which replaces what the page showed; changes follow. Reconnects back off
// (1, 2, 4 … 30 s). States for tests and styles: #telemetry-overlay[data-live] =
// connecting | live | reconnecting.
import { currentLanguage, onLanguageChange, slug, t } from './common.js';

const STALE_MS = 2 * 60 * 1000;
const TREND_EPSILON_C = 0.2; // smaller changes are "steady"
const root = document.getElementById('telemetry-overlay');
const page = JSON.parse(document.getElementById('oc-config').textContent);

const state = {
  devices: new Map(), // device_id -> { name }
  readings: new Map(), // device_id -> reading (the newest)
  alerts: new Map(), // alert id -> alert (not resolved)
  live: 'connecting',
  retryAt: 0,
};
let ws = null;
let attempt = 0;
let retryTimer = null;

function name(deviceId) {
  return state.devices.get(deviceId)?.name || deviceId;
}

function ageText(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return t('watch.live_age_s', { n: s });
  if (s < 3600) return t('watch.live_age_m', { n: Math.floor(s / 60) });
  return t('watch.live_age_h', { n: Math.floor(s / 3600) });
}

function timeText(iso) {
  const d = new Date(iso);
  const opts = { hour: '2-digit', minute: '2-digit' };
  if (Date.now() - d.getTime() > 20 * 3600 * 1000) Object.assign(opts, { month: 'short', day: 'numeric' });
  return d.toLocaleTimeString(currentLanguage(), opts);
}

function trend(r) {
  if (r.ref_temp_c == null) return null;
  const delta = r.temp_c - r.ref_temp_c;
  if (delta > TREND_EPSILON_C) return ['↑', 'up', 'watch.live_trend_up'];
  if (delta < -TREND_EPSILON_C) return ['↓', 'down', 'watch.live_trend_down'];
  return ['→', 'flat', 'watch.live_trend_flat'];
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function render() {
  root.dataset.live = state.live;
  const parts = [];
  const open = [...state.alerts.values()].sort((a, b) => a.id - b.id);
  if (open.length) {
    const banner = el('div', 'live-alerts');
    banner.setAttribute('role', 'alert');
    for (const a of open) {
      const peak = a.peak == null ? '–' : `${a.peak.toFixed(1)} °C`;
      const line = el('p', `live-alert severity-${a.severity || 'warning'}`);
      line.dataset.alertId = a.id;
      line.textContent = t('watch.live_alert', {
        device: name(a.device_id),
        rule: a.rule_id,
        peak,
        since: timeText(a.start || a.raised_at),
      });
      if (a.status === 'acknowledged') line.append(el('span', 'live-ack', ` · ${t('watch.live_alert_ack')}`));
      banner.append(line);
    }
    parts.push(banner);
  }
  const ids = new Set([...state.devices.keys(), ...state.readings.keys()]);
  if (ids.size) {
    const list = el('ul', 'live-readings');
    list.setAttribute('aria-label', t('watch.live_label'));
    for (const id of [...ids].sort((a, b) => name(a).localeCompare(name(b)))) {
      const r = state.readings.get(id);
      const item = el('li', 'live-reading');
      item.dataset.device = id;
      item.append(el('span', 'live-name', name(id)));
      if (!r) {
        item.classList.add('is-empty');
        item.append(el('span', 'live-age', t('watch.live_no_reading')));
      } else {
        const age = Date.now() - new Date(r.ts).getTime();
        const stale = age > STALE_MS;
        item.classList.toggle('is-stale', stale);
        item.classList.toggle('is-alert', open.some((a) => a.device_id === id));
        item.append(el('span', 'live-value', `${r.temp_c.toFixed(1)} °C`));
        const tr = trend(r);
        if (tr) {
          const arrow = el('span', `live-trend trend-${tr[1]}`, tr[0]);
          arrow.title = t(tr[2]);
          arrow.setAttribute('aria-label', arrow.title);
          item.append(arrow);
        }
        if (r.door_open) item.append(el('span', 'live-door', t('watch.live_door_open')));
        item.append(el('span', 'live-age', stale ? `${t('watch.live_stale')} · ${ageText(age)}` : ageText(age)));
      }
      list.append(item);
    }
    parts.push(list);
  }
  if (state.live !== 'live') {
    const s = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    parts.push(el('p', 'live-conn', state.live === 'reconnecting' ? t('watch.live_reconnecting', { s }) : t('watch.live_connecting')));
  }
  root.replaceChildren(...parts);
}

function applyReading(r) {
  const old = state.readings.get(r.device_id);
  if (old && new Date(old.ts) > new Date(r.ts)) return; // an older one (snapshot raced it)
  state.readings.set(r.device_id, r);
}

function applyAlert(a) {
  if (a.status === 'resolved') state.alerts.delete(a.id);
  else state.alerts.set(a.id, a);
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === 'snapshot') {
    attempt = 0;
    state.devices = new Map(msg.devices.map((d) => [d.device_id, d]));
    state.readings = new Map();
    state.alerts = new Map();
    for (const r of msg.readings) applyReading(r);
    for (const a of msg.alerts) applyAlert(a);
    state.live = 'live';
  } else if (msg.type === 'reading') {
    applyReading(msg);
  } else if (msg.type === 'alert') {
    applyAlert(msg.alert);
  }
  render();
}

function connect() {
  clearTimeout(retryTimer);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // An unlisted stream's page passes on its share token (the feed checks it too).
  const share = page.share ? `&share=${encodeURIComponent(page.share)}` : '';
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/live?stream=${encodeURIComponent(slug)}${share}`);
  ws = socket;
  socket.addEventListener('message', onMessage);
  socket.addEventListener('close', () => {
    if (ws !== socket) return;
    ws = null;
    // 1013 (we were too slow) or anything else: back off, then a fresh snapshot.
    attempt += 1;
    const delay = Math.min(30, 2 ** (attempt - 1));
    state.live = 'reconnecting';
    state.retryAt = Date.now() + delay * 1000;
    render();
    retryTimer = setTimeout(connect, delay * 1000);
  });
}

onLanguageChange(render);
setInterval(render, 1000); // ages and countdowns
// Back to a hidden tab after a while: reconnect now rather than wait out the backoff.
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && !ws) connect();
});
render();
connect();
