"""The browser's verifier (web/static/verify.js) agrees with the Python evidence log.

Vectors made here with telemetry.evidence (trees, inclusion and consistency proofs, a
signed checkpoint, a readings digest) are checked in headless Chromium's WebCrypto, and
every tampered variant must be refused. No WebRTC is involved, so the page is served on
127.0.0.1 without the network namespace the other browser tests need.
"""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from telemetry.evidence.canonical import reading_record, readings_digest
from telemetry.evidence.merkle import MemoryTree, consistency_proof, inclusion_proof
from telemetry.evidence.note import Checkpoint, NoteSigner, sign_checkpoint
from tests.e2e.harness import CHROMIUM, launch_chromium
from web.pages import STATIC_DIR


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(STATIC_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with launch_chromium(str(CHROMIUM)) as browser:
            b: Browser = browser
            p = b.new_page()
            p.goto(f"http://127.0.0.1:{httpd.server_port}/style.css")  # any same-origin page
            p.evaluate("async () => { window.V = await import('/verify.js'); }")
            yield p
    finally:
        httpd.shutdown()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


ENTRIES = [f'{{"kind":"test","n":{i}}}'.encode() for i in range(37)]


def test_inclusion_proofs_agree(page: Page) -> None:
    tree = MemoryTree()
    for e in ENTRIES:
        tree.append(e)
    cases = []
    for size in (1, 2, 3, 7, 8, 16, 37):
        root = tree.root(size)
        for index in range(size):
            proof = inclusion_proof(tree, index, size)
            cases.append([index, size, _b64(ENTRIES[index]), [_b64(p) for p in proof], _b64(root)])
    result = page.evaluate(
        """async (cases) => {
          const d = (s) => V.b64decode(s);
          const out = {ok: 0, tamperedRefused: 0, errors: []};
          for (const [index, size, entry, proof, root] of cases) {
            const leaf = await V.leafHash(d(entry));
            try { await V.verifyInclusion(index, size, leaf, proof.map(d), d(root)); out.ok++; }
            catch (e) { out.errors.push(`${index}/${size}: ${e.message}`); }
            const bad = d(entry); bad[0] ^= 1;
            try { await V.verifyInclusion(index, size, await V.leafHash(bad), proof.map(d), d(root)); }
            catch (e) { out.tamperedRefused++; }
          }
          return out;
        }""",
        cases,
    )
    assert result["errors"] == []
    assert result["ok"] == len(cases) == result["tamperedRefused"]


def test_shared_inclusion_proofs_agree(page: Page) -> None:
    """verifyInclusions (many proofs into one tree, sharing the nodes they have in common)
    accepts every leaf of every tree size at once, and refuses exactly the records whose
    entry or proof was changed, wherever they fall among good ones."""
    tree = MemoryTree()
    for e in ENTRIES:
        tree.append(e)
    cases = []
    for size in (1, 2, 3, 5, 7, 8, 16, 37):
        proofs = [[_b64(p) for p in inclusion_proof(tree, i, size)] for i in range(size)]
        items = [[i, _b64(ENTRIES[i]), proofs[i]] for i in range(size)]
        cases.append([size, _b64(tree.root(size)), items])
    result = page.evaluate(
        """async (cases) => {
          const d = (s) => V.b64decode(s);
          const out = {ok: 0, errors: [], refused: []};
          const run = async (size, root, items, mutate) => {
            const list = [];
            for (const [index, entry, proof] of items) {
              const e = d(entry); const p = proof.map(d);
              mutate(index, e, p);
              list.push({ index, leaf: await V.leafHash(e), proof: p });
            }
            return V.verifyInclusions(list, size, d(root));
          };
          for (const [size, root, items] of cases) {
            const good = await run(size, root, items, () => {});
            if (good.size) out.errors.push(`${size}: ${[...good.keys()]}`); else out.ok++;
            // One changed entry in the middle, after its neighbours were proved.
            const mid = Math.floor(size / 2);
            const bad = await run(size, root, items, (i, e) => { if (i === mid) e[0] ^= 1; });
            out.refused.push([size, 'entry', [...bad.keys()]]);
            // The last record's sibling changed (a proof's first hash is always used; a
            // later one may not be, once the path meets a node already proved).
            if (size > 1) {
              const last = size - 1;
              const worse = await run(size, root, items, (i, e, p) => { if (i === last) p[0][0] ^= 1; });
              out.refused.push([size, 'proof', [...worse.keys()]]);
            }
          }
          return out;
        }""",
        cases,
    )
    assert result["errors"] == [] and result["ok"] == len(cases)
    for size, what, refused in result["refused"]:
        assert refused == ([size // 2] if what == "entry" else [size - 1]), (size, what, refused)


def test_consistency_proofs_agree(page: Page) -> None:
    tree = MemoryTree()
    for e in ENTRIES:
        tree.append(e)
    cases = []
    for new in range(1, len(ENTRIES) + 1):
        for old in range(1, new + 1):
            proof = consistency_proof(tree, old, new)
            cases.append([old, new, _b64(tree.root(old)), _b64(tree.root(new)), [_b64(p) for p in proof]])
    result = page.evaluate(
        """async (cases) => {
          const d = (s) => V.b64decode(s);
          const out = {ok: 0, swappedRefused: 0, errors: []};
          for (const [old, nw, r1, r2, proof] of cases) {
            try { await V.verifyConsistency(old, nw, d(r1), d(r2), proof.map(d)); out.ok++; }
            catch (e) { out.errors.push(`${old}->${nw}: ${e.message}`); }
            if (old < nw) {
              try { await V.verifyConsistency(old, nw, d(r2), d(r1), proof.map(d)); }
              catch (e) { out.swappedRefused++; }
            }
          }
          return out;
        }""",
        cases,
    )
    assert result["errors"] == []
    assert result["ok"] == len(cases)
    assert result["swappedRefused"] == sum(1 for c in cases if c[0] < c[1])


def test_signed_checkpoint_verifies_only_under_its_key(page: Page) -> None:
    tree = MemoryTree()
    for e in ENTRIES:
        tree.append(e)
    signer = NoteSigner.generate("origincast.test/log")
    other = NoteSigner.generate("origincast.test/log")
    note = sign_checkpoint(Checkpoint(signer.name, tree.size, tree.root()), signer)
    forged = note.replace(f"\n{tree.size}\n", f"\n{tree.size + 1}\n")
    result = page.evaluate(
        """async ([note, forged, vkey, otherKey]) => {
          const cp = await V.verifyCheckpoint(note, vkey);
          const refuse = async (n, k) => {
            try { await V.verifyCheckpoint(n, k); return "accepted"; } catch (e) { return e.message; }
          };
          return {origin: cp.origin, size: cp.size, root: V.hex(cp.root),
                  forged: await refuse(forged, vkey), otherKey: await refuse(note, otherKey)};
        }""",
        [note, forged, signer.vkey, other.vkey],
    )
    assert result["origin"] == signer.name
    assert result["size"] == tree.size
    assert result["root"] == tree.root().hex()
    assert result["forged"] != "accepted" and "signature" in result["forged"]
    assert result["otherKey"] != "accepted"


def test_readings_digest_agrees_with_python(page: Page) -> None:
    readings = [
        {
            "ts_us": 1_764_000_000_000_000 + i * 60_000_000,
            "temp_c": t,
            "rh": rh,
            "battery_v": 3.01,
            "door_open": i % 3 == 0,
            "seq": 100 + i,
        }
        for i, (t, rh) in enumerate([(3.4, 81.0), (-18.25, None), (0.1, 55.5), (1e-5, 100.0), (25.0, None)])
    ]
    for r in readings:
        if r["rh"] is None:
            del r["rh"]
    shuffled = list(reversed(readings))
    expected = readings_digest(
        [
            reading_record(r["ts_us"], r["temp_c"], r.get("rh"), r["battery_v"], r["door_open"], r["seq"])
            for r in readings
        ]
    )
    got = page.evaluate("async (rs) => V.readingsDigest(rs)", shuffled)
    assert got == expected
    changed = [dict(r) for r in readings]
    changed[2]["temp_c"] = 0.2
    assert page.evaluate("async (rs) => V.readingsDigest(rs)", changed) != expected
