// The public trust page /v/<shipment>: shows a shipment's record and checks it in this
// browser against the log's key from the link's fragment (#k=<vkey>, printed in the QR
// code): the checkpoint's signature, every record shown in the signed tree (one
// multi-leaf inclusion proof for them all), each device's chain of batches over its
// segment, each batch's readings (the records its digest is over) against that digest,
// the report's figures recomputed from those readings, and each file's SHA-256. The
// server is not trusted for any of it; it only hands out what is checked here.
import { currentLanguage, onLanguageChange, t } from './common.js';
import * as V from './verify.js';
import uPlot from './vendor/uplot/uPlot.esm.js';

const config = JSON.parse(document.getElementById('oc-config').textContent);
const $ = (id) => document.getElementById(id);
let data = null;
let verdict = { state: 'checking', reasons: [], gaps: [] };
let chart = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? '')));
  return node;
}

function fmtTime(iso) {
  if (!iso) return '—';
  return new Date(iso).toLocaleString(currentLanguage() === 'zh-CN' ? 'zh-CN' : 'en-GB', { hour12: false });
}
const fmtUs = (us) => fmtTime(new Date(us / 1000).toISOString());
const fmtC = (v) => (v == null ? '—' : `${v.toFixed(2)} °C`);
function fmtDuration(s) {
  if (s == null) return '—';
  const m = Math.round(s / 60);
  return m >= 60 ? t('trust.hours_minutes', { h: Math.floor(m / 60), m: m % 60 }) : t('trust.minutes', { m });
}

function keyFromFragment() {
  const m = /(?:^#|&)k=([^&]+)/.exec(location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

// -- rendering ---------------------------------------------------------------------------

function renderVerdict() {
  const box = $('verdict');
  box.dataset.verdict = verdict.state;
  const title = {
    checking: t('trust.checking'),
    verified: t('trust.verified'),
    gaps: t(verdict.gaps.length === 1 ? 'trust.verified_gap' : 'trust.verified_gaps', { n: verdict.gaps.length }),
    failed: t('trust.not_verified', { reason: verdict.reasons[0] ? message(verdict.reasons[0]) : '' }),
    nokey: t('trust.cannot_verify', { reason: t('trust.no_key') }),
    nolog: t('trust.cannot_verify', { reason: t('trust.no_log') }),
    missing: t('trust.not_found'),
  }[verdict.state];
  $('verdict-title').textContent = title;
  $('verdict-detail').textContent = verdict.state === 'verified' || verdict.state === 'gaps' ? t('trust.verified_detail') : '';
  // The newest readings wait for their window to be sealed: said, and not shown as verified.
  const pending = $('pending');
  pending.hidden = !data?.pending;
  if (data?.pending) {
    const p = data.pending;
    pending.textContent = t('trust.pending', { n: p.count, since: fmtTime(p.first), through: fmtTime(p.through) });
  }
  const list = $('verdict-list');
  list.replaceChildren();
  const items = verdict.state === 'failed' ? verdict.reasons.slice(1) : verdict.gaps;
  for (const item of items) list.append(el('li', {}, message(item)));
}

// A reason or gap: a catalog key and its values, so it follows the language switch.
function message(m) {
  if (typeof m === 'string') return m;
  const vars = { ...(m.vars || {}) };
  if (vars.action) vars.action = t(`trust.action_${vars.action}`) || vars.action; // a staff action, in this language
  return t(m.key, vars);
}

function render() {
  if (!data) return;
  const s = data.shipment;
  document.title = `${s.product} · ${t('trust.page_title')}`;
  $('product').textContent = s.product;
  $('batch').textContent = s.batch;
  $('origin').textContent = s.origin_site;
  $('state').textContent = s.state === 'closed' ? t('trust.state_closed', { at: fmtTime(s.closed_at) }) : t('trust.state_open');
  $('profile').textContent = `${data.profile.name || data.profile.id} (${data.profile.limits
    .filter((l) => l.kind === 'limit')
    .map((l) => `${l.direction === 'above' ? '≤' : '≥'} ${l.threshold} °C`)
    .join(', ')})`;
  const streams = $('streams');
  streams.replaceChildren();
  for (const st of data.streams) {
    const a = el('a', { href: st.url, class: st.live ? 'live' : 'offline' }, `${st.live ? t('trust.watch_live') : t('trust.watch_offline')}: ${st.title || st.slug}`);
    streams.append(a, ' ');
  }
  const journey = $('journey');
  journey.replaceChildren();
  for (const seg of s.segments) {
    journey.append(
      el('li', {}, el('strong', {}, seg.label || seg.device_id), el('span', { class: 'device' }, ` (${seg.device_id})`),
        el('br'), `${fmtTime(seg.start)} – ${seg.open ? t('trust.now') : fmtTime(seg.end)}`),
    );
  }
  renderFigures();
  renderExcursions();
  renderFiles();
  renderChart();
  renderVerdict();
}

function renderFigures() {
  const table = $('figures');
  table.replaceChildren();
  const head = el('tr', {}, el('th', {}, ''), ...['min', 'max', 'mean', 'mkt', 'out_of_range', 'gaps'].map((k) => el('th', {}, t(`trust.fig_${k}`))));
  table.append(head);
  const row = (name, sum) =>
    el('tr', {}, el('th', {}, name), el('td', {}, fmtC(sum.min_c)), el('td', {}, fmtC(sum.max_c)), el('td', {}, fmtC(sum.mean_c)),
      el('td', {}, fmtC(sum.mkt_c)), el('td', {}, fmtDuration(sum.out_of_range_s)), el('td', {}, fmtDuration(sum.gap_s)));
  data.report.segments.forEach((seg) => table.append(row(seg.label || seg.device_id, seg.summary)));
  table.append(row(t('trust.total'), data.report.total));
}

function renderExcursions() {
  const list = $('excursions');
  list.replaceChildren();
  if (!data.report.excursions.length) list.append(el('li', { class: 'none' }, t('trust.no_excursions')));
  for (const x of data.report.excursions) {
    const trail = el('ul', { class: 'audit' });
    for (const a of x.audit) {
      trail.append(el('li', {}, `${fmtTime(a.at)} · ${t(`trust.action_${a.action}`) || a.action} · ${a.actor}${a.comment ? ` — “${a.comment}”` : ''}`));
    }
    list.append(
      el('li', { class: `excursion sev-${x.severity}` },
        el('strong', {}, `${x.device_id}: ${t('trust.excursion_line', { peak: fmtC(x.peak), from: fmtTime(x.start), to: x.cleared_at ? fmtTime(x.cleared_at) : t('trust.now') })}`),
        trail),
    );
  }
}

function renderFiles() {
  const list = $('files');
  list.replaceChildren();
  if (!data.files.length) list.append(el('li', { class: 'none' }, t('trust.no_files')));
  for (const f of data.files) {
    const kind = t(f.kind === 'test_report' ? 'trust.test_report' : 'trust.photo');
    const item = el('li', { class: 'file', 'data-sha256': f.sha256 });
    if (f.content_type.startsWith('image/')) item.append(el('img', { src: f.url, alt: f.name, loading: 'lazy' }));
    item.append(el('a', { href: f.url }, `${kind}: ${f.name}`), el('code', { class: 'sha' }, `SHA-256 ${f.sha256.slice(0, 16)}…`));
    list.append(item);
  }
}

// A batch's records, decoded once for the chart and the checks: {bytes, readings}, or
// {} when they are missing or not records (the check names that batch).
let decoded = new Map();

function decodeRecords(ev) {
  const out = new Map();
  for (const [i, b64] of Object.entries(ev.records || {})) {
    try {
      const bytes = V.b64decode(b64);
      out.set(Number(i), { bytes, readings: V.decodeRecords(bytes) });
    } catch {
      out.set(Number(i), {});
    }
  }
  return out;
}

const records = (index) => decoded.get(index) || {};

function readingsOf(deviceEntry) {
  return deviceEntry.batches.flatMap((i) => records(i).readings || []);
}

function renderChart() {
  const box = $('chart');
  if (!data.evidence) {
    box.textContent = t('trust.no_chart');
    return;
  }
  const pts = [];
  data.evidence.devices.forEach((d) => {
    for (const r of readingsOf(d)) if (d.start_us <= r.ts_us && r.ts_us < d.end_us) pts.push(r);
  });
  pts.sort((a, b) => a.ts_us - b.ts_us);
  const xs = pts.map((p) => p.ts_us / 1e6);
  const series = [{}, { label: t('trust.temperature'), stroke: '#1d6fb8', width: 2 }];
  const cols = [xs, pts.map((p) => p.temp_c)];
  for (const l of data.profile.limits.filter((x) => x.kind === 'limit')) {
    series.push({ label: `${l.direction === 'above' ? '≤' : '≥'} ${l.threshold} °C`, stroke: '#c0392b', dash: [6, 4], width: 1 });
    cols.push(xs.map(() => l.threshold));
  }
  if (chart) chart.destroy();
  box.replaceChildren();
  const width = Math.max(280, box.clientWidth || 320);
  chart = new uPlot({ width, height: 220, series, axes: [{}, { label: '°C' }], scales: { x: { time: true } } }, cols, box);
}

// -- verification ------------------------------------------------------------------------

// Names a checkpoint whose signature failed by what it claims (origin and tree size), so
// the reader learns which one; nothing in it is believed.
function checkpointName(note) {
  const [origin = '?', size = '?'] = String(note || '').split('\n');
  return { origin, size };
}

async function verify() {
  const ev = data.evidence;
  const vkey = keyFromFragment();
  if (!vkey) return { state: 'nokey', reasons: [], gaps: [] };
  if (!ev) return { state: 'nolog', reasons: [], gaps: [] };
  const reasons = [];
  const gaps = [];
  const fail = (key, vars) => reasons.push({ key, vars });
  // What needs no checkpoint starts at once, beside the signature's check: every
  // record's leaf hash and every batch's digest, all asked of WebCrypto together (each
  // call is a round trip to its thread; one by one they were most of the time).
  const items = [];
  for (const [i, b64] of Object.entries(ev.leaves)) {
    try {
      items.push({ index: Number(i), entry: V.b64decode(b64) });
    } catch (e) {
      fail('trust.bad_record', { index: i, detail: e.message });
    }
  }
  items.sort((a, b) => a.index - b.index);
  const batches = ev.devices.flatMap((d) => d.batches).filter((i) => records(i).bytes);
  const [checked, leafHashes, digests] = await Promise.all([
    V.verifyCheckpoint(ev.checkpoint, vkey).then((cp) => ({ cp }), (error) => ({ error })),
    Promise.all(items.map((it) => V.leafHash(it.entry))),
    Promise.all(batches.map(async (i) => [i, V.hex(await V.sha256(records(i).bytes))])).then((d) => new Map(d)),
  ]);
  performance.mark('trust:hashed');
  if (checked.error) {
    fail('trust.bad_checkpoint', { ...checkpointName(ev.checkpoint), detail: checked.error.message });
    return { state: 'failed', reasons, gaps };
  }
  const cp = checked.cp;
  // Every record shown is in the signed tree: one proof for them all, each node once.
  try {
    const leaves = items.map((it, k) => [it.index, leafHashes[k]]);
    await V.verifyMultiProof(cp.size, cp.root, leaves, V.b64decode(ev.multiproof || ''));
  } catch (e) {
    fail('trust.bad_proof', { n: items.length, size: cp.size, detail: e.message });
    return { state: 'failed', reasons, gaps };
  }
  performance.mark('trust:proved');
  const recs = new Map();
  const hashes = new Map();
  items.forEach(({ index, entry }, k) => {
    try {
      recs.set(index, V.parseLeaf(entry));
      hashes.set(index, V.hex(leafHashes[k]));
    } catch (e) {
      fail('trust.bad_record', { index, detail: e.message });
    }
  });
  const s = data.shipment;
  // The shipment's opening and closing.
  const opened = recs.get(ev.opened_leaf);
  if (ev.opened_leaf == null || !opened || opened.kind !== 'shipment_opened' || opened.shipment_id !== s.id) {
    fail('trust.bad_opened', {});
  } else if (opened.product !== s.product || opened.product_batch !== s.batch || opened.origin_site !== s.origin_site) {
    fail('trust.bad_opened', {});
  } else if (opened.profile && opened.profile.limits && V.canonicalJSON(opened.profile.limits) !== V.canonicalJSON(data.profile.limits)) {
    fail('trust.bad_limits', {});
  }
  if (s.state === 'closed') {
    const closed = recs.get(ev.closed_leaf);
    const route = s.segments.map((g) => ({ device_id: g.device_id, start_us: g.start_us, end_us: g.end_us, label: g.label }));
    if (!closed || closed.kind !== 'shipment_closed' || closed.shipment_id !== s.id) fail('trust.bad_closed', {});
    else if (V.canonicalJSON(closed.summary.segments) !== V.canonicalJSON(route)) fail('trust.bad_route', {});
  }
  // Each device's chain of batches over its segment, and each batch's readings.
  const readingsBySegment = [];
  for (const d of ev.devices) {
    const chain = d.batches.map((i) => [i, recs.get(i)]).filter(([, r]) => r);
    let prev = null;
    for (const [index, b] of chain) {
      if (b.kind !== 'readings_batch' || b.device_id !== d.device_id) {
        fail('trust.bad_batch', { index, device: d.device_id });
        continue;
      }
      if (prev) {
        const [pi, pb] = prev;
        if (!b.prev) fail('trust.bad_chain', { index, device: d.device_id });
        else if (b.prev.index === pi) {
          if (b.prev.leaf_hash !== hashes.get(pi)) fail('trust.bad_chain', { index, device: d.device_id });
          else if (pb.seq_last != null && b.seq_first != null && b.seq_first > pb.seq_last + 1) {
            gaps.push({ key: 'trust.gap_seq', vars: { device: d.device_id, from: pb.seq_last + 1, to: b.seq_first - 1 } });
          }
        } else if (b.prev.index > pi && b.prev.index < index) {
          gaps.push({ key: 'trust.gap_batch', vars: { device: d.device_id, index: b.prev.index } });
        } else fail('trust.bad_chain', { index, device: d.device_id });
      }
      prev = [index, b];
      const got = records(index);
      if (!got.readings || V.batchMismatch(b, got.readings, digests.get(index)) !== null) {
        fail('trust.bad_readings', { index, device: d.device_id });
      }
    }
    readingsBySegment.push(readingsOf(d));
  }
  performance.mark('trust:readings');
  // The report's figures, recomputed from the raw readings.
  const m = data.report.method;
  const params = { gap_factor: m.gap_factor, min_gap_s: m.min_gap_s, gap_threshold_s: m.gap_threshold_s, activation_k: m.activation_k };
  const again = V.recomputeReport(ev.devices, readingsBySegment, data.profile.limits, params);
  data.report.segments.forEach((seg, i) => {
    const bad = V.compareSummary(seg.summary, again.segments[i].summary);
    if (bad.length) fail('trust.bad_figures', { segment: seg.label || seg.device_id, what: bad.join(', ') });
  });
  const badTotal = V.compareSummary(data.report.total, again.total);
  if (badTotal.length) fail('trust.bad_figures', { segment: t('trust.total'), what: badTotal.join(', ') });
  for (const g of again.gaps) gaps.push({ key: 'trust.gap_time', vars: { from: fmtUs(g.start_us), to: fmtUs(g.end_us) } });
  performance.mark('trust:figures');
  // How staff handled each excursion: every acknowledgement and resolution is a record.
  const events = ev.alert_leaves.map((i) => recs.get(i)).filter((r) => r && r.kind === 'alert_event');
  for (const x of data.report.excursions) {
    for (const a of x.audit) {
      if (a.action !== 'acknowledged' && a.action !== 'resolved') continue;
      // "" and no comment are one thing (the leaf stores "" as null).
      const found = events.some((e) => String(e.alert_id) === String(x.id) && e.change === a.action && (e.comment || null) === (a.comment || null));
      if (!found) fail('trust.bad_alert', { id: x.id, action: a.action });
    }
  }
  // Each file: its manifest is in the log, and the bytes hash to it (fetched together).
  await Promise.all(
    data.files.map(async (f) => {
      const leaf = recs.get(ev.file_leaves[f.sha256]);
      if (!leaf || (leaf.kind !== 'test_report' && leaf.kind !== 'media_manifest') || leaf.sha256 !== f.sha256) {
        fail('trust.bad_file', { name: f.name });
        return;
      }
      try {
        const r = await fetch(f.url, { cache: 'no-store' });
        const got = V.hex(await V.sha256(new Uint8Array(await r.arrayBuffer())));
        if (!r.ok || got !== leaf.sha256) fail('trust.bad_file', { name: f.name });
      } catch {
        fail('trust.bad_file', { name: f.name });
      }
    }),
  );
  if (reasons.length) return { state: 'failed', reasons, gaps };
  return { state: gaps.length ? 'gaps' : 'verified', reasons, gaps };
}

async function main() {
  let response;
  try {
    response = await fetch(`/api/v1/public/shipments/${encodeURIComponent(config.shipment)}`, { cache: 'no-store' });
  } catch {
    response = null;
  }
  if (!response || !response.ok) {
    verdict = { state: 'missing', reasons: [], gaps: [] };
    renderVerdict();
    return;
  }
  data = await response.json();
  performance.mark('trust:answer'); // (bench/evidence.py reads these marks)
  if (data.evidence) decoded = decodeRecords(data.evidence);
  // The checking starts first: once it has asked WebCrypto for its hashes, the page is
  // drawn while WebCrypto's threads work on them.
  const checking = verify();
  render();
  performance.mark('trust:rendered');
  try {
    verdict = await checking;
  } catch (e) {
    verdict = { state: 'failed', reasons: [e.message], gaps: [] };
  }
  renderVerdict();
  document.body.dataset.verified = verdict.state;
  performance.mark('trust:verdict');
}

onLanguageChange(render);
main();
