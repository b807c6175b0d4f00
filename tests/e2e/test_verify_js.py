"""The browser's verifier (web/static/verify.js) agrees with the Python evidence log.

Vectors made here with telemetry.evidence (trees, inclusion, multi-leaf inclusion and
consistency proofs, a signed checkpoint, readings records and their digest) are checked
in headless Chromium's WebCrypto, and every tampered variant must be refused. No WebRTC
is involved, so the page is served on 127.0.0.1 without the network namespace the other
browser tests need.
"""

from __future__ import annotations

import base64
import functools
import http.server
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from telemetry.alerts.rules import pharma_profile
from telemetry.evidence.canonical import pack_reading, reading_record, readings_batch, readings_digest
from telemetry.evidence.merkle import (
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    multi_inclusion_proof,
    verify_multi_inclusion,
)
from telemetry.evidence.note import Checkpoint, NoteSigner, sign_checkpoint
from telemetry.readings import Reading
from telemetry.reports import ReportParams, gap_threshold, limits_of, summarize, weigh
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


def _multiproof_cases(rng: random.Random) -> list[dict[str, Any]]:
    """Good and bad multi-leaf proofs, each judged by the Python verifier: random trees,
    random sets of leaves, then a changed leaf, a leaf at another index, a hash missing,
    a hash too many, a hash changed, a checkpoint of another size, a leaf not proved."""
    cases: list[dict[str, Any]] = []
    for _ in range(60):
        n = rng.randint(1, 300)
        entries = [f"leaf {n}/{i} {rng.random()}".encode() for i in range(n)]
        tree = MemoryTree()
        for e in entries:
            tree.append(e)
        size = rng.randint(1, n)
        picked = sorted(rng.sample(range(size), rng.randint(1, min(size, 40))))
        proof = multi_inclusion_proof(tree, picked, size)

        def case(
            what: str, leaves: dict[int, bytes], hashes: list[bytes], sz: int = size, tree: MemoryTree = tree
        ) -> None:
            root = tree.root(sz)
            try:
                verify_multi_inclusion(sz, {i: leaf_hash(e) for i, e in leaves.items()}, hashes, root)
                ok = True
            except ProofError:
                ok = False
            cases.append({"what": what, "size": sz, "root": _b64(root), "ok": ok,
                          "leaves": [[i, _b64(e)] for i, e in sorted(leaves.items())],
                          "proof": _b64(b"".join(hashes))})  # fmt: skip

        good = {i: entries[i] for i in picked}
        case("good", good, proof)
        victim = rng.choice(picked)
        case("changed leaf", {**good, victim: entries[victim] + b"!"}, proof)
        outside = [i for i in range(size) if i not in good]
        if outside:
            other = rng.choice(outside)
            moved = {i: e for i, e in good.items() if i != victim} | {other: entries[victim]}
            case("leaf at another index", moved, proof)
            case("leaf not proved", {**good, other: entries[other]}, proof)
        if proof:
            at = rng.randrange(len(proof))
            case("hash missing", good, proof[:at] + proof[at + 1 :])
            bad = bytearray(proof[at])
            bad[rng.randrange(32)] ^= 1 << rng.randrange(8)
            case("hash changed", good, [*proof[:at], bytes(bad), *proof[at + 1 :]])
        at = rng.randint(0, len(proof))
        case("hash too many", good, [*proof[:at], leaf_hash(b"extra"), *proof[at:]])
        for sz in {size - 1, size + 1} - {0}:
            if sz <= n and max(picked) < sz:
                case("another size", good, proof, sz)
    return cases


def test_multi_leaf_proofs_agree_with_python(page: Page) -> None:
    """rootFromMultiProof / verifyMultiProof accept exactly the proofs telemetry's
    verifier accepts: every good one, and none of the broken ones."""
    cases = _multiproof_cases(random.Random(6962))
    assert sum(c["ok"] for c in cases) == 60 and len(cases) > 300  # every good one, only they
    result = page.evaluate(
        """async (cases) => {
          const d = (s) => V.b64decode(s);
          const out = [];
          for (const c of cases) {
            const leaves = [];
            for (const [i, e] of c.leaves) leaves.push([i, await V.leafHash(d(e))]);
            try {
              await V.verifyMultiProof(c.size, d(c.root), leaves, d(c.proof));
              out.push([c.what, true, '']);
            } catch (e) {
              out.push([c.what, false, e instanceof V.VerifyError ? e.message : `NOT A VerifyError: ${e}`]);
            }
          }
          return out;
        }""",
        cases,
    )
    for c, (what, ok, message) in zip(cases, result, strict=True):
        assert (what, ok) == (c["what"], c["ok"]), (c, message)
        assert "NOT A VerifyError" not in message, message
    refused = {what for what, ok, _ in result if not ok}
    assert refused == {"changed leaf", "leaf at another index", "leaf not proved", "hash missing",
                       "hash changed", "hash too many", "another size"}  # fmt: skip


def test_multi_leaf_proof_of_a_month_of_batches(page: Page) -> None:
    """A trust page's case: thousands of consecutive leaves among others, verified in
    one go, and the root equals Python's."""
    entries = [f'{{"n":{i}}}'.encode() for i in range(9000)]
    tree = MemoryTree()
    for e in entries:
        tree.append(e)
    picked = [*range(100, 3000), 5000, 8999]
    proof = multi_inclusion_proof(tree, picked, 9000)
    got = page.evaluate(
        """async ([entries, proof]) => {
          const hash = async ([i, e]) => [i, await V.leafHash(V.b64decode(e))];
          const leaves = await Promise.all(entries.map(hash));
          return V.hex(await V.rootFromMultiProof(9000, leaves, V.b64decode(proof)));
        }""",
        [[[i, _b64(entries[i])] for i in picked], _b64(b"".join(proof))],
    )
    assert got == tree.root().hex()


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


def test_records_decode_and_hash_as_python_packs_them(page: Page) -> None:
    """A batch's records as the server sends them (canonical.pack_reading, in time
    order): their SHA-256 is Python's readings digest, and decodeRecords reads back the
    float32 values, absent fields as null; batchMismatch names what differs."""
    readings = [
        reading_record(
            1_764_000_000_000_000 + i * 60_000_000, t, rh, 3.01, i % 3 == 0 if i != 4 else None, seq
        )
        for i, (t, rh, seq) in enumerate(
            [
                (3.4, 81.0, 100),
                (-18.25, None, 101),
                (0.1, 55.5, None),
                (1e-5, 100.0, 2**53 - 1),
                (25.0, None, 0),
            ]
        )
    ]
    blob = b"".join(
        pack_reading(
            r["ts_us"], r["temp_c"], r.get("rh"), r.get("battery_v"), r.get("door_open"), r.get("seq")
        )
        for r in readings
    )
    batch = readings_batch("truck-1", readings).to_json()
    got = page.evaluate(
        """async ([blob, batch]) => {
          const bytes = V.b64decode(blob);
          const readings = V.decodeRecords(bytes);
          const digest = V.hex(await V.sha256(bytes));
          const bad = (change) => {
            const copy = readings.map((r) => ({ ...r }));
            change(copy);
            return V.batchMismatch(batch, copy, digest);
          };
          let torn = null;
          try { V.decodeRecords(bytes.subarray(0, 40)); } catch (e) { torn = e.message; }
          return { readings, digest, ok: V.batchMismatch(batch, readings, digest),
                   fewer: V.batchMismatch(batch, readings.slice(1), digest),
                   seq: bad((rs) => { rs[3].seq = 5; }), time: bad((rs) => { rs[4].ts_us += 1; }),
                   other: V.batchMismatch(batch, readings, '00'.repeat(32)), torn };
        }""",
        [_b64(blob), batch],
    )
    assert got["digest"] == readings_digest(readings) == batch["readings_sha256"]
    expected = [{"rh": None, "battery_v": None, "door_open": None, "seq": None, **r} for r in readings]
    assert got["readings"] == expected
    assert got["ok"] is None
    assert got["fewer"] == "4 readings, the log says 5"
    assert "sequence range" in got["seq"] and "time range" in got["time"] and "SHA-256" in got["other"]
    assert got["torn"] == "readings are not whole records"


def test_figures_recomputed_in_the_browser_equal_pythons(page: Page) -> None:
    """recomputeReport (what the page checks the shown figures with) against
    telemetry.reports on two segments of irregular readings with a gap and excursions
    both ways, under a profile's limits; a changed reading shows in the figures."""
    rng = random.Random(12830)
    params = ReportParams()
    limits = limits_of(pharma_profile())
    t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    segments, readings = [], []
    for k, (start_h, end_h) in enumerate(((0, 30), (30, 72))):
        start, end = t0 + timedelta(hours=start_h), t0 + timedelta(hours=end_h)
        t, rows = start + timedelta(seconds=rng.randint(0, 300)), []
        while t < end:
            rows.append(Reading(f"dev-{k}", t, round(rng.uniform(-1.0, 10.5), 2)))
            t += timedelta(seconds=rng.choice((60, 60, 90, 300, 7200 if rng.random() < 0.01 else 60)))
        segments.append((start, end))
        readings.append(rows)
    py_segments, all_w, all_g = [], [], []
    for (start, end), rows in zip(segments, readings, strict=True):
        g = gap_threshold(sorted(r.ts for r in rows), params)
        weighted, gaps = weigh(rows, start, end, g)
        py_segments.append(summarize(weighted, gaps, end - start, limits, params.activation_k).to_dict())
        all_w += weighted
        all_g += gaps
    total = summarize(all_w, all_g, segments[-1][1] - segments[0][0], limits, params.activation_k).to_dict()
    us = lambda t: int(t.timestamp() * 1_000_000)  # noqa: E731
    got = page.evaluate(
        """([segments, readings, limits, params, shown, total]) => {
          const again = V.recomputeReport(segments, readings, limits, params);
          const bad = shown.map((s, i) => V.compareSummary(s, again.segments[i].summary));
          readings[1][7].temp_c = 30;
          const changed = V.recomputeReport(segments, readings, limits, params);
          return { bad, badTotal: V.compareSummary(total, again.total), gaps: again.gaps.length,
                   changed: V.compareSummary(total, changed.total) };
        }""",
        [
            [{"start_us": us(s), "end_us": us(e)} for s, e in segments],
            [[{"ts_us": us(r.ts), "temp_c": r.temp_c} for r in rows] for rows in readings],
            [lim.to_dict() for lim in limits],
            params.to_dict(),
            py_segments,
            total,
        ],
    )
    assert got["bad"] == [[], []] and got["badTotal"] == [], got
    assert got["gaps"] == len(all_g) > 0
    assert {"max_c", "mean_c", "mkt_c"} <= set(got["changed"]), got
