#!/usr/bin/env python3
"""End-to-end ingest benchmark: MQTT broker -> ingester -> TimescaleDB, all on this machine.

    .venv/bin/python bench/ingest.py            # full size (a few minutes)
    .venv/bin/python bench/ingest.py --quick    # smoke run (~30 s)
    .venv/bin/python bench/ingest.py --repeat 3 # medians of 3 runs

Scenarios: (a) one reading per message, (b) ``--b-per-message`` (100) readings per
message, both QoS 1. For each, in the same run and against private services started
here (a Mosquitto without persistence per measured run, one TimescaleDB server with a
fresh database per measured run):

- the broker's limit: the same ``mosquitto_pub -l -q 1`` publishers (separate
  processes, fed from pre-generated files), ``mosquitto_sub -q 1`` as the consumer;
- the database's limit: a binary COPY of the same rows into the same migrated table
  (hypertable with its primary key), 5,000-row transactions, from this process;
- ours: ``python -m web ingest``, readings/s from the first publisher's start until
  every reading is in the table, its CPU per reading (/proc utime+stime), the
  publish-to-commit latency of a probe publisher (one reading every 10 ms, ts = send
  time, polled every 5 ms), lost and duplicated readings;
- naive: ``bench/naive_ingest.py`` (auto-ack, one autocommit INSERT per reading), with
  a smaller load (it manages ~3,000 readings/s); the ratio compares rates.

The last line printed is one JSON object with every figure. Nothing is asserted: this
is a measurement, and the machine is shared, so ``--repeat`` takes medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from bench.loadgen import EPOCH, PROBE_DEVICE, Load, iter_rows, make_load  # noqa: E402
from scripts.services import Mosquitto, Timescale  # noqa: E402

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TOPIC_FILTER = "origincast/+/telemetry"
CLK_TCK = os.sysconf("SC_CLK_TCK")
COPY_ROWS_PER_TX = 5000
COPY_SQL = "COPY readings (device_id, ts, temp_c, seq) FROM STDIN (FORMAT BINARY)"
COPY_TYPES = ["text", "timestamptz", "float4", "int8"]

# Targets from the issue.
TARGET_A_BROKER_SHARE = 0.80
TARGET_A_CPU_US = 25.0
TARGET_B_COPY_SHARE = 0.80
TARGET_NAIVE_RATIO = 10.0


def log(msg: str = "") -> None:
    print(msg, flush=True)


def note(msg: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(f"  · {msg}", file=sys.stderr, flush=True)


# --- CPU accounting from /proc ---------------------------------------------------------


def proc_cpu_s(pid: int | None) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_cpu_s(pid: int | None) -> float:
    """utime + stime of a process and all its live descendants (PostgreSQL backends)."""
    if pid is None:
        return 0.0
    children = _children_map()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += proc_cpu_s(p)
        todo.extend(children.get(p, []))
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- processes we start -----------------------------------------------------------------


class Processes:
    """Every process the bench starts, so that all of them are stopped however it ends."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # Own session: a Ctrl-C at the terminal reaches only us; we stop the children.
        proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)
        self._procs.clear()


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited ({proc.returncode}); log {path}:\n{tail(path)}")
        time.sleep(0.05)
    raise RuntimeError(f"no {text!r} in {path} after {timeout:.0f}s:\n{tail(path)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


# --- watching the database ---------------------------------------------------------------


class DbPoller(threading.Thread):
    """One thread, one connection: every ``interval`` s it fetches the probe rows that became
    visible (the query's start time counts as the moment they became visible, so a sample
    is late by at most one interval), and every ``check_every`` s it reads each load
    device's newest ts (one backwards index probe per device). A device's messages are
    stored in publish order (the broker delivers them in order, both ingesters commit in
    arrival order), so when every device's newest stored ts is its last ts, every reading
    is there; the final count check confirms it."""

    def __init__(self, url: str, last_ts: dict[str, datetime], interval: float = 0.005,
                 check_every: float = 0.02) -> None:
        super().__init__(name="db-poller", daemon=True)
        self.url = url
        self.last_ts = last_ts
        self.interval = interval
        self.check_every = check_every
        self.samples: list[tuple[int, float, float]] = []  # (seq, sent wall, visible wall)
        self.done = threading.Event()
        self.done_mono: float | None = None
        self.progress: tuple = ()
        self.progress_mono = time.monotonic()
        self.error: BaseException | None = None
        self.backend_pid: int | None = None  # its server process, whose CPU is ours, not the ingester's
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        devices = list(self.last_ts)
        with psycopg.connect(self.url, autocommit=True) as conn:
            self.backend_pid = conn.info.backend_pid
            last_probe: datetime | None = None
            next_check = 0.0
            next_tick = time.monotonic()
            while not self._halt.is_set():
                tq_wall, tq_mono = time.time(), time.monotonic()
                if last_probe is None:
                    rows = conn.execute(
                        "SELECT seq, ts FROM readings WHERE device_id = %s ORDER BY ts", (PROBE_DEVICE,)
                    ).fetchall()
                else:
                    rows = conn.execute(
                        "SELECT seq, ts FROM readings WHERE device_id = %s AND ts > %s ORDER BY ts",
                        (PROBE_DEVICE, last_probe),
                    ).fetchall()
                for seq, ts in rows:
                    self.samples.append((seq, ts.timestamp(), tq_wall))
                    last_probe = ts
                if devices and tq_mono >= next_check and not self.done.is_set():
                    next_check = tq_mono + self.check_every
                    newest = conn.execute(
                        "SELECT d, (SELECT max(ts) FROM readings r WHERE r.device_id = d)"
                        " FROM unnest(%s::text[]) AS d",
                        (devices,),
                    ).fetchall()
                    progress = tuple(ts for _, ts in newest)
                    if progress != self.progress:
                        self.progress, self.progress_mono = progress, tq_mono
                    if all(ts is not None and ts >= self.last_ts[d] for d, ts in newest):
                        self.done_mono = tq_mono
                        self.done.set()
                next_tick += self.interval
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._halt.wait(delay)
                else:
                    next_tick = time.monotonic()


class LineCounter(threading.Thread):
    """Counts the lines (one per message) a consumer writes to a file, every ``interval``
    s, and notes when ``target`` is reached. A file, not a pipe: a pipe would wake this
    process for every few messages, and on 2 cores that CPU is taken from the broker."""

    def __init__(self, path: Path, interval: float = 0.01) -> None:
        super().__init__(name="line-counter", daemon=True)
        self.path = path
        self.interval = interval
        self.count = 0
        self.target: int | None = None
        self.done = threading.Event()
        self.done_mono: float | None = None
        self.last_mono = time.monotonic()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        with open(self.path, "rb") as f:
            while not self._halt.is_set():
                now = time.monotonic()
                chunk = f.read()
                if chunk:
                    self.count += chunk.count(b"\n")
                    self.last_mono = now
                    if self.target is not None and self.count >= self.target and not self.done.is_set():
                        self.done_mono = now
                        self.done.set()
                self._halt.wait(self.interval)


# --- the bench -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, timescale: Timescale,
                 procs: Processes) -> None:
        self.args = args
        self.workdir = workdir
        self.ts = timescale
        self.procs = procs
        self.copy_rows_cache: dict[str, list[tuple]] = {}

    # -- helpers ------------------------------------------------------------------------

    def _tag(self, what: str) -> str:
        return f"{what}_{uuid.uuid4().hex[:8]}"

    def _fresh_db(self, tag: str, migrate: bool) -> tuple[str, str]:
        name = f"bench_{tag}"
        url = self.ts.create_database(name)
        if migrate:
            done = subprocess.run(
                [PYTHON, "-m", "web", "migrate"], cwd=REPO, env=self._env(url, None),
                capture_output=True, text=True, check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")
        return name, url

    def _drop_db(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.ts.drop_database(name)
        self._checkpoint()

    def _checkpoint(self) -> None:
        # Each measured run starts without the previous run's dirty pages to write.
        with contextlib.suppress(Exception), psycopg.connect(self.ts.url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def _env(self, db_url: str, mqtt_url: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env["ORIGINCAST_DATABASE_URL"] = db_url
        if mqtt_url:
            env["ORIGINCAST_MQTT_URL"] = mqtt_url
        if self.args.batch_max_rows:
            env["ORIGINCAST_INGEST_BATCH_MAX_ROWS"] = str(self.args.batch_max_rows)
        if self.args.batch_max_delay_ms:
            env["ORIGINCAST_INGEST_BATCH_MAX_DELAY_MS"] = str(self.args.batch_max_delay_ms)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _start_publishers(self, broker: Mosquitto, load: Load, tag: str) -> list[subprocess.Popen[bytes]]:
        errlog = open(self.workdir / f"{tag}-publishers.log", "ab")
        pubs = []
        try:
            for i, d in enumerate(load.devices):
                with open(d.path, "rb") as stdin:
                    pubs.append(self.procs.start(
                        ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-q", "1", "-l",
                         "-t", d.topic, "-i", f"pub-{tag}-{i}"],
                        stdin=stdin, stdout=subprocess.DEVNULL, stderr=errlog,
                    ))
        finally:
            errlog.close()
        return pubs

    def _wait_publishers(self, pubs: list[subprocess.Popen[bytes]], timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        for p in pubs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        codes = [p.poll() for p in pubs]
        for p in pubs:
            Processes.stop(p, timeout=5)
        return codes

    def _timeout_for(self, load: Load) -> float:
        return 120.0 + load.readings / 1000.0

    # -- the broker's limit ----------------------------------------------------------------

    def broker_limit(self, load: Load) -> dict[str, Any]:
        tag = self._tag(f"{load.name}_broker")
        with Mosquitto(persistence=False) as broker:
            # The consumer prints each message's length, one line per message, to a file.
            out_path = self.workdir / f"{tag}-sub.out"
            with open(self.workdir / f"{tag}-sub.log", "ab") as errlog, open(out_path, "wb") as out:
                sub = self.procs.start(
                    ["mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-q", "1", "-c",
                     "-i", f"benchsub-{tag}", "-t", TOPIC_FILTER, "-F", "%l"],
                    stdout=out, stderr=errlog,
                )
            counter = LineCounter(out_path)
            counter.start()
            # Warm-up: proves the subscription is in place before the load starts.
            deadline = time.monotonic() + 30
            while counter.count == 0:
                if time.monotonic() > deadline or sub.poll() is not None:
                    sub_log = self.workdir / f"{tag}-sub.log"
                    raise RuntimeError(f"mosquitto_sub received nothing: {tail(sub_log)}")
                subprocess.run(
                    ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-q", "1",
                     "-t", "origincast/warmup/telemetry", "-m", "{}"],
                    check=False, capture_output=True, timeout=10,
                )
                counter.done.wait(0.3)
            time.sleep(0.3)
            base = counter.count
            counter.target = base + load.messages
            broker_cpu0, sub_cpu0, m0 = proc_cpu_s(broker.pid), proc_cpu_s(sub.pid), machine_cpu()
            kids0 = children_cpu_s()
            t0 = time.monotonic()
            pubs = self._start_publishers(broker, load, tag)
            deadline = t0 + self._timeout_for(load)
            while not counter.done.wait(0.05):
                now = time.monotonic()
                if now > deadline:
                    break
                stalled = now - counter.last_mono > self.args.stall_timeout
                if stalled and all(p.poll() is not None for p in pubs):
                    break
            t_end = counter.done_mono if counter.done_mono is not None else counter.last_mono
            broker_cpu1, sub_cpu1, m1 = proc_cpu_s(broker.pid), proc_cpu_s(sub.pid), machine_cpu()
            codes = self._wait_publishers(pubs, 60)
            pub_cpu = children_cpu_s() - kids0
            Processes.stop(sub)
            time.sleep(2 * counter.interval)
            counter.stop()
            received = counter.count - base
        elapsed = t_end - t0
        return {
            "messages": load.messages,
            "readings": load.readings,
            "received": received,
            "elapsed_s": elapsed,
            "msgs_per_s": received / elapsed,
            "readings_per_s": received * load.per_message / elapsed,
            "broker_cpu_us_per_msg": (broker_cpu1 - broker_cpu0) * 1e6 / max(1, received),
            "consumer_cpu_us_per_msg": (sub_cpu1 - sub_cpu0) * 1e6 / max(1, received),
            "publishers_cpu_s": pub_cpu,
            "machine_busy_cores": (m1[0] - m0[0]) / elapsed,
            "publisher_exit_codes": sorted(set(codes), key=str),
        }

    # -- the database's limit -------------------------------------------------------------

    def copy_limit(self, load: Load) -> dict[str, Any]:
        rows = self.copy_rows_cache.get(load.name)
        if rows is None:
            rows = self.copy_rows_cache[load.name] = list(iter_rows(load))
        tag = self._tag(f"{load.name}_copy")
        name, url = self._fresh_db(tag, migrate=True)
        try:
            self._checkpoint()
            with psycopg.connect(url) as conn:
                pg0, c0, m0 = tree_cpu_s(self.ts.postmaster_pid), self_cpu_s(), machine_cpu()
                t0 = time.monotonic()
                for i in range(0, len(rows), COPY_ROWS_PER_TX):
                    with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
                        copy.set_types(COPY_TYPES)
                        for row in rows[i : i + COPY_ROWS_PER_TX]:
                            copy.write_row(row)
                    conn.commit()
                t1 = time.monotonic()
                pg1, c1, m1 = tree_cpu_s(self.ts.postmaster_pid), self_cpu_s(), machine_cpu()
                stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
        finally:
            self._drop_db(name)
        elapsed = t1 - t0
        return {
            "rows": len(rows),
            "stored": stored,
            "elapsed_s": elapsed,
            "rows_per_s": len(rows) / elapsed,
            "client_cpu_us_per_row": (c1 - c0) * 1e6 / len(rows),
            "db_cpu_us_per_row": (pg1 - pg0) * 1e6 / len(rows),
            "machine_busy_cores": (m1[0] - m0[0]) / elapsed,
        }

    # -- an ingester, end to end ------------------------------------------------------------

    def ingest_run(self, load: Load, *, naive: bool, profile: Path | None = None) -> dict[str, Any]:
        kind = "naive" if naive else "ours"
        tag = self._tag(f"{load.name}_{kind}")
        name, url = self._fresh_db(tag, migrate=naive)  # ours migrates on start
        consumer = probe = pyspy = None
        poller: DbPoller | None = None
        try:
            with Mosquitto(persistence=False) as broker:
                self._checkpoint()
                env = self._env(url, broker.url)
                if naive:
                    argv = [PYTHON, str(BENCH / "naive_ingest.py"), "--host", HOST, "--port",
                            str(broker.port), "--database-url", url, "--client-id", f"naive-{tag}"]
                else:
                    argv = [PYTHON, "-m", "web", "ingest", "--client-id", f"ingest-{tag}"]
                consumer_log = self.workdir / f"{tag}-consumer.log"
                with open(consumer_log, "ab") as out:
                    consumer = self.procs.start(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
                wait_for_text(consumer_log, "subscribed to", consumer, timeout=90)
                probe_log = self.workdir / f"{tag}-probe.log"
                with open(probe_log, "ab") as err:
                    probe = self.procs.start(
                        [PYTHON, str(BENCH / "loadgen.py"), "probe", "--host", HOST, "--port",
                         str(broker.port), "--interval-ms", str(self.args.probe_interval_ms),
                         "--client-id", f"probe-{tag}"],
                        stdout=subprocess.PIPE, stderr=err,
                    )
                last_ts = {d.device: _ms_to_dt(d.last_ts_ms) for d in load.devices}
                poller = DbPoller(url, last_ts)
                poller.start()
                # Warm-up: a probe reading made it through broker, ingester and database.
                deadline = time.monotonic() + 60
                while not poller.samples:
                    if time.monotonic() > deadline or poller.error or consumer.poll() is not None:
                        raise RuntimeError(
                            f"no probe reading stored within 60 s ({poller.error});"
                            f" consumer log:\n{tail(consumer_log)}"
                        )
                    time.sleep(0.02)
                time.sleep(0.2)
                if profile is not None:
                    with open(self.workdir / "py-spy.log", "ab") as err:
                        pyspy = self.procs.start(
                            [pyspy_path(), "record", "--format", "raw", "--threads", "--idle",
                             "--nonblocking", "-r", "200", "-p", str(consumer.pid), "-o", str(profile)],
                            stdout=subprocess.DEVNULL, stderr=err,
                        )
                    time.sleep(1.0)  # py-spy attaches
                cpu0 = self._cpu_snapshot(consumer.pid, probe.pid, poller.backend_pid, broker.pid)
                kids0 = children_cpu_s()
                wall0, t0 = time.time(), time.monotonic()
                pubs = self._start_publishers(broker, load, tag)
                deadline = t0 + self._timeout_for(load)
                incomplete = None
                pubs_done: list[float] = []  # when the last publisher exited
                threading.Thread(
                    target=lambda: ([p.wait() for p in pubs], pubs_done.append(time.monotonic())),
                    name="publishers-watch", daemon=True,
                ).start()
                while not poller.done.wait(0.05):
                    now = time.monotonic()
                    if poller.error is not None:
                        raise RuntimeError(f"database poller failed: {poller.error}")
                    if now > deadline:
                        incomplete = f"timed out after {now - t0:.0f} s"
                        break
                    if pubs_done and now - poller.progress_mono > self.args.stall_timeout:
                        incomplete = f"no progress for {self.args.stall_timeout:.0f} s"
                        break
                    if consumer.poll() is not None:
                        incomplete = f"the ingester exited ({consumer.returncode})"
                        break
                t_end = poller.done_mono if poller.done_mono is not None else poller.progress_mono
                cpu1 = self._cpu_snapshot(consumer.pid, probe.pid, poller.backend_pid, broker.pid)
                measured_mono = time.monotonic()
                if pyspy is not None:
                    Processes.stop(pyspy, timeout=30, sig=signal.SIGINT)
                codes = self._wait_publishers(pubs, 60)
                pub_cpu = children_cpu_s() - kids0
                wall_end = wall0 + (t_end - t0)
                # Let the probe readings sent up to the end become visible, then stop it.
                time.sleep(0.5)
                sent = 0
                Processes.stop(probe, timeout=20)
                with contextlib.suppress(Exception):
                    assert probe.stdout is not None
                    sent = json.loads(probe.stdout.read().decode().strip().splitlines()[-1])["sent"]
                time.sleep(max(0.3, 2 * (self.args.batch_max_delay_ms or 0) / 1000))
                poller.stop()
                Processes.stop(consumer, timeout=30)
            verify = self._verify(url, load)
        finally:
            if poller is not None and poller.is_alive():
                poller.stop()
            for p in (pyspy, probe, consumer):
                if p is not None:
                    Processes.stop(p, timeout=10)
            self._drop_db(name)
        elapsed = t_end - t0
        window = poller.samples
        lat_ms = [(vis - sentw) * 1000 for _, sentw, vis in window if wall0 <= sentw <= wall_end]
        probe_stored = verify["probe_rows"]
        used = {k: cpu1[k] - cpu0[k] for k in cpu0}
        cpu = used["ingester"]
        # The database's CPU without the backend serving the bench's own polling.
        db = used["db"] - used["poller"]
        machine_busy = used["machine"]
        ours_cpu_all = sum(v for k, v in used.items() if k not in ("machine", "poller"))
        return {
            "readings": load.readings,
            "messages": load.messages,
            "stored": verify["stored"],
            "complete": incomplete is None,
            "incomplete_reason": incomplete,
            "elapsed_s": elapsed,
            # When the last publisher had all its messages acknowledged by the broker: well
            # before the end means the consumer was the bottleneck and a backlog queued up
            # in the broker (the latency then measures that queue).
            "publishers_done_s": pubs_done[0] - t0 if pubs_done else None,
            "readings_per_s": verify["stored_distinct"] / elapsed,
            "msgs_per_s": load.messages * verify["stored_distinct"] / load.readings / elapsed,
            "cpu_us_per_reading": cpu * 1e6 / max(1, verify["stored_distinct"]),
            "ingester_cores": cpu / elapsed,
            "broker_cpu_us_per_reading": used["broker"] * 1e6 / max(1, verify["stored_distinct"]),
            "db_cpu_us_per_reading": db * 1e6 / max(1, verify["stored_distinct"]),
            "poller_backend_cores": used["poller"] / elapsed,
            "publishers_cpu_s": pub_cpu,
            "machine_busy_cores": machine_busy / elapsed,
            "bench_self_cores": used["self"] / elapsed,  # this script: probe polling etc.
            # Machine CPU not charged to the ingester, broker, database processes, publishers,
            # the probe or this script: kernel threads (block I/O, writeback of fsyncs and WAL),
            # database backends that came and went, and anyone else on a shared machine.
            "unattributed_cores": max(0.0, machine_busy - ours_cpu_all - pub_cpu) / elapsed,
            "p50_ms": percentile(lat_ms, 50),
            "p99_ms": percentile(lat_ms, 99),
            "latency_samples": len(lat_ms),
            "lost": verify["lost"],
            "duplicated": verify["duplicated"],
            "unexpected_rows": verify["unexpected"],
            "rejected": verify["rejected"],
            "probe_sent": sent,
            "probe_lost": max(0, sent - probe_stored) if sent else None,
            "probe_duplicated": verify["probe_duplicated"],
            "publisher_exit_codes": sorted(set(codes), key=str),
            "measure_overhead_s": measured_mono - t_end,
        }

    def _cpu_snapshot(self, ingester: int, probe: int, poller_backend: int | None,
                      broker: int | None) -> dict[str, float]:
        return {
            "ingester": proc_cpu_s(ingester),
            "probe": proc_cpu_s(probe),
            "poller": proc_cpu_s(poller_backend),
            "broker": proc_cpu_s(broker),
            "db": tree_cpu_s(self.ts.postmaster_pid),  # includes the poller's backend
            "self": self_cpu_s(),
            "machine": machine_cpu()[0],
        }

    def _verify(self, url: str, load: Load) -> dict[str, Any]:
        expected = {d.device: d.readings for d in load.devices}
        with psycopg.connect(url, autocommit=True) as conn:
            per_device = conn.execute(
                "SELECT device_id, count(*), count(DISTINCT seq), min(seq), max(seq)"
                " FROM readings GROUP BY device_id"
            ).fetchall()
            rejected = conn.execute("SELECT count(*) FROM rejected_messages").fetchone()[0]  # type: ignore[index]
        lost = duplicated = unexpected = stored = stored_distinct = 0
        probe_rows = probe_dup = 0
        seen = set()
        for device, n, distinct, lo, hi in per_device:
            if device == PROBE_DEVICE:
                probe_rows, probe_dup = distinct, n - distinct
                continue
            if device not in expected:
                unexpected += n
                continue
            seen.add(device)
            stored += n
            duplicated += n - distinct
            if lo < 1 or hi > expected[device]:
                unexpected += n  # seqs we never published: should not happen
            stored_distinct += distinct
            lost += max(0, expected[device] - distinct)
        lost += sum(n for d, n in expected.items() if d not in seen)
        return {
            "stored": stored, "stored_distinct": stored_distinct, "lost": lost,
            "duplicated": duplicated, "unexpected": unexpected, "rejected": rejected,
            "probe_rows": probe_rows, "probe_duplicated": probe_dup,
        }


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait (up to max_wait s) until the machine, where nothing of ours runs right now but
    an idle database, is busy less than ``threshold`` cores; returns the last reading."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        b0 = machine_cpu()[0]
        time.sleep(0.5)
        busy = (machine_cpu()[0] - b0) / 0.5
        if busy < threshold or time.monotonic() >= deadline:
            if waited or busy >= threshold:
                note(f"machine busy {busy:.2f} cores (others' work); "
                     + ("going ahead anyway" if busy >= threshold else "quiet now"))
            return busy
        if not waited:
            note(f"machine busy {busy:.2f} cores (others' work); waiting up to {max_wait:.0f} s for quiet")
            waited = True
        time.sleep(1.0)


def pyspy_path() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else (shutil.which("py-spy") or "py-spy")


def _ms_to_dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


# --- summarising ------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures; lost/duplicated counts are summed (any is a bug)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if key in ("lost", "duplicated", "unexpected_rows", "rejected", "probe_lost", "probe_duplicated"):
            nums = [v for v in values if v is not None]
            out[key] = sum(nums) if nums else None
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)
        elif all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        else:
            out[key] = values[0] if len(runs) == 1 else values
    return out


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def _function(frame: str) -> str:
    """'name (file.py:123)' -> 'name (file.py)': own and cumulative time per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else frame


# Leaf frames where a thread blocks rather than computes (a lock or condition, the
# database socket, paho's select(), the CLI's sleep loop): "waiting" in the summary.
WAIT_FRAMES = {
    "Condition.wait (threading.py)", "Event.wait (threading.py)", "Connection.wait (psycopg/connection.py)",
    "Client._loop (paho/mqtt/client.py)", "cmd_ingest (web/cli.py)", "Queue.get (queue.py)",
}


def summarize_profile(path: Path, top: int = 12) -> str:
    """py-spy raw stacks recorded with --threads --idle -> per thread: how much of the time
    it computed vs waited, and its functions with the most own and cumulative samples
    (% of that thread's samples, i.e. of wall time)."""
    threads: dict[str, tuple[Counter[str], Counter[str]]] = {}
    per_thread: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        funcs = [_function(f) for f in frames[1:]] or ["(no python frame)"]
        own, cum = threads.setdefault(thread, (Counter(), Counter()))
        per_thread[thread] += n
        own[funcs[-1]] += n
        for f in set(funcs):
            cum[f] += n
    if not per_thread:
        return f"(no samples in {path})"
    out = [f"profile {path} (py-spy --threads --idle; % of each thread's samples = of wall time):"]
    always_waiting = []
    for thread, total in per_thread.most_common():
        own, cum = threads[thread]
        waiting = sum(n for f, n in own.items() if f in WAIT_FRAMES)
        if waiting >= 0.995 * total:
            always_waiting.append(thread)
            continue
        out.append(f"thread {thread}: {total} samples, computing {100 * (total - waiting) / total:.1f} %,"
                   f" waiting {100 * waiting / total:.1f} %")
        out.append("   own:")
        out += [f"     {100 * n / total:5.1f} %  {f}{'  [waiting]' if f in WAIT_FRAMES else ''}"
                for f, n in own.most_common(top)]
        out.append("   cumulative:")
        out += [f"     {100 * n / total:5.1f} %  {f}" for f, n in cum.most_common(top)
                if not f.startswith(("Thread.", "<module>", "_run_"))]
    if always_waiting:
        out.append(f"waiting all the time: {', '.join(always_waiting)}")
    return "\n".join(out)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (~30 s)")
    ap.add_argument("--repeat", type=int, default=1, help="run everything K times, report medians")
    ap.add_argument("--scenarios", default="a,b", help="which of a,b to run (default both)")
    ap.add_argument("--a-messages", type=int, help="(a) messages = readings (default 200,000)")
    ap.add_argument("--a-publishers", type=int, default=16)
    ap.add_argument("--b-readings", type=int, help="(b) readings (default 1,000,000)")
    ap.add_argument("--b-per-message", type=int, default=100)
    ap.add_argument("--b-publishers", type=int, default=8)
    ap.add_argument("--naive-a-messages", type=int, help="(a) load for the naive ingester (default 20,000)")
    ap.add_argument("--naive-b-readings", type=int, help="(b) load for the naive ingester (default 20,000)")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-broker", action="store_true", help="skip the broker-limit runs")
    ap.add_argument("--no-copy", action="store_true", help="skip the COPY-limit runs")
    ap.add_argument("--probe-interval-ms", type=float, default=10.0)
    ap.add_argument("--stall-timeout", type=float, default=20.0,
                    help="give up when nothing new is stored for this long after the publishers finished")
    ap.add_argument("--batch-max-rows", type=int, help="ORIGINCAST_INGEST_BATCH_MAX_ROWS for our ingester")
    ap.add_argument("--batch-max-delay-ms", type=int, help="ORIGINCAST_INGEST_BATCH_MAX_DELAY_MS")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="record py-spy profiles of our ingester (DIR/<scenario>-ingest.txt);"
                         " the sampling costs CPU, so its figures are not the clean ones")
    ap.add_argument("--wait-quiet", type=float, default=60.0, metavar="S",
                    help="before each measured run wait up to S s for the machine to be quiet")
    ap.add_argument("--quiet-below", type=float, default=0.3, metavar="CORES",
                    help="'quiet': others use fewer than this many cores (default 0.3)")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)
    quick = args.quick
    args.a_messages = args.a_messages or (20_000 if quick else 200_000)
    args.b_readings = args.b_readings or (100_000 if quick else 1_000_000)
    args.naive_a_messages = args.naive_a_messages or (2_000 if quick else 20_000)
    args.naive_b_readings = args.naive_b_readings or (2_000 if quick else 20_000)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not set(args.scenarios) <= {"a", "b"}:
        ap.error("--scenarios takes a, b or a,b")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} not found (Debian package mosquitto-clients)")
    if args.profile and not Path(pyspy_path()).exists():
        raise SystemExit("bench: --profile needs py-spy on PATH (pip install py-spy)")

    workdir = Path(tempfile.mkdtemp(prefix="origincast-bench-"))
    procs = Processes()
    timescale: Timescale | None = None
    try:
        t_start = time.monotonic()
        note(f"work directory {workdir}; generating payload files")
        loads: dict[str, tuple[Load, Load]] = {}
        if "a" in args.scenarios:
            loads["a"] = (
                make_load(workdir / "a", "a", messages=args.a_messages, per_message=1,
                          publishers=args.a_publishers),
                make_load(workdir / "a-naive", "an", messages=args.naive_a_messages, per_message=1,
                          publishers=args.a_publishers),
            )
        if "b" in args.scenarios:
            k = args.b_per_message
            loads["b"] = (
                make_load(workdir / "b", "b", messages=args.b_readings // k, per_message=k,
                          publishers=args.b_publishers),
                make_load(workdir / "b-naive", "bn", per_message=k, publishers=args.b_publishers,
                          messages=max(args.b_publishers, args.naive_b_readings // k)),
            )
        note("starting TimescaleDB")
        timescale = Timescale()
        timescale.start()
        bench = Bench(args, workdir, timescale, procs)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        busy0 = machine_cpu()[0]
        time.sleep(1.0)
        busy1 = machine_cpu()[0]
        idle_load = (busy1 - busy0) / 1.0
        results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in loads}
        steps: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
        for s, (load, naive_load) in loads.items():
            if not args.no_broker:
                steps.append((s, "broker", lambda load=load: bench.broker_limit(load)))
            if not args.no_copy:
                steps.append((s, "copy", lambda load=load: bench.copy_limit(load)))
            prof = args.profile / f"{s}-ingest.txt" if args.profile else None
            steps.append((s, "ours",
                          lambda load=load, prof=prof: bench.ingest_run(load, naive=False, profile=prof)))
            if not args.no_naive:
                steps.append((s, "naive", lambda load=naive_load: bench.ingest_run(load, naive=True)))
        for rep in range(args.repeat):
            for s, what, run in steps:
                note(f"run {rep + 1}/{args.repeat}: ({s}) {what}")
                busy = wait_quiet(args.quiet_below, args.wait_quiet)
                r = run()
                r["busy_before_cores"] = busy
                results[s].setdefault(what, []).append(r)
                note("  " + ", ".join(f"{k}={_short(v)}" for k, v in r.items()))
        medians = {s: {w: median_of(rs) for w, rs in d.items()} for s, d in results.items()}
        summary = report(args, loads, medians, idle_load, time.monotonic() - t_start)
        if args.profile:
            for s in loads:
                path = args.profile / f"{s}-ingest.txt"
                if path.exists():
                    log("")
                    log(f"== py-spy profile of our ingester, scenario ({s}) ==")
                    log(summarize_profile(path))
        print(json.dumps(summary, sort_keys=False), flush=True)
        return 0
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        return 130
    finally:
        procs.close()
        if timescale is not None:
            with contextlib.suppress(Exception):
                timescale.close()
        if args.keep_workdir:
            note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _short(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def report(args: argparse.Namespace, loads: dict[str, tuple[Load, Load]],
           res: dict[str, dict[str, dict[str, Any]]], idle_load: float, wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cores": os.cpu_count(),
        "repeat": args.repeat,
        "quick": args.quick,
        "machine_busy_cores_before": round(idle_load, 2),
    }
    log("")
    log(f"origincast ingest bench: {os.cpu_count()} cores, repeat {args.repeat}"
        f"{' (medians)' if args.repeat > 1 else ''}; machine busy before start: {idle_load:.2f} cores")
    titles = {"a": "(a) one reading per message, QoS 1",
              "b": f"(b) {args.b_per_message} readings per message, QoS 1"}
    for s, (load, naive_load) in loads.items():
        r = res[s]
        ours, naive = r.get("ours"), r.get("naive")
        broker, copy = r.get("broker"), r.get("copy")
        log("")
        log(f"== {titles[s]}: {load.readings:,} readings in {load.messages:,} messages"
            f" from {len(load.devices)} mosquitto_pub -l -q 1 ==")
        p = f"{s}_"
        if broker:
            log(f"broker limit  (same publishers, mosquitto_sub -q 1): {fmt(broker['msgs_per_s'])} msg/s"
                f" = {fmt(broker['readings_per_s'])} readings/s  ({broker['elapsed_s']:.2f} s;"
                f" received {broker['received']:,}/{load.messages:,};"
                f" broker {broker['broker_cpu_us_per_msg']:.1f} µs/msg;"
                f" machine {broker['machine_busy_cores']:.2f} cores busy;"
                f" others' load before {broker['busy_before_cores']:.2f})")
            out[p + "broker_limit_msgs_per_s"] = round(broker["msgs_per_s"])
            out[p + "broker_limit_readings_per_s"] = round(broker["readings_per_s"])
            out[p + "broker_limit_received"] = broker["received"]
        if copy:
            log(f"COPY limit    (binary COPY, {COPY_ROWS_PER_TX:,}-row tx, same rows, same table): "
                f"{fmt(copy['rows_per_s'])} rows/s  ({copy['elapsed_s']:.2f} s; client"
                f" {copy['client_cpu_us_per_row']:.2f} µs/row, db {copy['db_cpu_us_per_row']:.1f} µs/row)")
            out[p + "copy_limit_rows_per_s"] = round(copy["rows_per_s"])
        if ours:
            log(f"ours          (python -m web ingest): {fmt(ours['readings_per_s'])} readings/s"
                f" = {fmt(ours['msgs_per_s'])} msg/s  ({ours['elapsed_s']:.2f} s"
                f"{'' if ours['complete'] is True else '; INCOMPLETE: ' + str(ours['incomplete_reason'])})")
            log(f"              ingester CPU {ours['cpu_us_per_reading']:.2f} µs/reading"
                f" ({ours['ingester_cores']:.2f} cores); broker {ours['broker_cpu_us_per_reading']:.1f},"
                f" database {ours['db_cpu_us_per_reading']:.1f} µs/reading;"
                f" machine {ours['machine_busy_cores']:.2f} cores busy,"
                f" unattributed {ours['unattributed_cores']:.2f} (kernel I/O, others);"
                f" others' load before the run {ours['busy_before_cores']:.2f}")
            log(f"              publish-to-commit latency p50 {fmt(ours['p50_ms'], '.1f')} ms,"
                f" p99 {fmt(ours['p99_ms'], '.1f')} ms ({ours['latency_samples']} probe readings);"
                f" publishers done after {fmt(ours['publishers_done_s'], '.2f')} s of {ours['elapsed_s']:.2f}"
                + (" (a backlog queued in the broker: the latency is that queue)"
                   if backlogged(ours) else ""))
            log(f"              lost {ours['lost']}, duplicated {ours['duplicated']},"
                f" unexpected {ours['unexpected_rows']}, rejected {ours['rejected']};"
                f" probe lost {ours['probe_lost']}, duplicated {ours['probe_duplicated']}")
            out.update({
                p + "readings_per_s": round(ours["readings_per_s"]),
                p + "msgs_per_s": round(ours["msgs_per_s"]),
                p + "cpu_us_per_reading": round(ours["cpu_us_per_reading"], 2),
                p + "p50_ms": _round(ours["p50_ms"], 1),
                p + "p99_ms": _round(ours["p99_ms"], 1),
                p + "lost": ours["lost"],
                p + "duplicated": ours["duplicated"],
                p + "rejected": ours["rejected"],
                p + "complete": ours["complete"],
                p + "broker_cpu_us_per_reading": round(ours["broker_cpu_us_per_reading"], 2),
                p + "db_cpu_us_per_reading": round(ours["db_cpu_us_per_reading"], 2),
                p + "publishers_done_s": _round(ours["publishers_done_s"], 2),
                p + "elapsed_s": round(ours["elapsed_s"], 2),
                p + "unattributed_cores": round(ours["unattributed_cores"], 2),
                p + "busy_before_cores": round(ours["busy_before_cores"], 2),
            })
        if naive:
            log(f"naive         (bench/naive_ingest.py: auto-ack, one autocommit INSERT per reading;"
                f" smaller load: {naive_load.readings:,} readings in {naive_load.messages:,} messages,"
                f" the RATE is compared): {fmt(naive['readings_per_s'])} readings/s"
                f"{'' if naive['complete'] is True else ' INCOMPLETE: ' + str(naive['incomplete_reason'])}")
            log(f"              CPU {naive['cpu_us_per_reading']:.1f} µs/reading; latency p50"
                f" {fmt(naive['p50_ms'], '.1f')} ms, p99 {fmt(naive['p99_ms'], '.1f')} ms"
                f"{' (a backlog in the broker)' if backlogged(naive) else ''};"
                f" lost {naive['lost']}, duplicated {naive['duplicated']}")
            out.update({
                p + "naive_readings": naive_load.readings,
                p + "naive_readings_per_s": round(naive["readings_per_s"]),
                p + "naive_cpu_us_per_reading": round(naive["cpu_us_per_reading"], 2),
                p + "naive_p50_ms": _round(naive["p50_ms"], 1),
                p + "naive_p99_ms": _round(naive["p99_ms"], 1),
                p + "naive_lost": naive["lost"],
                p + "naive_duplicated": naive["duplicated"],
            })
        if ours:
            to_naive = ratio(ours["readings_per_s"], naive["readings_per_s"] if naive else None)
            out[p + "ratio_to_naive"] = _round(to_naive, 1)
            correct = ours["lost"] == 0 and ours["duplicated"] == 0 and ours["complete"] is True
            checks = [("lossless", "0 lost, 0 duplicated", correct,
                       f"lost {ours['lost']}, duplicated {ours['duplicated']}"),
                      ("naive", f"≥ {TARGET_NAIVE_RATIO:.0f}× naive", None if to_naive is None else
                       to_naive >= TARGET_NAIVE_RATIO, "n/a" if to_naive is None else f"{to_naive:.1f}×")]
            if s == "a":
                share = ratio(ours["msgs_per_s"], broker["msgs_per_s"] if broker else None)
                out["a_ratio_to_broker"] = _round(share, 3)
                checks[:0] = [
                    ("broker", f"≥ {TARGET_A_BROKER_SHARE:.0%} of the broker limit",
                     None if share is None else share >= TARGET_A_BROKER_SHARE, f"{fmt(share, '.1%')}"),
                    ("cpu", f"≤ {TARGET_A_CPU_US:.0f} µs ingester CPU per reading",
                     ours["cpu_us_per_reading"] <= TARGET_A_CPU_US, f"{ours['cpu_us_per_reading']:.2f} µs"),
                ]
                if copy:
                    out["a_ratio_to_copy"] = _round(ratio(ours["readings_per_s"], copy["rows_per_s"]), 3)
            else:
                share = ratio(ours["readings_per_s"], copy["rows_per_s"] if copy else None)
                out["b_ratio_to_copy"] = _round(share, 3)
                checks[:0] = [("copy", f"≥ {TARGET_B_COPY_SHARE:.0%} of the COPY limit",
                               None if share is None else share >= TARGET_B_COPY_SHARE,
                               f"{fmt(share, '.1%')}")]
                if broker:
                    out["b_ratio_to_broker_readings"] = _round(
                        ratio(ours["readings_per_s"], broker["readings_per_s"]), 3)
            log("targets:")
            for key, label, ok, value in checks:
                log(f"  {label:<40} {value:>24}   {verdict(ok)}")
                out[p + "target_" + key + "_met"] = ok
    out["bench_wall_s"] = round(wall, 1)
    log("")
    return out


def backlogged(run: dict[str, Any]) -> bool:
    done = run.get("publishers_done_s")
    return done is not None and done < 0.8 * run["elapsed_s"]


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)



if __name__ == "__main__":
    sys.exit(main())
