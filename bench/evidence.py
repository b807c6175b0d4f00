#!/usr/bin/env python3
"""What the evidence log costs, and how fast a trust page verifies (issue 6's targets).

    .venv/bin/python bench/evidence.py            # full size (a few minutes)
    .venv/bin/python bench/evidence.py --quick    # smoke run: proves it works, figures meaningless
    .venv/bin/python bench/evidence.py --no-postgres --browser-runs 5

1. Ingest CPU per reading with the evidence log on versus off (StorageSettings.evidence_log,
   a switch that exists only for this measurement). The same readings go through
   ``store.write_batch`` in batches as the ingester makes them, through the real sealing
   path with the default settings (a leaf per device per 900 s window of readings, at
   most 1,000 readings: telemetry/storage/evidence_batches.py), the last open batches
   sealed by ``seal_pending`` inside the measured time. Shapes: ``--devices`` devices a
   reading a second each, interleaved, ``--batch-rows`` rows a batch (the ingester's
   batch_max_rows is 5,000) and ``--small-batch-rows`` (a quiet fleet's small batches);
   and a live fleet, ``--live-devices`` devices each reading every ``--live-interval-s``
   with one reading per device per transaction. Each mode gets a fresh database and the
   modes alternate ``--repeat`` times; medians. CPU is this process's (SQLite runs in it)
   plus, for PostgreSQL, the server's processes (postmaster and every backend, from
   /proc), all divided by the readings stored. Target: ≤ 3 µs of CPU added per reading.
2. A 30-day shipment with a reading a minute (43,200 readings) on one device, stored
   through ``store.write_batch`` ``--per-batch`` readings a call (default 1: a live
   sensor), through the sealing path, so its leaves are what a live sensor gets (15
   readings a leaf with the default 900 s window); then, against a real
   ``origincast serve --no-ingest`` (SQLite, a signing key):
   - the server's time to build ``GET /api/v1/public/shipments/{id}`` (median of
     ``--server-runs``, after one warm-up call that also signs the checkpoint), and the
     answer's size;
   - in headless Chromium (Debian's), the time from navigation start to the page's
     verdict, and the part of it after the endpoint's answer arrived (the verifying
     itself); median of ``--browser-runs`` fresh page loads. Target: ≤ 1 s.
   Each page load must say "verified": a bench that measured a failing page would be
   measuring the wrong thing.

Everything runs on this machine, on loopback. Progress goes to stderr; figures to stdout,
and the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.services import Postgres, free_port  # noqa: E402
from telemetry.evidence.keys import init_key  # noqa: E402
from telemetry.evidence.merkle import MemoryTree, leaf_hash, multi_inclusion_proof  # noqa: E402
from telemetry.readings import Reading  # noqa: E402
from telemetry.settings import StorageSettings  # noqa: E402
from telemetry.storage import Store, open_store  # noqa: E402
from telemetry.storage.alerts import Device  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHROMIUM = Path("/usr/bin/chromium")
ADMIN_TOKEN = "bench-evidence-admin-token-0123456789"
ORIGIN = "bench.origincast.test/log"
SHIPMENT, DEVICE = "bench-30d", "reefer-bench"
TARGET_ADDED_US = 3.0
TARGET_VERIFY_S = 1.0
# Off the Playwright harness of tests/e2e: no background traffic from Chromium.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, all its threads (0 if it is gone)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """CPU of a process and its children (a PostgreSQL server: postmaster and backends).
    Exited backends' time is in the parent's cutime/cstime, so those count too."""
    total = 0.0
    try:
        rest = Path(f"/proc/{root}/stat").read_text().rpartition(")")[2].split()
        total += (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / CLK_TCK
    except OSError:
        return 0.0
    try:
        children = list(Path(f"/proc/{root}/task").glob("*/children"))
    except OSError:  # the process ended meanwhile (a backend of a store just closed)
        return total
    for child in children:
        try:
            pids = child.read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in pids:
            total += tree_cpu_s(int(pid))
    return total


# -- 1. ingest CPU with the log on and off ------------------------------------------------


def fleet_batches(readings: int, devices: int, batch_rows: int, step_s: float = 1.0) -> list[list[Reading]]:
    """Readings ``step_s`` apart per device, devices interleaved (as messages arrive),
    cut into the ingester's batches. All in the past, none repeated."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=readings // devices * step_s + 3600)
    rows = [
        Reading(
            f"dev-{i % devices:03d}",
            t0 + timedelta(seconds=i // devices * step_s),
            3.0 + (i % 17) * 0.05,
            seq=i // devices,
        )
        for i in range(readings)
    ]
    return [rows[i : i + batch_rows] for i in range(0, len(rows), batch_rows)]


def ingest_cpu_us(store: Store, batches: list[list[Reading]], server_pid: int | None) -> float:
    stored = 0
    before = time.process_time() + (tree_cpu_s(server_pid) if server_pid else 0.0)
    for batch in batches:
        stored += store.write_batch(batch, []).inserted
    store.seal_pending()  # the batches still open: a clean stop's work, counted too
    after = time.process_time() + (tree_cpu_s(server_pid) if server_pid else 0.0)
    expected = sum(len(b) for b in batches)
    if stored != expected:
        raise RuntimeError(f"stored {stored} of {expected} readings")
    return (after - before) / stored * 1e6


def readings_per_leaf(store: Store) -> float:
    with store.evidence_connection() as conn:
        leaves = store.evidence.size(conn)
    return round(store.count_readings() / leaves, 1) if leaves else math.nan


def measure_ingest(
    label: str,
    fresh: Callable[[int], str],
    server_pid: Callable[[], int | None],
    batches: list[list[Reading]],
    repeat: int,
) -> dict[str, Any]:
    runs: dict[bool, list[float]] = {True: [], False: []}
    per_leaf = math.nan
    for r in range(repeat):
        for on in (False, True) if r % 2 == 0 else (True, False):
            store = open_store(
                StorageSettings(url=fresh(len(runs[True]) + len(runs[False])), evidence_log=on)
            )
            store.open()
            store.migrate()
            try:
                us = ingest_cpu_us(store, batches, server_pid())
                if on:
                    per_leaf = readings_per_leaf(store)
            finally:
                store.close()
            runs[on].append(us)
            note(f"  {label}: log {'on ' if on else 'off'} {us:6.2f} µs CPU/reading")
    on, off = median(runs[True]), median(runs[False])
    return {
        "cpu_us_per_reading_log_on": round(on, 3),
        "cpu_us_per_reading_log_off": round(off, 3),
        "added_us_per_reading": round(on - off, 3),
        "readings_per_leaf": per_leaf,
        "runs_on": [round(x, 3) for x in runs[True]],
        "runs_off": [round(x, 3) for x in runs[False]],
    }


def ingest_figures(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # (devices, rows a batch, seconds between a device's readings)
    shapes = {
        "bulk": (args.devices, args.batch_rows, 1.0),
        "small": (args.devices, args.small_batch_rows, 1.0),
        "live": (args.live_devices, args.live_devices, args.live_interval_s),
    }
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(Postgres()) if args.postgres else None  # started by entering
        for shape, (devices, rows, step_s) in shapes.items():
            batches = fleet_batches(args.readings, devices, rows, step_s)
            note(f"ingest, {shape}: batches of {rows} rows, {devices} devices a reading every {step_s:g} s,"
                 f" {args.readings} readings")  # fmt: skip

            def sqlite_db(n: int, shape: str = shape) -> str:
                return f"sqlite:///{workdir / f'ingest-{shape}-{n}.db'}"

            fig = measure_ingest(f"sqlite {shape}", sqlite_db, lambda: None, batches, args.repeat)
            out[f"sqlite_{shape}"] = {"batch_rows": rows, "devices": devices, "step_s": step_s, **fig}
            if pg is not None:

                def pg_db(n: int, shape: str = shape, pg: Postgres = pg) -> str:
                    return pg.create_database(f"bench_ev_{shape}_{n}")

                fig = measure_ingest(
                    f"postgres {shape}", pg_db, lambda pg=pg: pg.postmaster_pid, batches, args.repeat
                )
                out[f"postgres_{shape}"] = {"batch_rows": rows, "devices": devices, "step_s": step_s, **fig}
    return out


# -- 2. a 30-day shipment: the server's answer and the browser's verdict -------------------


def _request(port: int, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _api(port: int, method: str, path: str, body: object = None, want: int = 200) -> Any:
    status, raw = _request(port, method, path, body)
    if status != want:
        raise RuntimeError(f"{method} {path}: {status} {raw[:300]!r}")
    return json.loads(raw or b"null")


@contextlib.contextmanager
def serve(workdir: Path, db_url: str, key_file: Path) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")}
    env.update(
        ORIGINCAST_DATABASE_URL=db_url,
        ORIGINCAST_HTTP_HOST="127.0.0.1",
        ORIGINCAST_HTTP_PORT=str(port),
        ORIGINCAST_ADMIN_TOKEN=ADMIN_TOKEN,
        ORIGINCAST_EVIDENCE_KEY_FILE=str(key_file),
        ORIGINCAST_FILES_DIR=str(workdir / "files"),
        ORIGINCAST_STREAM_DEMO_TEST_PATTERN="false",
        PYTHONPATH=str(REPO),
    )
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web", "serve", "--no-ingest"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if _request(port, "GET", "/healthz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def build_shipment(args: argparse.Namespace, db_url: str, port: int) -> dict[str, Any]:
    """The 30-day shipment: opened through the API, its readings stored as ingest does
    (store.write_batch, the same process the bench runs in, sealed into leaves by the
    writes and, for the last window, by the store's clean close), closed through the API."""
    minutes = args.days * 24 * 60
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    start = end - timedelta(minutes=minutes)
    opened = start - timedelta(seconds=30)
    _api(port, "POST", "/api/v1/shipments", {
        "id": SHIPMENT, "product": "Frozen cod fillets", "batch": "BENCH-30D", "origin_site": "zhoushan",
        "profile_id": "chilled", "opened_at": opened.isoformat(),
        "segments": [{"device_id": DEVICE, "start": opened.isoformat(), "label": "Reefer"}],
    }, want=201)  # fmt: skip
    store = open_store(StorageSettings(url=db_url))
    store.open()
    try:
        store.upsert_device(Device(DEVICE, "zhoushan", "chilled", "Reefer"))
        # Between 0.5 and 3.5 °C: inside the chilled profile's 0-4 °C.
        readings = [
            Reading(DEVICE, start + timedelta(minutes=m), round(2.0 + 1.5 * math.sin(m / 180.0), 2))
            for m in range(minutes)
        ]
        t = time.perf_counter()
        for i in range(0, len(readings), args.per_batch):
            store.write_batch(readings[i : i + args.per_batch], [])
        note(f"shipment: {len(readings)} readings stored in {time.perf_counter() - t:.1f} s")
    finally:
        store.close()
    _api(
        port, "POST", f"/api/v1/shipments/{SHIPMENT}/close", {"at": (end + timedelta(seconds=30)).isoformat()}
    )
    store = open_store(StorageSettings(url=db_url))
    store.open()
    try:
        with store.evidence_connection() as conn:
            leaves = len(store.evidence.device_leaves(conn, DEVICE))
    finally:
        store.close()
    return {"readings": minutes, "per_batch": args.per_batch, "leaves": leaves}


def _serve_pid() -> int | None:
    """The pid of the `origincast serve` this bench started (a child of this process)."""
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
    return None


def server_figures(port: int, runs: int) -> dict[str, Any]:
    """The first request builds the answer (and signs a checkpoint covering it); the
    repeats are answered from the app's cache (web.answer_cache), each still reading the
    data's fingerprint. Wall time at the client, and the server process's CPU."""
    path = f"/api/v1/public/shipments/{SHIPMENT}"
    pid = _serve_pid()
    cpu = proc_cpu_s(pid) if pid else math.nan
    t = time.perf_counter()
    status, body = _request(port, "GET", path)
    first = time.perf_counter() - t
    first_cpu = (proc_cpu_s(pid) if pid else math.nan) - cpu
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
    times, cpus = [], []
    for _ in range(runs):
        cpu = proc_cpu_s(pid) if pid else math.nan
        t = time.perf_counter()
        status, body = _request(port, "GET", path)
        times.append(time.perf_counter() - t)
        cpus.append((proc_cpu_s(pid) if pid else math.nan) - cpu)
    doc = json.loads(body)
    ev = doc["evidence"]
    return {
        "build_s_median": round(median(times), 3),  # repeat requests: from the cache
        "build_s_runs": [round(x, 3) for x in times],
        "repeat_cpu_s_median": round(median(cpus), 3),
        "first_call_s": round(first, 3),  # the build itself, plus signing a checkpoint
        "first_call_cpu_s": round(first_cpu, 3),
        "answer_bytes": len(body),
        "leaves": len(ev["leaves"]),
        "proof_hashes": len(base64.b64decode(ev["multiproof"])) // 32,
        "readings": sum(len(base64.b64decode(r)) for r in ev["records"].values()) // 29,
    }


# Runs in the trust page after its verdict, on the same answer: every leaf's inclusion
# proved one proof at a time, each hash awaited in turn (what a straightforward verifier
# does, and what the page did before the multi-leaf proof) against the multi-leaf proof
# with each height's hashes asked of WebCrypto together. Same leaves, same checkpoint.
_PROOF_RATIO_JS = """async ([proofs]) => {
  const V = await import('/static/verify.js');
  const answer = await fetch(location.pathname.replace('/v/', '/api/v1/public/shipments/'));
  const ev = (await answer.json()).evidence;
  const cp = V.parseCheckpoint(ev.checkpoint.slice(0, ev.checkpoint.lastIndexOf('\\n\\n') + 1));
  const entries = Object.entries(ev.leaves).map(([i, b]) => [Number(i), V.b64decode(b)]);
  entries.sort((a, b) => a[0] - b[0]);
  let t = performance.now();
  for (const [i, e] of entries) {
    await V.verifyInclusion(i, cp.size, await V.leafHash(e), proofs[String(i)].map(V.b64decode), cp.root);
  }
  const naive = performance.now() - t;
  t = performance.now();
  const hashes = await Promise.all(entries.map(([, e]) => V.leafHash(e)));
  const leaves = entries.map(([i], k) => [i, hashes[k]]);
  await V.verifyMultiProof(cp.size, cp.root, leaves, V.b64decode(ev.multiproof));
  return { naive_ms: naive, multi_ms: performance.now() - t, leaves: entries.length };
}"""


# The same in a busier log: the shipment's leaves one in every `spread` of the tree (a
# fleet's other devices in between), as a synthetic tree made here; only the proof's
# part of the work (leaf hashes and the multi-leaf proof), timed in the page.
_SPREAD_JS = """async ([size, root, entries, proof]) => {
  const V = await import('/static/verify.js');
  const t = performance.now();
  const leaves = await Promise.all(entries.map(async ([i, e]) => [i, await V.leafHash(V.b64decode(e))]));
  await V.verifyMultiProof(size, V.b64decode(root), leaves, V.b64decode(proof));
  return performance.now() - t;
}"""


def _spread_proof(page: Any, leaves: int, spread: int) -> dict[str, Any]:
    size = leaves * spread
    entries = [b'{"kind":"readings_batch","n":%d,"pad":"%s"}' % (i, b"x" * 300) for i in range(size)]
    tree = MemoryTree(leaf_hash(e) for e in entries)
    picked = list(range(spread // 2, size, spread))
    proof = multi_inclusion_proof(tree, picked, size)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    args = [size, b64(tree.root()), [[i, b64(entries[i])] for i in picked], b64(b"".join(proof))]
    ms = page.evaluate(_SPREAD_JS, args)
    return {"leaves": len(picked), "tree_size": size, "proof_hashes": len(proof), "s": round(ms / 1000, 3)}


def _per_leaf_proofs(port: int) -> dict[str, list[str]]:
    """Each leaf's own inclusion proof against the answer's checkpoint (staff endpoint)."""
    ev = _api(port, "GET", f"/api/v1/public/shipments/{SHIPMENT}")["evidence"]
    indices = sorted(int(i) for i in ev["leaves"])
    out: dict[str, list[str]] = {}
    for at in range(0, len(indices), 400):  # (a request line is at most 8 KiB)
        query = "&".join(f"index={i}" for i in indices[at : at + 400])
        out.update(_api(port, "GET", f"/api/v1/evidence/proofs?size={ev['size']}&{query}")["proofs"])
    return out


def browser_figures(port: int, vkey: str, runs: int, spread: int = 0) -> dict[str, Any]:
    """Fresh page loads, each in a new context (no cache); the page's own clock:
    navigation start (0), its load event, the endpoint's answer received (the resource's
    responseEnd), parsed ("trust:answer"), the verdict ("trust:verdict", marked by
    trust.js the moment it is shown) and the phases between (trust.js's marks). Then,
    once, the proofs alone: per-leaf proofs one hash at a time against the multi-leaf
    proof (_PROOF_RATIO_JS)."""
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{port}/v/{SHIPMENT}#k={vkey}"
    marks = ("answer", "rendered", "hashed", "proved", "readings", "figures", "verdict")
    runs_out: list[dict[str, float]] = []
    ratio: dict[str, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for i in range(runs):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(url)
                page.wait_for_function(
                    "() => performance.getEntriesByName('trust:verdict').length", timeout=120_000
                )
                t = page.evaluate(
                    """(marks) => ({
                      state: document.body.dataset.verified,
                      title: document.querySelector('#verdict-title').textContent,
                      load: performance.getEntriesByType('navigation')[0].loadEventEnd,
                      received: performance.getEntriesByType('resource')
                        .find((e) => e.name.includes('/api/v1/public/shipments/')).responseEnd,
                      ...Object.fromEntries(
                        marks.map((m) => [m, performance.getEntriesByName(`trust:${m}`)[0].startTime])),
                    })""",
                    list(marks),
                )
                if t["state"] != "verified":
                    context.close()
                    raise RuntimeError(f"the page did not verify: {t['state']}: {t['title']}")
                if i == runs - 1:
                    ratio = page.evaluate(_PROOF_RATIO_JS, [_per_leaf_proofs(port)])
                    if spread > 1:
                        ratio["spread"] = _spread_proof(page, ratio["leaves"], spread)
                context.close()
                runs_out.append({k: v / 1000 for k, v in t.items() if k not in ("state", "title")})
                r = runs_out[-1]
                note(f"  browser run {i + 1}: load {r['load']:.3f} s, answer in {r['received']:.3f}, parsed "
                     f"{r['answer']:.3f}, verdict {r['verdict']:.3f} ({t['title']})")  # fmt: skip
        finally:
            browser.close()

    def med(f: Callable[[dict[str, float]], float]) -> float:
        return round(median([f(r) for r in runs_out]), 3)

    steps = ("received", *marks)
    return {
        "navigation_to_verdict_s_median": med(lambda r: r["verdict"]),
        "load_event_to_verdict_s_median": med(lambda r: r["verdict"] - r["load"]),
        "answer_received_s_median": med(lambda r: r["received"]),
        "verify_after_answer_s_median": med(lambda r: r["verdict"] - r["received"]),
        "json_parse_s_median": med(lambda r: r["answer"] - r["received"]),
        # each phase's median: parse, decode+render, hashes (leaves, digests, signature),
        # the multi-leaf proof, chains and readings, figures, alerts and files
        "phases_s_median": {
            f"{a}->{b}": med(lambda r, a=a, b=b: r[b] - r[a]) for a, b in itertools.pairwise(steps)
        },
        "navigation_to_verdict_s_runs": [round(r["verdict"], 3) for r in runs_out],
        "proofs_only": {
            "leaves": ratio.get("leaves"),
            "per_leaf_sequential_s": round(ratio.get("naive_ms", math.nan) / 1000, 3),
            "multi_leaf_s": round(ratio.get("multi_ms", math.nan) / 1000, 3),
            "ratio": round(ratio.get("naive_ms", math.nan) / ratio.get("multi_ms", math.nan), 1),
            "spread": ratio.get("spread"),
        },
    }


def shipment_figures(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    db_url = f"sqlite:///{workdir / 'shipment.db'}"
    store = open_store(StorageSettings(url=db_url))
    store.open()
    store.migrate()
    store.close()
    key_file = workdir / "log.key"
    vkey = init_key(key_file, ORIGIN).vkey
    with serve(workdir, db_url, key_file) as port:
        shape = build_shipment(args, db_url, port)
        note("server: building the public answer")
        server = server_figures(port, args.server_runs)
        note(f"  median {server['build_s_median']} s, {server['answer_bytes']} bytes")
        note("browser: load to verdict")
        browser = browser_figures(port, vkey, args.browser_runs, args.spread)
    return {"shipment": shape, "server": server, "browser": browser}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: proves the bench works")
    p.add_argument("--readings", type=int, default=200_000, help="readings per ingest run")
    p.add_argument("--devices", type=int, default=16)
    p.add_argument("--batch-rows", type=int, default=5000, help="rows per batch (the ingester's maximum)")
    p.add_argument("--small-batch-rows", type=int, default=100, help="rows per batch of a quiet fleet")
    p.add_argument("--live-devices", type=int, default=200, help="live fleet: a reading each a transaction")
    p.add_argument("--live-interval-s", type=float, default=5.0, help="seconds between a live one's readings")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-postgres", dest="postgres", action="store_false", help="SQLite only")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--per-batch", type=int, default=1, help="the shipment's readings per write_batch call")
    p.add_argument("--server-runs", type=int, default=5)
    p.add_argument("--browser-runs", type=int, default=5)
    p.add_argument(
        "--spread",
        type=int,
        default=50,
        help="also time the proof of as many leaves one in every SPREAD of a synthetic tree (0: not)",
    )
    p.add_argument("--no-ingest", dest="ingest", action="store_false", help="skip part 1")
    p.add_argument("--no-shipment", dest="shipment", action="store_false", help="skip part 2")
    p.add_argument("--keep", action="store_true", help="keep the work directory (databases, key, logs)")
    args = p.parse_args()
    if args.quick:
        args.readings, args.repeat, args.days, args.server_runs, args.browser_runs = 20_000, 1, 2, 2, 1
    workdir = Path(tempfile.mkdtemp(prefix="oc-bench-evidence-"))
    result: dict[str, Any] = {"bench": "evidence", "quick": args.quick, "cpus": os.cpu_count()}
    try:
        if args.ingest:
            result["ingest"] = ingest_figures(args, workdir)
            for name, fig in result["ingest"].items():
                off, on = fig["cpu_us_per_reading_log_off"], fig["cpu_us_per_reading_log_on"]
                print(f"ingest {name:16s} log off {off:6.2f} µs/reading, on {on:6.2f}: "
                      f"added {fig['added_us_per_reading']:5.2f} µs (≤ {TARGET_ADDED_US}), "
                      f"{fig['readings_per_leaf']} readings a leaf")  # fmt: skip
        if args.shipment:
            result["shipment"] = shipment_figures(args, workdir)
            s, b = result["shipment"]["server"], result["shipment"]["browser"]
            shape = result["shipment"]["shipment"]
            print(f"shipment: {shape['readings']} readings in {shape['leaves']} batches")
            print(f"server: public answer built in {s['first_call_s']} s ({s['first_call_cpu_s']} s CPU) "
                  f"on the first request, {s['build_s_median']} s ({s['repeat_cpu_s_median']} s CPU) on "
                  f"repeats (median, cached); {s['answer_bytes'] / 1e6:.1f} MB, {s['leaves']} leaves, "
                  f"{s['proof_hashes']} proof hashes")  # fmt: skip
            print(f"browser: verdict {b['navigation_to_verdict_s_median']} s after navigation start, "
                  f"{b['verify_after_answer_s_median']} s after the answer arrived "
                  f"(target ≤ {TARGET_VERIFY_S})")  # fmt: skip
            print("browser phases (median s): "
                  + ", ".join(f"{k} {v}" for k, v in b["phases_s_median"].items()))  # fmt: skip
            p = b["proofs_only"]
            print(f"browser, proofs of the {p['leaves']} leaves alone: a proof per leaf, one hash at a "
                  f"time {p['per_leaf_sequential_s']} s; multi-leaf proof {p['multi_leaf_s']} s: "
                  f"{p['ratio']}x")  # fmt: skip
            if p["spread"]:
                q = p["spread"]
                print(f"browser, {q['leaves']} leaves spread over a tree of {q['tree_size']}: leaf hashes"
                      f" and multi-leaf proof ({q['proof_hashes']} hashes) {q['s']} s")  # fmt: skip
        result["targets"] = {"added_us_per_reading": TARGET_ADDED_US, "browser_verify_s": TARGET_VERIFY_S}
    finally:
        if args.keep:
            note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
