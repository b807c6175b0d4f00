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

export async function readingsDigest(readings) {
  const ordered = readings.map(readingRecord).sort((a, b) => a.ts_us - b.ts_us);
  return hex(await sha256(enc.encode(canonicalJSON(ordered))));
}
