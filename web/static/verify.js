// Verification of origincast's evidence log in the customer's own browser.
//
// Nothing here trusts the server: a checkpoint counts only if its Ed25519 signature
// verifies under the key the customer brought (the QR code's fragment); a record counts
// only if its RFC 6962 inclusion proof leads to that checkpoint's root. The server hands
// out the proofs and records, which is safe because they are checked, not believed.
// Mirrors telemetry/evidence (merkle.py, note.py, canonical.py); tests run both sides
// on the same vectors.

const enc = new TextEncoder();

export class VerifyError extends Error {}

// -- bytes -------------------------------------------------------------------------------

export function b64decode(s) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) throw new VerifyError("not base64");
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function hexdecode(s) {
  if (!/^([0-9a-f]{2})*$/.test(s)) throw new VerifyError("not lowercase hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
  return out;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// -- RFC 6962 / RFC 9162 Merkle trees ------------------------------------------------------

export async function leafHash(entry) {
  return sha256(concat(Uint8Array.of(0), entry));
}

async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

const odd = (n) => n % 2 === 1;
const half = (n) => Math.floor(n / 2);

// RFC 9162, 2.1.3.2: the root an inclusion proof leads to. Indices stay below 2**53, so
// plain numbers with arithmetic (not 32-bit bit operations) are exact.
export async function rootFromInclusionProof(index, size, leaf, proof) {
  if (!(index >= 0 && index < size)) throw new VerifyError(`index ${index} is not in a tree of ${size}`);
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) throw new VerifyError("inclusion proof is too long");
    if (odd(fn) || fn === sn) {
      r = await nodeHash(p, r);
      while (!odd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0) throw new VerifyError("inclusion proof is too short");
  return r;
}

export async function verifyInclusion(index, size, leaf, proof, root) {
  const got = await rootFromInclusionProof(index, size, leaf, proof);
  if (!equal(got, root)) throw new VerifyError(`record ${index} is not in the signed tree`);
}

// Many inclusion proofs into one tree, sharing work. A page proves thousands of records
// (a month of readings batches), whose paths to the root mostly coincide: each node a
// proof already led to the root is remembered, and a later proof that reaches the same
// node with the same hash is done there (its record is under a node that is under the
// root). A node is named by the leaves it covers, [fn·2^level, (fn+1)·2^level) cut at
// the tree's size, which is what (level, fn) is after each step of RFC 9162's loop.
// Nothing is remembered from a proof that fails. A proof's hashes may be base64 text,
// decoded when used. Returns a Map index -> VerifyError for the records that are not in
// the tree; the others are.
export async function verifyInclusions(items, size, root) {
  const known = new Map(); // node -> hex hash, of nodes proved to lead to the root
  const failed = new Map();
  for (const { index, leaf, proof } of items) {
    try {
      if (!(index >= 0 && index < size)) throw new VerifyError(`index ${index} is not in a tree of ${size}`);
      const seen = [];
      let fn = index;
      let sn = size - 1;
      let level = 0;
      let r = leaf;
      let done = false;
      for (const raw of proof) {
        const p = typeof raw === 'string' ? b64decode(raw) : raw;
        const hit = known.get(`${level}:${fn}`);
        if (hit !== undefined) {
          if (hit !== hex(r)) throw new VerifyError(`record ${index} is not in the signed tree`);
          done = true;
          break;
        }
        seen.push([`${level}:${fn}`, hex(r)]);
        if (sn === 0) throw new VerifyError('inclusion proof is too long');
        if (odd(fn) || fn === sn) {
          r = await nodeHash(p, r);
          while (!odd(fn) && fn !== 0) {
            fn = half(fn);
            sn = half(sn);
            level++;
          }
        } else {
          r = await nodeHash(r, p);
        }
        fn = half(fn);
        sn = half(sn);
        level++;
      }
      if (!done) {
        const hit = known.get(`${level}:${fn}`);
        if (hit !== undefined && hit === hex(r)) done = true;
        else if (sn !== 0) throw new VerifyError('inclusion proof is too short');
        else if (!equal(r, root)) throw new VerifyError(`record ${index} is not in the signed tree`);
      }
      for (const [k, h] of seen) known.set(k, h);
    } catch (e) {
      failed.set(index, e instanceof VerifyError ? e : new VerifyError(String(e)));
    }
  }
  return failed;
}

// RFC 9162, 2.1.4.2: the tree of size `second` extends the tree of size `first`.
export async function verifyConsistency(first, second, firstRoot, secondRoot, proof) {
  if (first > second || first < 0) throw new VerifyError("tree sizes out of order");
  if (first === second) {
    if (proof.length !== 0 || !equal(firstRoot, secondRoot)) throw new VerifyError("same size, other root");
    return;
  }
  if (first === 0) {
    if (proof.length !== 0) throw new VerifyError("proof from an empty tree must be empty");
    return;
  }
  if (proof.length === 0) throw new VerifyError("empty consistency proof");
  let path = proof;
  if (Number.isInteger(Math.log2(first))) path = [firstRoot, ...proof];
  let fn = first - 1;
  let sn = second - 1;
  while (odd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) throw new VerifyError("consistency proof is too long");
    if (odd(fn) || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      while (!odd(fn) && fn !== 0) {
        fn = half(fn);
        sn = half(sn);
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  if (sn !== 0 || !equal(fr, firstRoot) || !equal(sr, secondRoot)) {
    throw new VerifyError("the newer tree does not extend the older one");
  }
}

// -- C2SP signed notes and checkpoints ------------------------------------------------------

// A verifier key "<name>+<key id, 8 hex>+<base64(0x01 || public key)>" (Go's note format).
export async function parseVerifierKey(vkey) {
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(vkey.trim());
  if (!m) throw new VerifyError("the key is not a note verifier key");
  const [, name, idHex, b64] = m;
  const algKey = b64decode(b64);
  if (algKey.length !== 33 || algKey[0] !== 1) throw new VerifyError("the key is not an Ed25519 key");
  const id = (await sha256(concat(enc.encode(name), Uint8Array.of(10), algKey))).slice(0, 4);
  if (hex(id) !== idHex) throw new VerifyError("the key's id does not match its name and key");
  const key = await crypto.subtle.importKey("raw", algKey.slice(1), { name: "Ed25519" }, false, ["verify"]);
  return { name, id, key };
}

// Opens a signed note: returns its text if a signature by `verifier` verifies.
export async function openNote(note, verifier) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) throw new VerifyError("malformed note");
  const text = note.slice(0, split + 1);
  const sigLines = note.slice(split + 2, -1).split("\n");
  for (const line of sigLines) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) throw new VerifyError("malformed signature line");
    if (m[1] !== verifier.name) continue;
    const raw = b64decode(m[2]);
    if (raw.length !== 68 || !equal(raw.slice(0, 4), verifier.id)) continue;
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, verifier.key, raw.slice(4), enc.encode(text));
    if (ok) return text;
    throw new VerifyError("the checkpoint's signature does not verify");
  }
  throw new VerifyError("the checkpoint is not signed by this log's key");
}

// A C2SP tlog-checkpoint body: origin, tree size, base64 root hash, then extension lines.
export function parseCheckpoint(text) {
  const lines = text.split("\n");
  if (lines.length < 4 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new VerifyError("malformed checkpoint");
  const root = b64decode(lines[2]);
  if (root.length !== 32) throw new VerifyError("malformed checkpoint root");
  const size = Number(lines[1]);
  if (!Number.isSafeInteger(size)) throw new VerifyError("tree too large for this verifier");
  return { origin: lines[0], size, root };
}

export async function verifyCheckpoint(note, vkey) {
  const verifier = await parseVerifierKey(vkey);
  const cp = parseCheckpoint(await openNote(note, verifier));
  if (cp.origin !== verifier.name) throw new VerifyError("the checkpoint is from another log");
  return cp;
}

// -- records ----------------------------------------------------------------------------

// RFC 8785 canonical JSON. JSON.stringify already writes numbers and strings the way
// RFC 8785 asks (it is defined by them); what is left is sorting keys by UTF-16 units.
export function canonicalJSON(value) {
  if (value === null || typeof value !== "object") {
    if (typeof value === "number" && !Number.isFinite(value)) throw new VerifyError("not a finite number");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJSON).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJSON(value[k])}`).join(",")}}`;
}

// One reading as the batch digest sees it (canonical.py reading_record): float32 values,
// absent fields left out.
export function readingRecord(r) {
  const rec = { ts_us: r.ts_us, temp_c: Math.fround(r.temp_c) };
  if (r.rh != null) rec.rh = Math.fround(r.rh);
  if (r.battery_v != null) rec.battery_v = Math.fround(r.battery_v);
  if (r.door_open != null) rec.door_open = Boolean(r.door_open);
  if (r.seq != null) rec.seq = r.seq;
  return rec;
}

// The batch digest (canonical.py readings_digest): SHA-256 over the readings in time
// order, each packed as 29 bytes, little-endian: ts_us int64, temp_c, rh, battery_v
// float32 (0 when absent), seq int64 (0 when absent), flags (1 rh, 2 battery_v, 4 seq,
// 8 door_open present, 16 door open).
const READING_BYTES = 29;

export async function readingsDigest(readings) {
  const ordered = [...readings].sort((a, b) => a.ts_us - b.ts_us);
  const buf = new ArrayBuffer(ordered.length * READING_BYTES);
  const view = new DataView(buf);
  ordered.forEach((r, i) => {
    const at = i * READING_BYTES;
    const has = (v) => v !== null && v !== undefined;
    view.setBigInt64(at, BigInt(r.ts_us), true);
    view.setFloat32(at + 8, r.temp_c, true);
    view.setFloat32(at + 12, has(r.rh) ? r.rh : 0, true);
    view.setFloat32(at + 16, has(r.battery_v) ? r.battery_v : 0, true);
    view.setBigInt64(at + 20, BigInt(has(r.seq) ? r.seq : 0), true);
    const flags =
      (has(r.rh) ? 1 : 0) |
      (has(r.battery_v) ? 2 : 0) |
      (has(r.seq) ? 4 : 0) |
      (has(r.door_open) ? (r.door_open ? 24 : 8) : 0);
    view.setUint8(at + 28, flags);
  });
  return hex(await sha256(new Uint8Array(buf)));
}

// -- the shipment report's figures (telemetry/reports.py, exactly) ------------------------
// Times are integer microseconds (exact as JS numbers below 2**53), as the Python side
// keeps them; temperatures and seconds are doubles. See reports.py for the definitions.

export const ACTIVATION_K = 10000;
export const KELVIN = 273.15;

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

// Python's timedelta(seconds=x): to whole microseconds, halves to even.
function secondsToUs(x) {
  const us = x * 1e6;
  const r = Math.round(us);
  return Math.abs(us % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// G of one segment: gap_threshold_s if set, else max(gap_factor × median interval, min_gap_s).
export function gapThresholdUs(timesUs, params) {
  if (params.gap_threshold_s != null) return secondsToUs(params.gap_threshold_s);
  const floor = secondsToUs(params.min_gap_s);
  if (timesUs.length < 2) return floor;
  const intervals = [];
  for (let i = 1; i < timesUs.length; i++) intervals.push((timesUs[i] - timesUs[i - 1]) / 1e6);
  return Math.max(secondsToUs(params.gap_factor * median(intervals)), floor);
}

// Weights and gaps of one window's readings ({ts_us, temp_c}); reports.weigh.
export function weigh(points, startUs, endUs, gUs) {
  const pts = points.filter((p) => startUs <= p.ts_us && p.ts_us < endUs).sort((a, b) => a.ts_us - b.ts_us);
  if (!pts.length) return { weighted: [], gaps: endUs > startUs ? [{ start_us: startUs, end_us: endUs }] : [] };
  const weighted = [];
  const gaps = [];
  const lead = pts[0].ts_us - startUs;
  if (lead > gUs) gaps.push({ start_us: startUs, end_us: pts[0].ts_us });
  for (let i = 0; i < pts.length; i++) {
    const nxt = i + 1 < pts.length ? pts[i + 1].ts_us : endUs;
    const step = nxt - pts[i].ts_us;
    let w = Math.min(step, gUs);
    if (step > gUs) gaps.push({ start_us: pts[i].ts_us + gUs, end_us: nxt });
    if (i === 0 && lead <= gUs) w += lead;
    weighted.push({ ts_us: pts[i].ts_us, temp_c: pts[i].temp_c, w_us: w });
  }
  return { weighted, gaps };
}

// MKT in °C as a log-sum-exp (deep-frozen terms are ~1e-23); null without weight.
export function meanKineticTemperature(temps, weightsS, activationK = ACTIVATION_K) {
  const pairs = temps.map((t, i) => [t, weightsS[i]]).filter(([, w]) => w > 0);
  if (!pairs.length) return null;
  const xs = pairs.map(([t]) => -activationK / (t + KELVIN));
  const m = Math.max(...xs);
  let total = 0;
  let s = 0;
  pairs.forEach(([, w], i) => {
    total += w;
    s += w * Math.exp(xs[i] - m);
  });
  return -activationK / (m + Math.log(s) - Math.log(total)) - KELVIN;
}

export function beyondLimit(limit, t) {
  if (limit.direction === 'above') return limit.inclusive ? t >= limit.threshold : t > limit.threshold;
  return limit.inclusive ? t <= limit.threshold : t < limit.threshold;
}

// reports.summarize: the figures of weighted readings over a window (seconds as numbers).
export function summarize(weighted, gaps, windowUs, limits, activationK = ACTIVATION_K) {
  const temps = weighted.map((w) => w.temp_c);
  const secs = weighted.map((w) => w.w_us / 1e6);
  const coveredUs = weighted.reduce((n, w) => n + w.w_us, 0);
  const totalS = secs.reduce((a, b) => a + b, 0);
  const mean = totalS > 0 ? temps.reduce((n, t, i) => n + t * secs[i], 0) / totalS : null;
  const rangeRules = limits.filter((l) => l.kind === 'limit');
  const inRangeUs = weighted
    .filter((w) => !rangeRules.some((r) => beyondLimit(r, w.temp_c)))
    .reduce((n, w) => n + w.w_us, 0);
  return {
    reading_count: weighted.length,
    min_c: temps.length ? Math.min(...temps) : null,
    max_c: temps.length ? Math.max(...temps) : null,
    mean_c: mean,
    mkt_c: meanKineticTemperature(temps, secs, activationK),
    window_s: windowUs / 1e6,
    covered_s: coveredUs / 1e6,
    gap_s: gaps.reduce((n, g) => n + (g.end_us - g.start_us), 0) / 1e6,
    in_range_s: inRangeUs / 1e6,
    out_of_range_s: (coveredUs - inRangeUs) / 1e6,
    beyond: limits.map((l) => ({
      limit_id: l.id,
      beyond_s: weighted.filter((w) => beyondLimit(l, w.temp_c)).reduce((n, w) => n + w.w_us, 0) / 1e6,
    })),
  };
}

// The figures of a whole report from each segment's window and readings.
export function recomputeReport(segments, readingsBySegment, limits, params) {
  const out = { segments: [], total: null, gaps: [] };
  let all = [];
  let allGaps = [];
  let windowUs = 0;
  segments.forEach((seg, i) => {
    const pts = readingsBySegment[i].filter((p) => seg.start_us <= p.ts_us && p.ts_us < seg.end_us);
    const times = pts.map((p) => p.ts_us).sort((a, b) => a - b);
    const g = gapThresholdUs(times, params);
    const { weighted, gaps } = weigh(pts, seg.start_us, seg.end_us, g);
    out.segments.push({ gap_threshold_s: g / 1e6, summary: summarize(weighted, gaps, seg.end_us - seg.start_us, limits, params.activation_k), gaps });
    all = all.concat(weighted);
    allGaps = allGaps.concat(gaps);
    windowUs += seg.end_us - seg.start_us;
  });
  out.total = summarize(all, allGaps, windowUs, limits, params.activation_k);
  out.gaps = allGaps;
  return out;
}

// Which figures differ (names), within what float32 storage and summation order allow.
export function compareSummary(shown, computed) {
  const bad = [];
  const close = (a, b, tol) => (a == null || b == null ? a == null && b == null : Math.abs(a - b) <= tol);
  if (shown.reading_count !== computed.reading_count) bad.push('reading_count');
  for (const k of ['min_c', 'max_c', 'mean_c', 'mkt_c']) if (!close(shown[k], computed[k], 1e-3)) bad.push(k);
  for (const k of ['window_s', 'covered_s', 'gap_s', 'in_range_s', 'out_of_range_s']) {
    if (!close(shown[k], computed[k], 1e-3)) bad.push(k);
  }
  const beyond = new Map((computed.beyond || []).map((b) => [b.limit_id, b.beyond_s]));
  for (const b of shown.beyond || []) if (!close(b.beyond_s, beyond.get(b.limit_id) ?? null, 1e-3)) bad.push(`beyond ${b.limit_id}`);
  return bad;
}

// A leaf's bytes as its record, if they are exactly the canonical JSON of an object.
export function parseLeaf(entry) {
  const text = new TextDecoder('utf-8', { fatal: true }).decode(entry);
  const value = JSON.parse(text);
  if (value === null || typeof value !== 'object' || value.v !== 1) throw new VerifyError('not a version 1 record');
  if (canonicalJSON(value) !== text) throw new VerifyError(`a ${value.kind} record not in canonical form`);
  return value;
}
