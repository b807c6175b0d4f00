// Verification of origincast's evidence log in the customer's own browser.
//
// Nothing here trusts the server: a checkpoint counts only if its Ed25519 signature
// verifies under the key the customer brought (the QR code's fragment); records count
// only if their RFC 6962 inclusion proof (one multi-leaf proof for all of a page's
// records) leads to that checkpoint's root. The server hands out the proofs and records,
// which is safe because they are checked, not believed.
// Mirrors telemetry/evidence (merkle.py, note.py, canonical.py); tests run both sides
// on the same vectors.

const enc = new TextEncoder();

export class VerifyError extends Error {}

// -- bytes -------------------------------------------------------------------------------

const hasFromBase64 = typeof Uint8Array.fromBase64 === 'function';

export function b64decode(s) {
  if (typeof s !== 'string') throw new VerifyError('not base64');
  if (hasFromBase64) {
    // native, and as strict as the pattern below but for ASCII whitespace, which it skips
    try {
      return Uint8Array.fromBase64(s, { lastChunkHandling: 'strict' });
    } catch {
      throw new VerifyError('not base64');
    }
  }
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

const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

export function hex(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += HEX[bytes[i]];
  return out;
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

// WebCrypto copies its input when called (WebCrypto's digest(): "a copy of the bytes held
// by the data parameter"), so one scratch buffer serves every call: tens of thousands
// of hashes of a month's records then allocate nothing but their results.
let scratch = new Uint8Array(1024);
const nodeScratch = Uint8Array.of(1, ...new Uint8Array(64)); // 0x01, RFC 6962's node prefix

// SHA-256 of 0x00 || entry, as a promise of an ArrayBuffer (leafHash wraps it).
function leafDigest(entry) {
  if (scratch.length < entry.length + 1) scratch = new Uint8Array(2 * entry.length + 2);
  scratch[0] = 0;
  scratch.set(entry, 1);
  return crypto.subtle.digest("SHA-256", scratch.subarray(0, entry.length + 1));
}

function nodeDigest(left, right) {
  nodeScratch.set(left, 1);
  nodeScratch.set(right, 33);
  return crypto.subtle.digest("SHA-256", nodeScratch);
}

export async function leafHash(entry) {
  return new Uint8Array(await leafDigest(entry));
}

async function nodeHash(left, right) {
  return new Uint8Array(await nodeDigest(left, right));
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

// The largest power of two below n (n >= 2): RFC 6962's split point k.
function split(n) {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

// A multi-leaf inclusion proof (merkle.py multi_inclusion_proof): RFC 6962's recursion
// walked from the root, left subtree before right; each subtree holding none of the
// leaves is one 32-byte hash of the proof, in that order. `leaves` are [index, leaf hash]
// with strictly increasing indices; `proof` is the hashes concatenated. Every node above
// the leaves is hashed once, and all the nodes of one height are asked of WebCrypto at
// once (each call is a round trip to its thread; one at a time they were most of a
// month's verifying). Returns the root; VerifyError if the proof has the wrong shape.
export async function rootFromMultiProof(size, leaves, proof) {
  if (!Number.isSafeInteger(size) || size < 1) throw new VerifyError(`no records can be in a tree of ${size}`);
  if (!leaves.length) throw new VerifyError('no records to prove');
  if (proof.length % 32 !== 0) throw new VerifyError('the inclusion proof is not a list of hashes');
  let last = -1;
  for (const [index, hash] of leaves) {
    if (!Number.isSafeInteger(index) || index <= last) throw new VerifyError('records out of order');
    if (index >= size) throw new VerifyError(`record ${index} is not in a tree of ${size}`);
    if (hash.length !== 32) throw new VerifyError(`record ${index}'s hash is not 32 bytes`);
    last = index;
  }
  const count = proof.length / 32;
  const levels = []; // levels[h]: the nodes of height h to hash, each {left, right, hash}
  let used = 0;
  const walk = (start, end, lo, hi) => {
    // leaves[lo..hi) are those in [start, end)
    if (lo === hi) {
      if (used === count) throw new VerifyError('the inclusion proof is missing hashes');
      used += 1;
      return { height: 0, hash: proof.subarray((used - 1) * 32, used * 32) };
    }
    if (end - start === 1) return { height: 0, hash: leaves[lo][1] };
    const k = start + split(end - start);
    let mid = lo;
    let top = hi;
    while (mid < top) {
      const m = (mid + top) >>> 1;
      if (leaves[m][0] < k) mid = m + 1;
      else top = m;
    }
    const left = walk(start, k, lo, mid);
    const right = walk(k, end, mid, hi);
    const node = { height: Math.max(left.height, right.height) + 1, left, right, hash: null };
    (levels[node.height] ||= []).push(node);
    return node;
  };
  const root = walk(0, size, 0, leaves.length);
  if (used !== count) throw new VerifyError('the inclusion proof has hashes it does not need');
  for (const nodes of levels) {
    if (!nodes) continue;
    const hashes = await Promise.all(nodes.map((n) => nodeDigest(n.left.hash, n.right.hash)));
    for (let i = 0; i < nodes.length; i++) nodes[i].hash = new Uint8Array(hashes[i]);
  }
  return root.hash;
}

// Every leaf is in the tree of the checkpoint `{size, root}`; VerifyError if not.
export async function verifyMultiProof(size, root, leaves, proof) {
  const got = await rootFromMultiProof(size, leaves, proof);
  if (!equal(got, root)) {
    throw new VerifyError(`the ${leaves.length} records are not all in the signed tree of ${size}`);
  }
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

// A batch's readings as the server hands them out: the records its digest is over
// (canonical.py readings_digest), in time order, each 29 bytes little-endian: ts_us
// int64, temp_c, rh, battery_v float32 (0 when absent), seq int64 (0 when absent), flags
// (1 rh, 2 battery_v, 4 seq, 8 door_open present, 16 door open). Their SHA-256 is the
// digest; decodeRecords reads the readings back (absent fields null).
export const READING_BYTES = 29;
const TWO_32 = 4294967296;

export function decodeRecords(bytes) {
  if (bytes.length % READING_BYTES !== 0) throw new VerifyError('readings are not whole records');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Array(bytes.length / READING_BYTES);
  for (let i = 0, at = 0; i < out.length; i++, at += READING_BYTES) {
    const flags = view.getUint8(at + 28);
    // int64s as two halves: exact below 2**53, as every time and sequence number is
    const ts = view.getInt32(at + 4, true) * TWO_32 + view.getUint32(at, true);
    const seq = view.getInt32(at + 24, true) * TWO_32 + view.getUint32(at + 20, true);
    out[i] = {
      ts_us: ts,
      temp_c: view.getFloat32(at + 8, true),
      rh: flags & 1 ? view.getFloat32(at + 12, true) : null,
      battery_v: flags & 2 ? view.getFloat32(at + 16, true) : null,
      door_open: flags & 8 ? Boolean(flags & 16) : null,
      seq: flags & 4 ? seq : null,
    };
  }
  return out;
}

// The records (bytes) and their readings are exactly what a readings_batch leaf commits
// to: count, time range, sequence range and digest (hex, of the bytes). Returns what
// differs, or null.
export function batchMismatch(batch, readings, digest) {
  if (readings.length !== batch.count) return `${readings.length} readings, the log says ${batch.count}`;
  let tsMin = Infinity;
  let tsMax = -Infinity;
  let seqMin = Infinity;
  let seqMax = -Infinity;
  for (const r of readings) {
    if (r.ts_us < tsMin) tsMin = r.ts_us;
    if (r.ts_us > tsMax) tsMax = r.ts_us;
    if (r.seq !== null) {
      if (r.seq < seqMin) seqMin = r.seq;
      if (r.seq > seqMax) seqMax = r.seq;
    }
  }
  if (tsMin !== batch.ts_first_us || tsMax !== batch.ts_last_us) return "the readings' time range differs";
  const seqs = seqMin === Infinity ? [null, null] : [seqMin, seqMax];
  if (seqs[0] !== (batch.seq_first ?? null) || seqs[1] !== (batch.seq_last ?? null)) {
    return "the readings' sequence range differs";
  }
  if (digest !== batch.readings_sha256) return 'the readings differ (SHA-256)';
  return null;
}

// -- the shipment report's figures (telemetry/reports.py, exactly) ------------------------
// Times are integer microseconds (exact as JS numbers below 2**53), as the Python side
// keeps them; temperatures and seconds are doubles. See reports.py for the definitions.

export const ACTIVATION_K = 10000;
export const KELVIN = 273.15;

// (typed arrays sort numbers natively, many times faster than a comparator)
function median(xs) {
  const s = Float64Array.from(xs).sort();
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

// Python's timedelta(seconds=x): to whole microseconds, halves to even.
function secondsToUs(x) {
  const us = x * 1e6;
  const r = Math.round(us);
  return Math.abs(us % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// Readings by time; batches come in time order already, so most often this only looks.
function inTimeOrder(points) {
  for (let i = 1; i < points.length; i++) {
    if (points[i].ts_us < points[i - 1].ts_us) return [...points].sort((a, b) => a.ts_us - b.ts_us);
  }
  return points;
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
  const pts = inTimeOrder(points.filter((p) => startUs <= p.ts_us && p.ts_us < endUs));
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
// (Loops, not map/filter: a month of readings, and typed arrays welcome.)
export function meanKineticTemperature(temps, weightsS, activationK = ACTIVATION_K) {
  let m = -Infinity;
  for (let i = 0; i < temps.length; i++) {
    if (weightsS[i] > 0) m = Math.max(m, -activationK / (temps[i] + KELVIN));
  }
  if (m === -Infinity) return null;
  let total = 0;
  let s = 0;
  for (let i = 0; i < temps.length; i++) {
    const w = weightsS[i];
    if (w > 0) {
      total += w;
      s += w * Math.exp(-activationK / (temps[i] + KELVIN) - m);
    }
  }
  return -activationK / (m + Math.log(s) - Math.log(total)) - KELVIN;
}

export function beyondLimit(limit, t) {
  if (limit.direction === 'above') return limit.inclusive ? t >= limit.threshold : t > limit.threshold;
  return limit.inclusive ? t <= limit.threshold : t < limit.threshold;
}

// reports.summarize: the figures of weighted readings over a window (seconds as numbers),
// in one pass over them.
export function summarize(weighted, gaps, windowUs, limits, activationK = ACTIVATION_K) {
  const n = weighted.length;
  const temps = new Float64Array(n);
  const secs = new Float64Array(n);
  const isRange = limits.map((l) => l.kind === 'limit');
  const beyondUs = limits.map(() => 0);
  let coveredUs = 0;
  let totalS = 0;
  let weightedSum = 0;
  let inRangeUs = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const { temp_c: t, w_us: w } = weighted[i];
    temps[i] = t;
    secs[i] = w / 1e6;
    coveredUs += w;
    totalS += secs[i];
    weightedSum += t * secs[i];
    if (t < min) min = t;
    if (t > max) max = t;
    let inRange = true;
    for (let j = 0; j < limits.length; j++) {
      if (beyondLimit(limits[j], t)) {
        beyondUs[j] += w;
        if (isRange[j]) inRange = false;
      }
    }
    if (inRange) inRangeUs += w;
  }
  return {
    reading_count: n,
    min_c: n ? min : null,
    max_c: n ? max : null,
    mean_c: totalS > 0 ? weightedSum / totalS : null,
    mkt_c: meanKineticTemperature(temps, secs, activationK),
    window_s: windowUs / 1e6,
    covered_s: coveredUs / 1e6,
    gap_s: gaps.reduce((sum, g) => sum + (g.end_us - g.start_us), 0) / 1e6,
    in_range_s: inRangeUs / 1e6,
    out_of_range_s: (coveredUs - inRangeUs) / 1e6,
    beyond: limits.map((l, j) => ({ limit_id: l.id, beyond_s: beyondUs[j] / 1e6 })),
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
    const times = inTimeOrder(pts).map((p) => p.ts_us);
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

// Keys in RFC 8785's order (UTF-16 code units, which is what sort() compares), at
// every level of a parsed record.
function keysSorted(value) {
  if (value === null || typeof value !== 'object') return true;
  if (Array.isArray(value)) return value.every(keysSorted);
  let last = null;
  for (const k of Object.keys(value)) {
    if (last !== null && !(last < k)) return false;
    if (!keysSorted(value[k])) return false;
    last = k;
  }
  return true;
}

// A leaf's bytes as its record, if they are exactly the canonical JSON of an object.
// (The quick test first: a canonical text is what JSON.stringify writes back when its
// keys were sorted; anything else goes through canonicalJSON.)
const utf8 = new TextDecoder('utf-8', { fatal: true });

export function parseLeaf(entry) {
  const text = utf8.decode(entry);
  const value = JSON.parse(text);
  if (value === null || typeof value !== 'object' || value.v !== 1) throw new VerifyError('not a version 1 record');
  const canonical = (JSON.stringify(value) === text && keysSorted(value)) || canonicalJSON(value) === text;
  if (!canonical) throw new VerifyError(`a ${value.kind} record not in canonical form`);
  return value;
}
