#!/usr/bin/env python3
"""Relay benchmark: one 720p30 ~1.5 Mbps source, N WHEP viewers, ours against aiortc's MediaRelay.

    .venv/bin/python bench/stream.py                   # full size: 50 viewers, ~5 minutes
    .venv/bin/python bench/stream.py --quick           # smoke run, 10 viewers, ~1.5 minutes
    .venv/bin/python bench/stream.py --profile /tmp/p  # + py-spy of the relay at N viewers

Everything runs on this machine, on loopback (ICE offers only 127.0.0.1 on both sides,
no STUN server), in processes this script starts and stops:

- the relay under test, ``bench/stream_relay.py``: ``web.app.build_app`` (what
  ``origincast serve --no-ingest`` runs) with the busy test pattern (1280×720, 30 fps,
  1.5 Mbps, encoded once) on one stream;
- viewers, ``bench/stream_viewer.py``: real aiortc WHEP clients (ICE, DTLS, SRTP, RTCP
  receiver reports, NACK, PLI, REMB), ``--per-process`` of them per process; one per
  process (``--sample``) takes aiortc's whole receive path, decodes and reads the wall
  clock written into the picture, for latency; the others take a lean receive path
  (SRTP unprotect, RTP header, complete-frame count, RTCP statistics, NACK/PLI, no
  decoding: see that module) so that 50 of them do not starve the relay they measure
  (``--full-viewers``: aiortc's whole path for all, as before);
- the naive relay, ``bench/naive_relay.py``: the same painted frames through
  ``aiortc.contrib.media.MediaRelay``, one libx264 encoder per viewer (aiortc's
  ``RTCRtpSender``), measured at a few small viewer counts.

Figures (each from ``/proc`` or the viewers' own counters; see bench/README.md):

- relay CPU per viewer = (relay CPU/s with N viewers − relay CPU/s with 0 viewers) / N,
  in % of one core; the 0-viewer baseline (the source's painting and encoding) is
  measured before the viewers join and again after they left, and averaged;
- delivered fps per viewer over the measurement window (complete frames counted at the
  viewer), time to first frame (POST → the first complete frame's last packet),
- the viewers' own CPU (their processes, from ``/proc``), and per viewer without the
  sampled viewers' decoding (which their decoder threads measure themselves),
- relay-added latency: the arrival of a frame's last packet at a sampled viewer minus
  the moment the relay's source handed that frame to the fan-out (both ``time.time()``
  on this machine; the frame is identified by the clock written in its picture). The
  source's own paint-and-encode time is reported beside it, not included;
- memory: relay RSS per attached viewer, and RSS after every 100 of 1,000 joins and
  leaves (batches of 20 joining together, each receiving a few frames, then DELETE);
- the same CPU and fps for the naive relay, and the ratio of viewers per core.

Progress goes to stderr; results to stdout; the last line of stdout is one JSON object.
Nothing is asserted: this is a measurement, on a machine others may share (the bench
reports how busy the machine was and waits for quiet first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SLUG = "bench"

# Targets from the issue.
TARGET_CPU_PCT_PER_VIEWER = 0.25
TARGET_MIN_FPS = 25.0
TARGET_TTFF_P95_S = 1.0
TARGET_ADDED_LATENCY_MS = 100.0
TARGET_NAIVE_RATIO = 100.0
# "Flat" memory: RSS growth over the joins and leaves (after the first 100, which fill
# allocator pools and caches) of at most this much per 100 joins. A leaked session (a
# peer connection with its transports, ~hundreds of KiB) would be tens of MiB per 100.
FLAT_MIB_PER_100_JOINS = 1.0
WARMUP_JOINS = 100


def log(msg: str = "") -> None:
    print(msg, flush=True)


def note(msg: str) -> None:
    print(f"  · {msg}", file=sys.stderr, flush=True)


# --- /proc ------------------------------------------------------------------------------


def proc_cpu_s(pid: int | None, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads, dead ones included), or of its thread
    ``tid`` alone, in seconds."""
    if pid is None:
        return 0.0
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        rest = Path(path).read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def udp_counters() -> dict[str, int]:
    """This network namespace's UDP counters (RcvbufErrors: datagrams dropped because a
    socket's receive buffer was full)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=False)) if len(lines) >= 2 else {}


class Window:
    """CPU of some processes and of the whole machine between ``start`` and ``stop``;
    ``threads`` (name -> (pid, tid)): single threads of those processes, reported apart
    (``thread_cores``) and not counted twice."""

    def __init__(self, pids: dict[str, int], threads: dict[str, tuple[int, int]] | None = None) -> None:
        self.pids = pids
        self.threads = threads or {}

    def start(self) -> Window:
        self._t0 = time.monotonic()
        self._cpu0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self._thr0 = {k: proc_cpu_s(*t) for k, t in self.threads.items()}
        self._machine0 = machine_busy_s()
        self._udp0 = udp_counters()
        return self

    def stop(self) -> dict[str, Any]:
        dt = time.monotonic() - self._t0
        cpu = {k: (proc_cpu_s(p) - self._cpu0[k]) / dt for k, p in self.pids.items()}
        thr = {k: (proc_cpu_s(*t) - self._thr0[k]) / dt for k, t in self.threads.items()}
        machine = (machine_busy_s() - self._machine0) / dt
        udp1 = udp_counters()
        return {
            "seconds": dt,
            "cpu_cores": cpu,
            "thread_cores": thr,
            "machine_busy_cores": machine,
            "other_busy_cores": max(0.0, machine - sum(cpu.values())),
            "udp_rcvbuf_errors": udp1.get("RcvbufErrors", 0) - self._udp0.get("RcvbufErrors", 0),
            "udp_in_errors": udp1.get("InErrors", 0) - self._udp0.get("InErrors", 0),
        }


def wait_quiet(threshold: float, max_wait: float, ours: Sequence[int] = ()) -> float:
    """Wait (up to max_wait s) until the machine, apart from our processes ``ours``, is busy
    less than ``threshold`` cores; returns the last reading."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        w = Window({str(p): p for p in ours}).start()
        time.sleep(1.0)
        busy = w.stop()["other_busy_cores"]
        if busy < threshold or time.monotonic() >= deadline:
            if waited or busy >= threshold:
                note(
                    f"machine busy {busy:.2f} cores besides us; "
                    + ("going ahead anyway" if busy >= threshold else "quiet now")
                )
            return busy
        if not waited:
            note(f"machine busy {busy:.2f} cores besides us (others' work); waiting up to {max_wait:.0f} s")
            waited = True


# --- processes --------------------------------------------------------------------------


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
    def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def relay_python(sender: str) -> list[str]:
    """How to start bench/stream_relay.py. It builds its configuration from an explicit
    environment, so the sender choice is added to that (load_config wrapped) by a
    ``-c`` launcher (whose errors then name "-c" rather than the script)."""
    if sender == "default":
        return [PYTHON, str(BENCH / "stream_relay.py")]
    value = "true" if sender == "fast" else "false"
    code = (
        "import runpy, sys; import web.config as c; load = c.load_config; "
        "c.load_config = lambda path=None, env=None: load(path, "
        f"{{**(env or {{}}), 'ORIGINCAST_STREAM_FAST_SENDER': '{value}'}}); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    return [PYTHON, "-c", code, str(BENCH / "stream_relay.py")]


def start_server(procs: Processes, argv: list[str], log_path: Path, timeout: float = 30.0):
    """Start a server script that prints 'ready <port>' on stdout once it listens."""
    out = log_path.with_suffix(".out")
    with open(out, "wb") as o, open(log_path, "wb") as e:
        proc = procs.start(argv, stdout=o, stderr=e, cwd=REPO)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready" in out.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[1]} exited ({proc.returncode}):\n{tail(log_path)}")
        time.sleep(0.05)
    raise RuntimeError(f"{argv[1]} not ready after {timeout:.0f} s:\n{tail(log_path)}")


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def stream_gauges(base: str) -> dict[str, float]:
    """Our relay's origincast_stream_* samples for the bench stream (from /metrics)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("origincast_stream_") and f'stream="{SLUG}"' in line:
            name = line.split("{", 1)[0][len("origincast_stream_") :]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


class ViewerProc:
    """One bench/stream_viewer.py process: commands in on stdin, JSON events out on stdout."""

    def __init__(self, procs: Processes, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as e:
            self.proc = procs.start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=e, cwd=REPO)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._lines.put(json.loads(raw))
        self._lines.put(None)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(cmd.encode() + b"\n")
            self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"viewer {self.pid}: no {event!r} in {timeout:.0f} s:\n{tail(self.log_path)}"
                ) from None
            if msg is None:
                raise RuntimeError(f"viewer {self.pid} exited before {event!r}:\n{tail(self.log_path)}")
            if msg.get("event") == event:
                return msg

    def quit(self, timeout: float = 30.0) -> None:
        self.send("quit")
        with contextlib.suppress(RuntimeError):
            self.expect("closed", timeout)
        Processes.stop(self.proc, timeout=10)


def viewer_argv(url: str, *extra: str) -> list[str]:
    return [PYTHON, str(BENCH / "stream_viewer.py"), url, *extra]


def full_flag(args: argparse.Namespace) -> list[str]:
    """Viewers of our relay: lean unless --full-viewers."""
    return ["--full"] if args.full_viewers else []


# --- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def rnd(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


# --- the runs ---------------------------------------------------------------------------


def steady_viewers(
    procs: Processes,
    url: str,
    n: int,
    per_process: int,
    sample: int,
    join_rate: float,
    workdir: Path,
    tag: str,
    extra: Sequence[str] = (),
) -> tuple[list[ViewerProc], dict[str, Any]]:
    """Start n viewers in ceil(n / per_process) processes, joining at join_rate per second
    in all; wait until each has its first frame (or failed). ``extra``: more options for
    bench/stream_viewer.py."""
    nproc = max(1, math.ceil(n / per_process))
    sizes = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
    viewers = []
    for i, size in enumerate(sizes):
        argv = viewer_argv(
            url,
            f"--viewers={size}",
            f"--sample={min(sample, size)}",
            f"--join-interval={nproc / join_rate:.4f}",
            f"--start-delay={i / join_rate:.4f}",
            *extra,
        )
        viewers.append(ViewerProc(procs, argv, workdir / f"viewers-{tag}-{i}.log"))
    ttff: list[float] = []
    errors: list[str] = []
    timeout = 30 + n / join_rate
    for v in viewers:
        ready = v.expect("ready", timeout)
        ttff += [t for t in ready["ttff"] if t is not None]
        errors += ready["errors"]
    return viewers, {"ttff": ttff, "errors": errors, "processes": nproc}


def mark(viewers: list[ViewerProc]) -> list[dict[str, Any]]:
    for v in viewers:
        v.send("mark")
    return [v.expect("mark", 30) for v in viewers]


def rate_per_viewer(m0: list[dict[str, Any]], m1: list[dict[str, Any]], key: str = "frames") -> list[float]:
    """Per viewer: frames (or packets) per second between two marks."""
    out = []
    for a, b in zip(m0, m1, strict=True):
        dt = b["t"] - a["t"]
        out += [(x1 - x0) / dt for x0, x1 in zip(a[key], b[key], strict=True)]
    return out


def measure_ours(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/whep/{SLUG}"
    relay = start_server(
        procs,
        [
            *relay_python(args.sender),
            f"--port={port}",
            f"--database=sqlite:///{workdir / 'relay.db'}",
            f"--slug={SLUG}",
            f"--bitrate={args.bitrate}",
        ],
        workdir / "relay.log",
    )
    pid = relay.pid
    r: dict[str, Any] = {"relay_pid": pid}
    note(f"relay under test: pid {pid}, {url}; warming up {args.warmup:.0f} s")
    time.sleep(args.warmup)
    r["machine_other_busy_before"] = wait_quiet(args.quiet_below, args.wait_quiet, [pid])

    def baseline(tag: str) -> dict[str, Any]:
        src0 = http_json(f"{base}/bench/source")
        t_start = time.time()
        w = Window({"relay": pid}, {"loop": (pid, pid)}).start()
        time.sleep(args.baseline_s)
        res = w.stop()
        src1 = http_json(f"{base}/bench/source")
        pub = http_json(f"{base}/bench/publish?since={t_start}")["published"]
        enc = [(t - ms / 1000) * 1000 for ms, t in pub]
        out = {
            "cpu_pct": 100 * res["cpu_cores"]["relay"],
            "loop_cpu_pct": 100 * res["thread_cores"]["loop"],
            "rss_mib": proc_rss_mib(pid),
            "machine_busy_cores": res["machine_busy_cores"],
            "other_busy_cores": res["other_busy_cores"],
            "source_frames": src1["frames_sent"] - src0["frames_sent"],
            "source_skipped": src1["frames_skipped"] - src0["frames_skipped"],
            "source_thread_cpu_pct": 100 * (src1["cpu_seconds"] - src0["cpu_seconds"]) / res["seconds"],
            "encode_ms_p50": percentile(enc, 50),
            "encode_ms_p95": percentile(enc, 95),
            "gauges": stream_gauges(base),
        }
        note(
            f"baseline {tag}: relay {out['cpu_pct']:.1f} % of a core with 0 viewers "
            f"(source thread {out['source_thread_cpu_pct']:.1f} %), RSS {out['rss_mib']:.0f} MiB, "
            f"{out['gauges'].get('fps', 0):.0f} fps, {out['gauges'].get('bitrate_bps', 0) / 1e6:.2f} Mbps"
        )
        return out

    r["baseline_before"] = baseline("before")

    # --- N steady viewers ---------------------------------------------------------------
    n = args.viewers
    note(f"{n} viewers joining at {args.join_rate:g}/s, {args.per_process} per process")
    viewers, joined = steady_viewers(
        procs, url, n, args.per_process, args.sample, args.join_rate, workdir, "steady", full_flag(args)
    )
    r["join"] = joined
    note(f"all joined ({len(joined['errors'])} failed); settling {args.settle_s:.0f} s")
    time.sleep(args.settle_s)
    vpids = {f"viewers{i}": v.pid for i, v in enumerate(viewers)}
    r["machine_other_busy_before_window"] = wait_quiet(
        args.quiet_below, args.wait_quiet, [pid, *vpids.values()]
    )
    src0 = http_json(f"{base}/bench/source")
    m0 = mark(viewers)
    t_start = time.time()
    w = Window({"relay": pid, **vpids}, {"loop": (pid, pid)}).start()
    time.sleep(args.window_s)
    res = w.stop()
    m1 = mark(viewers)
    src1 = http_json(f"{base}/bench/source")
    r["gauges_n"] = stream_gauges(base)
    r["rss_n_mib"] = proc_rss_mib(pid)
    pub = dict(http_json(f"{base}/bench/publish?since={t_start - 5}")["published"])
    r["window"] = res
    r["cpu_n_pct"] = 100 * res["cpu_cores"]["relay"]
    r["loop_cpu_n_pct"] = 100 * res["thread_cores"]["loop"]
    r["viewer_procs_cpu_pct"] = 100 * sum(v for k, v in res["cpu_cores"].items() if k != "relay")
    # The sampled viewers' decoder threads (decoding 720p30 and reading the picture clock).
    r["viewer_decode_cpu_pct"] = (
        100 * (sum(m["decode_cpu_s"] for m in m1) - sum(m["decode_cpu_s"] for m in m0)) / res["seconds"]
    )
    r["viewer_lean_counters"] = {
        k: sum(m["lean"][k] for m in m1) - sum(m["lean"][k] for m in m0) for k in m1[0]["lean"]
    }
    r["source_frames_n"] = src1["frames_sent"] - src0["frames_sent"]
    r["source_skipped_n"] = src1["frames_skipped"] - src0["frames_skipped"]
    r["fps"] = rate_per_viewer(m0, m1)
    r["packets_per_s"] = statistics.fmean(rate_per_viewer(m0, m1, "packets"))
    samples = [s for m in m1 for s in m["samples"]]
    added, glass, encode = [], [], []
    for ms, arrival in samples:
        published = pub.get(ms)
        if published is None:
            continue
        added.append((arrival - published) * 1000)
        glass.append((arrival - ms / 1000) * 1000)
        encode.append((published - ms / 1000) * 1000)
    r["latency"] = {
        "samples": len(samples),
        "matched": len(added),
        "unreadable": sum(m["unreadable"] for m in m1) - sum(m["unreadable"] for m in m0),
        "added_ms": added,
        "glass_ms": glass,
        "encode_ms": encode,
    }
    note(
        f"window {res['seconds']:.0f} s: relay {r['cpu_n_pct']:.1f} % of a core, viewers' processes "
        f"{r['viewer_procs_cpu_pct']:.0f} %, machine {res['machine_busy_cores']:.2f} cores busy"
    )

    if args.profile:
        prof = Path(args.profile)
        prof.mkdir(parents=True, exist_ok=True)
        raw = prof / f"relay-{n}-viewers.txt"
        note(f"py-spy on the relay for {args.profile_s:.0f} s -> {raw}")
        pw = Window({"relay": pid}).start()
        subprocess.run(
            [
                pyspy_path(),
                "record",
                "-f",
                "raw",
                "--threads",
                "--nonblocking",
                "-r",
                str(args.profile_rate),
                "-d",
                str(int(args.profile_s)),
                "-o",
                str(raw),
                "-p",
                str(pid),
            ],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pres = pw.stop()
        r["profile"] = {
            "path": str(raw),
            "seconds": pres["seconds"],
            "relay_cpu_pct": 100 * pres["cpu_cores"]["relay"],
            "rate": args.profile_rate,
        }

    note("viewers leaving")
    for v in viewers:
        v.quit()
    time.sleep(2)
    r["gauges_after"] = stream_gauges(base)
    wait_quiet(args.quiet_below, args.wait_quiet, [pid])
    r["baseline_after"] = baseline("after")

    # --- joins and leaves ---------------------------------------------------------------
    if args.churn:
        r["churn"] = churn(args, procs, url, base, pid, workdir)
    return r


def churn(
    args: argparse.Namespace, procs: Processes, url: str, base: str, pid: int, workdir: Path
) -> dict[str, Any]:
    note(f"{args.churn} joins and leaves, {args.churn_batch} at a time")
    rss = [(0, proc_rss_mib(pid))]
    v = ViewerProc(
        procs,
        viewer_argv(
            url,
            f"--churn={args.churn}",
            f"--batch={args.churn_batch}",
            "--frames-per-join=5",
            f"--report-every={args.churn_report}",
            "--sample=0",
            *full_flag(args),
        ),
        workdir / "viewers-churn.log",
    )
    ttff: list[float] = []
    failed = 0
    errors: list[str] = []
    viewers_left: list[float] = []
    t0 = time.monotonic()
    try:
        while True:
            msg = v.expect("progress", 600)
            ttff += msg["ttff"]
            failed = msg["failed"]
            errors = msg["errors"]
            time.sleep(args.churn_settle_s)  # sessions close asynchronously on the relay
            viewers_left.append(stream_gauges(base).get("viewers", -1))
            rss.append((msg["joins"], proc_rss_mib(pid)))
            note(
                f"  {msg['joins']} joins: relay RSS {rss[-1][1]:.1f} MiB,"
                f" viewers attached {viewers_left[-1]:.0f}"
            )
            v.send("next")
            if msg["joins"] >= args.churn:
                break
        v.expect("done", 60)
    finally:
        Processes.stop(v.proc, timeout=10)
    # The first 100 joins fill allocator pools and caches (and a batch of 20 joining at
    # once may hold more sessions than the steady viewers did): not counted in the slope.
    after_warmup = [(j, m) for j, m in rss if j >= max(WARMUP_JOINS, args.churn_report) and m is not None]
    growth = slope([j for j, _ in after_warmup], [m for _, m in after_warmup])
    return {
        "seconds": time.monotonic() - t0,
        "rss_mib": rss,
        "growth_mib_per_100_joins": None if growth is None else growth * 100,
        "total_growth_mib": (rss[-1][1] or 0) - (rss[0][1] or 0),
        "ttff": ttff,
        "failed": failed,
        "errors": errors,
        "viewers_attached_after_each": viewers_left,
    }


def measure_naive(args: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/whep/{SLUG}"
    relay = start_server(
        procs, [PYTHON, str(BENCH / "naive_relay.py"), f"--port={port}"], workdir / "naive-relay.log"
    )
    pid = relay.pid
    note(f"naive relay (MediaRelay, one encoder per viewer): pid {pid}; warming up")
    time.sleep(3)
    out: dict[str, Any] = {"relay_pid": pid, "runs": []}
    try:
        out["machine_other_busy_before"] = wait_quiet(args.quiet_below, args.wait_quiet, [pid])
        w = Window({"relay": pid}).start()
        time.sleep(args.naive_baseline_s)
        res = w.stop()
        out["baseline_cpu_pct"] = 100 * res["cpu_cores"]["relay"]
        out["baseline_rss_mib"] = proc_rss_mib(pid)
        note(f"naive baseline (painting, no viewer): {out['baseline_cpu_pct']:.1f} % of a core")
        for n in args.naive_viewers:
            wait_quiet(args.quiet_below, args.wait_quiet / 2, [pid])
            # aiortc's whole receive path: its REMB estimator steers these encoders' bit rate.
            viewers, joined = steady_viewers(procs, url, n, n, 0, 5.0, workdir, f"naive{n}", ["--full"])
            try:
                time.sleep(args.settle_s)
                m0 = mark(viewers)
                w = Window({"relay": pid, **{f"v{i}": v.pid for i, v in enumerate(viewers)}}).start()
                time.sleep(args.naive_window_s)
                res = w.stop()
                m1 = mark(viewers)
                rss = proc_rss_mib(pid)
            finally:
                for v in viewers:
                    v.quit()
            fps = rate_per_viewer(m0, m1)
            cpu = 100 * res["cpu_cores"]["relay"]
            run = {
                "viewers": n,
                "cpu_pct": cpu,
                "cpu_pct_per_viewer": (cpu - out["baseline_cpu_pct"]) / n,
                "fps_min": min(fps) if fps else None,
                "fps_mean": statistics.fmean(fps) if fps else None,
                "ttff_p50_s": percentile(joined["ttff"], 50),
                "errors": joined["errors"],
                "rss_mib": rss,
                "machine_busy_cores": res["machine_busy_cores"],
                "other_busy_cores": res["other_busy_cores"],
            }
            out["runs"].append(run)
            note(
                f"naive, {n} viewer(s): relay {cpu:.0f} % of a core, "
                f"{run['cpu_pct_per_viewer']:.1f} % per viewer, fps min {fmt(run['fps_min'], '.1f')}"
            )
            time.sleep(2)
    finally:
        Processes.stop(relay)
    # The figure to compare: the most viewers at which every one still got >= 25 fps
    # (the naive relay's best case: its fixed costs spread widest); else its 1-viewer run.
    ok = [x for x in out["runs"] if x["fps_min"] is not None and x["fps_min"] >= TARGET_MIN_FPS]
    chosen = max(ok, key=lambda x: x["viewers"]) if ok else (out["runs"][0] if out["runs"] else None)
    out["chosen_viewers"] = chosen["viewers"] if chosen else None
    out["cpu_pct_per_viewer"] = chosen["cpu_pct_per_viewer"] if chosen else None
    return out


# --- profile summary --------------------------------------------------------------------


def pyspy_path() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else (shutil.which("py-spy") or "py-spy")


def _function(frame: str) -> str:
    """'name (file.py:123)' -> 'name (file.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else frame


# Innermost recognised layer of a stack -> where the relay's per-packet time goes.
# Checked from the leaf outwards; the first rule that matches a frame names the sample.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("waiting in epoll (idle)", ("EpollSelector.select",)),
    # Our fast sender (stream/rtp/sender.py), before anything it calls into.
    ("fast sender: UDP sendto / GSO sendmsg on the pair's socket", ("DatagramRoute.send",)),
    ("fast sender: frame buffer + SRTP protect in place", ("SrtpFrameBuffer.fill",)),
    ("fast sender: per-frame Python (route, headers, counters)", ("FastRtpSender._send", "HeaderTemplate")),
    ("packetize once per stream (ours)", ("stream/rtp/packetizer.py",)),
    ("UDP sendto (socket + asyncio transport)", ("sendto (asyncio/selector_events.py)", "socket.sendto")),
    ("SRTP protect (pylibsrtp)", ("Session.protect", "Session.protect_rtcp", "Session.unprotect")),
    (
        "clock: abs-send-time / NTP (datetime per packet)",
        ("current_ntp_time", "current_datetime", "clock.py"),
    ),
    (
        "RTP header build + serialize",
        (
            "RtpPacket.serialize",
            "pack_header_extensions",
            "RtpPacket.__init__",
            "HeaderExtensionsMap",
            "rtp.py",
        ),
    ),
    (
        "H.264 packetize (split + FU-A/STAP-A)",
        ("H264Encoder._packetize", "H264Encoder._split_bitstream", "H264Encoder.pack", "h264.py"),
    ),
    ("ICE consent checks (STUN)", ("query_consent", "request_received", "aioice/stun.py")),
    (
        "ICE/DTLS transport send path",
        (
            "RTCDtlsTransport._send_rtp",
            "Connection.sendto",
            "StunProtocol.send",
            "rtcdtlstransport.py",
            "aioice",
        ),
    ),
    ("RTCP (reports, NACK, REMB)", ("_run_rtcp", "_handle_rtcp", "rtcp", "RtcpPacket")),
    ("fan-out + feed track (ours)", ("stream/fanout.py", "stream/whep.py", "stream/stats.py")),
    (
        "RTP sender loop (per packet Python)",
        ("RTCRtpSender._run_rtp", "RTCRtpSender._next_encoded_frame", "rtcrtpsender.py"),
    ),
    ("asyncio scheduling (tasks, futures, callbacks)", ("asyncio/",)),
]


def categorize(funcs: list[str]) -> str:
    for f in reversed(funcs):
        for name, keys in CATEGORIES:
            if any(k in f for k in keys):
                return name
    return "other"


def summarize_profile(
    path: Path, seconds: float, rate: int, per_viewer_pct: float, packets_per_s: float | None, top: int = 18
) -> dict[str, Any]:
    """py-spy raw stacks (--threads, without --idle) -> per thread, samples as % of one core
    (py-spy counts a runnable thread as active, so on a busy machine these overstate CPU);
    for the event-loop thread, the functions with the most own samples and the time by
    layer, as shares of its busy samples. Those shares are turned into per-viewer cost
    with the *measured* per-viewer CPU (share × (cpu_N − cpu_0) / N; the loop's work at 0
    viewers is a few callbacks per frame) and, with the packet rate the viewers counted,
    into µs of relay CPU per RTP packet per viewer."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    main = "MainThread"
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += k
        if thread != main:
            continue
        funcs = [_function(f) for f in frames[1:]] or ["(no python frame)"]
        own[funcs[-1]] += k
        cats[categorize(funcs)] += k
    per_core = rate * seconds  # samples that make one core for the whole recording
    idle = cats.get("waiting in epoll (idle)", 0)
    busy_main = max(1, threads.get(main, 0) - idle)

    def row(key: str, name: str, k: int) -> dict[str, Any]:
        share = k / busy_main
        us = share * per_viewer_pct / 100 / packets_per_s * 1e6 if packets_per_s else None
        return {
            key: name,
            "pct_of_loop": round(100 * share, 1),
            "pct_core_per_viewer": round(share * per_viewer_pct, 4),
            "us_per_packet": rnd(us, 2),
        }

    return {
        "threads_pct_of_core": {t: round(100 * k / per_core, 1) for t, k in threads.most_common()},
        "loop_busy_pct_of_core": round(100 * busy_main / per_core, 1),
        "own": [
            row("function", f, k) for f, k in own.most_common(top + 1) if "EpollSelector.select" not in f
        ][:top],
        "layers": [row("layer", c, k) for c, k in cats.most_common() if c != "waiting in epoll (idle)"],
    }


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 viewers, short windows, 200 joins")
    ap.add_argument("--viewers", type=int, help="N viewers of our relay (default 50)")
    ap.add_argument("--per-process", type=int, default=25, help="viewers per viewer process")
    ap.add_argument("--sample", type=int, default=1, help="decoding (latency) viewers per process")
    ap.add_argument(
        "--full-viewers",
        action="store_true",
        help="non-sampled viewers of our relay take aiortc's whole receive path (as before the lean one)",
    )
    ap.add_argument("--join-rate", type=float, default=10.0, help="viewer joins per second, all processes")
    ap.add_argument("--bitrate", type=int, default=1_500_000)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--baseline-s", type=float, help="0-viewer window, before and after (default 15)")
    ap.add_argument("--window-s", type=float, help="measurement window with N viewers (default 30)")
    ap.add_argument("--settle-s", type=float, default=3.0, help="after the joins, before measuring")
    ap.add_argument("--churn", type=int, help="viewer joins and leaves for the memory figure (default 1000)")
    ap.add_argument("--churn-batch", type=int, default=20)
    ap.add_argument("--churn-report", type=int, default=100, help="relay RSS every this many joins")
    ap.add_argument("--churn-settle-s", type=float, default=1.5)
    ap.add_argument("--naive-viewers", help="viewer counts for the naive relay (default 1,2,4)")
    ap.add_argument("--naive-baseline-s", type=float, help="default 10")
    ap.add_argument("--naive-window-s", type=float, help="default 15")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the relay at N viewers, raw stacks into DIR")
    ap.add_argument("--profile-s", type=float, default=20.0)
    ap.add_argument("--profile-rate", type=int, default=200)
    ap.add_argument("--quiet-below", type=float, default=0.3, help="cores busy besides us counted as quiet")
    ap.add_argument("--wait-quiet", type=float, default=60.0, help="max seconds to wait for quiet")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument(
        "--sender",
        choices=("default", "fast", "aiortc"),
        default="default",
        help="the relay's WHEP sender: ORIGINCAST_STREAM_FAST_SENDER true (fast: packetize once,"
        " thin per-viewer path) or false (aiortc's RTCRtpSender loop); default: the setting's default",
    )
    args = ap.parse_args(argv)
    q = args.quick
    args.viewers = args.viewers or (10 if q else 50)
    if q and args.per_process == 25:
        args.per_process = 10
    args.baseline_s = args.baseline_s or (5.0 if q else 15.0)
    args.window_s = args.window_s or (8.0 if q else 30.0)
    args.churn = (200 if q else 1000) if args.churn is None else args.churn
    if q and args.churn_report == 100:
        args.churn_report = 50
    args.naive_viewers = [int(x) for x in (args.naive_viewers or ("1,2" if q else "1,2,4")).split(",") if x]
    args.naive_baseline_s = args.naive_baseline_s or (4.0 if q else 10.0)
    args.naive_window_s = args.naive_window_s or (5.0 if q else 15.0)
    if q:
        args.wait_quiet = min(args.wait_quiet, 10.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="origincast-bench-stream-"))
    started = time.monotonic()
    try:
        ours = measure_ours(args, procs, workdir)
        naive = None if args.no_naive else measure_naive(args, procs, workdir)
        summary = report(args, ours, naive, time.monotonic() - started)
        print(json.dumps(summary), flush=True)
        return 0
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    finally:
        procs.close()
        if args.keep:
            note(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(
    args: argparse.Namespace, ours: dict[str, Any], naive: dict[str, Any] | None, elapsed: float
) -> dict[str, Any]:
    n = args.viewers
    b0, b1 = ours["baseline_before"], ours["baseline_after"]
    base = (b0["cpu_pct"] + b1["cpu_pct"]) / 2
    per_viewer = (ours["cpu_n_pct"] - base) / n
    # The same from the event-loop thread alone, where all per-viewer work runs: the
    # source's painting and encoding threads (most of the 0-viewer CPU, and most of its
    # run-to-run noise on a shared machine) drop out.
    loop_base = (b0["loop_cpu_pct"] + b1["loop_cpu_pct"]) / 2
    loop_per_viewer = (ours["loop_cpu_n_pct"] - loop_base) / n
    pps = ours.get("packets_per_s")
    us_per_packet = per_viewer / 100 / pps * 1e6 if pps else None
    fps = ours["fps"]
    fps_min = min(fps) if fps else None
    source_fps = ours["source_frames_n"] / ours["window"]["seconds"]
    ttff = ours["join"]["ttff"]
    lat = ours["latency"]
    added_p50, added_p95 = percentile(lat["added_ms"], 50), percentile(lat["added_ms"], 95)
    mem_per_viewer_kib = (
        (ours["rss_n_mib"] - b0["rss_mib"]) * 1024 / n if ours["rss_n_mib"] and b0["rss_mib"] else None
    )
    ours_vpc = 100 / per_viewer if per_viewer > 0 else None
    naive_pv = naive["cpu_pct_per_viewer"] if naive else None
    naive_vpc = 100 / naive_pv if naive_pv and naive_pv > 0 else None
    ratio = ours_vpc / naive_vpc if ours_vpc and naive_vpc else None
    ch = ours.get("churn")
    growth = ch["growth_mib_per_100_joins"] if ch else None
    flat = None if growth is None else growth <= FLAT_MIB_PER_100_JOINS
    w = ours["window"]
    # What one viewer process spends per viewer, without the sampled viewers' decoding.
    viewer_pv = (ours["viewer_procs_cpu_pct"] - ours["viewer_decode_cpu_pct"]) / n

    met = {
        "cpu_per_viewer": per_viewer <= TARGET_CPU_PCT_PER_VIEWER,
        "fps": fps_min is not None and fps_min >= TARGET_MIN_FPS and not ours["join"]["errors"],
        "ttff_p95": (percentile(ttff, 95) or 1e9) <= TARGET_TTFF_P95_S,
        "added_latency": added_p95 is not None and added_p95 <= TARGET_ADDED_LATENCY_MS,
        "naive_ratio": None if ratio is None else ratio >= TARGET_NAIVE_RATIO,
        "memory_flat": flat,
    }

    log(
        f"relay benchmark: 1280x720 {args.bitrate / 1e6:.1f} Mbps 30 fps busy test pattern, {n} viewers"
        f"{' (QUICK: figures indicative only)' if args.quick else ''}"
    )
    g = b0["gauges"]
    log(
        f"  source: {g.get('fps', 0):.0f} fps, {g.get('bitrate_bps', 0) / 1e6:.2f} Mbps"
        " measured at the relay,"
        f" {g.get('width_pixels', 0):.0f}x{g.get('height_pixels', 0):.0f}; "
        f"source frames in the {w['seconds']:.0f} s window {ours['source_frames_n']} "
        f"(skipped {ours['source_skipped_n']})"
    )
    path = (
        "aiortc senders packetize per viewer"
        if args.sender == "aiortc"
        else "packetized once per stream, thin per-viewer sender (the default)"
        if args.sender in ("fast", "default")
        else args.sender
    )
    log(f"ours (origincast relay, encode once, av.Packet fan-out, {path}):")
    log(
        f"  relay CPU: 0 viewers {b0['cpu_pct']:.1f} % before / {b1['cpu_pct']:.1f} % after "
        f"(source thread {b0['source_thread_cpu_pct']:.1f} %),"
        f" {n} viewers {ours['cpu_n_pct']:.1f} % of a core"
    )
    log(
        f"  event-loop thread alone: 0 viewers {b0['loop_cpu_pct']:.1f} % / {b1['loop_cpu_pct']:.1f} %,"
        f" {n} viewers {ours['loop_cpu_n_pct']:.1f} % -> {loop_per_viewer:.3f} % of a core per viewer"
        " (the painting and encoding threads left out)"
    )
    log(
        f"  CPU per viewer: {per_viewer:.3f} % of a core  (target <= {TARGET_CPU_PCT_PER_VIEWER} %)  "
        f"{verdict(met['cpu_per_viewer'])}   -> {fmt(ours_vpc, '.0f')} viewers per core;"
        f" {fmt(pps, '.0f')} RTP packets/s per viewer -> {fmt(us_per_packet, '.1f')} µs per packet per viewer"
    )
    log(
        f"  delivered fps per viewer: min {fmt(fps_min, '.1f')},"
        f" mean {fmt(statistics.fmean(fps) if fps else None, '.1f')}"
        f" over {len(fps)} viewers, {len(ours['join']['errors'])} failed to join  (target every viewer >= "
        f"{TARGET_MIN_FPS:.0f})  {verdict(met['fps'])}"
    )
    log(
        f"    the source made {source_fps:.1f} fps in the window ({ours['source_skipped_n']} frames skipped"
        f" when its thread fell behind): the slowest viewer got"
        f" {fmt(100 * (fps_min or 0) / source_fps, '.1f')} % of the frames published"
    )
    log(
        f"  time to first frame: p50 {fmt(percentile(ttff, 50), '.3f')} s,"
        f" p95 {fmt(percentile(ttff, 95), '.3f')} s,"
        f" max {fmt(max(ttff) if ttff else None, '.3f')} s (joining at {args.join_rate:g}/s)  "
        f"(target p95 <= {TARGET_TTFF_P95_S:.0f} s)  {verdict(met['ttff_p95'])}"
    )
    log(
        f"  relay-added latency (fan-out publish -> last packet at a viewer):"
        f" p50 {fmt(added_p50, '.1f')} ms, "
        f"p95 {fmt(added_p95, '.1f')} ms,"
        f" max {fmt(max(lat['added_ms']) if lat['added_ms'] else None, '.1f')} ms, "
        f"{lat['matched']} samples from {ours['join']['processes']} viewer(s)  (target <= "
        f"{TARGET_ADDED_LATENCY_MS:.0f} ms)  {verdict(met['added_latency'])}"
    )
    log(
        f"    beside it: the source's paint+encode p50 {fmt(percentile(lat['encode_ms'], 50), '.1f')} ms; "
        f"picture clock -> viewer p50 {fmt(percentile(lat['glass_ms'], 50), '.1f')} ms, "
        f"p95 {fmt(percentile(lat['glass_ms'], 95), '.1f')} ms"
    )
    log(
        f"  memory: RSS {fmt(b0['rss_mib'], '.1f')} MiB with 0 viewers,"
        f" {fmt(ours['rss_n_mib'], '.1f')} MiB with {n}"
        f" -> {fmt(mem_per_viewer_kib, '.0f')} KiB per viewer"
    )
    if ch:
        series = ", ".join(f"{j}:{m:.1f}" for j, m in ch["rss_mib"] if m is not None)
        log(
            f"  joins and leaves: {ch['rss_mib'][-1][0]} joins ({ch['failed']} failed)"
            f" in {ch['seconds']:.0f} s; "
            f"RSS MiB by joins {series}"
        )
        log(
            f"    growth {fmt(growth, '.2f')} MiB per 100 joins"
            f" after the first {max(WARMUP_JOINS, args.churn_report)} "
            f"(flat: <= {FLAT_MIB_PER_100_JOINS} MiB)  {verdict(flat)}; viewers attached after each step: "
            f"{sorted(set(ch['viewers_attached_after_each']))}; join-and-leave TTFF p50 "
            f"{fmt(percentile(ch['ttff'], 50), '.3f')} s, p95 {fmt(percentile(ch['ttff'], 95), '.3f')} s"
        )
    lc = ours["viewer_lean_counters"]
    log(
        f"  viewers ({'aiortc receive path' if args.full_viewers else 'lean receive path'},"
        f" {ours['join']['processes']} sampled): processes {ours['viewer_procs_cpu_pct']:.1f} % of a core,"
        f" of which the sampled viewers' decoding {ours['viewer_decode_cpu_pct']:.1f} %;"
        f" the rest per viewer {viewer_pv:.3f} % of a core; lean viewers in the window: frames incomplete"
        f" {lc['incomplete']}, NACKs {lc['nacks']}, retransmissions {lc['retransmissions']},"
        f" PLIs {lc['plis']}, unprotect failures {lc['unprotect_failed']}"
    )
    log(
        f"  machine: {w['machine_busy_cores']:.2f} cores busy in the window, viewer processes "
        f"{ours['viewer_procs_cpu_pct']:.0f} % of a core, others {w['other_busy_cores']:.2f} cores; "
        f"UDP RcvbufErrors {w['udp_rcvbuf_errors']}, InErrors {w['udp_in_errors']}"
    )
    if naive:
        log("naive (aiortc MediaRelay, one libx264 encoder per viewer):")
        log(f"  baseline (painting, no viewer) {naive['baseline_cpu_pct']:.1f} % of a core")
        for x in naive["runs"]:
            log(
                f"  {x['viewers']} viewer(s): relay {x['cpu_pct']:.0f} % of a core,"
                f" {x['cpu_pct_per_viewer']:.1f} % "
                f"per viewer, fps min {fmt(x['fps_min'], '.1f')} mean {fmt(x['fps_mean'], '.1f')}"
                f"{', FAILED joins: ' + str(len(x['errors'])) if x['errors'] else ''}"
            )
        log(
            f"  compared at {naive['chosen_viewers']} viewer(s): {fmt(naive_pv, '.1f')} % per viewer -> "
            f"{fmt(naive_vpc, '.1f')} viewers per core"
        )
        log(
            f"ratio: ours {fmt(ours_vpc, '.0f')} / naive {fmt(naive_vpc, '.1f')} viewers per core = "
            f"{fmt(ratio, '.0f')}x  (target >= {TARGET_NAIVE_RATIO:.0f}x)  {verdict(met['naive_ratio'])}"
        )
    prof = None
    if "profile" in ours:
        p = ours["profile"]
        prof = summarize_profile(Path(p["path"]), p["seconds"], p["rate"], per_viewer, pps)
        log(
            f"profile ({p['path']}, {p['seconds']:.0f} s at {p['rate']} Hz, relay {p['relay_cpu_pct']:.1f} % "
            f"of a core while recording; {fmt(pps, '.0f')} RTP packets/s per viewer, "
            f"{fmt(us_per_packet, '.1f')} µs of relay CPU per packet per viewer):"
        )
        log(
            "  threads (py-spy samples, % of a core): "
            + ", ".join(f"{t} {v}" for t, v in prof["threads_pct_of_core"].items())
        )
        log("  event loop by layer (innermost recognised frame; share, then x measured per-viewer CPU):")
        for x in prof["layers"]:
            log(
                f"    {x['pct_of_loop']:5.1f} %  {x['pct_core_per_viewer']:.4f} % core/viewer"
                f"  {fmt(x['us_per_packet'], '5.2f')} µs/packet  {x['layer']}"
            )
        log("  event loop functions by own time:")
        for x in prof["own"]:
            log(
                f"    {x['pct_of_loop']:5.1f} %  {x['pct_core_per_viewer']:.4f} % core/viewer"
                f"  {fmt(x['us_per_packet'], '5.2f')} µs/packet  {x['function']}"
            )
    log(f"elapsed {elapsed:.0f} s")

    return {
        "bench": "stream",
        "quick": args.quick,
        "sender": args.sender,
        "viewers": n,
        "bitrate_bps_measured": b0["gauges"].get("bitrate_bps"),
        "source_fps_measured": b0["gauges"].get("fps"),
        "relay_cpu_pct_0_viewers_before": rnd(b0["cpu_pct"], 2),
        "relay_cpu_pct_0_viewers_after": rnd(b1["cpu_pct"], 2),
        "relay_cpu_pct_n_viewers": rnd(ours["cpu_n_pct"], 2),
        "cpu_pct_per_viewer": rnd(per_viewer, 4),
        "loop_cpu_pct_0_viewers_before": rnd(b0["loop_cpu_pct"], 2),
        "loop_cpu_pct_0_viewers_after": rnd(b1["loop_cpu_pct"], 2),
        "loop_cpu_pct_n_viewers": rnd(ours["loop_cpu_n_pct"], 2),
        "loop_cpu_pct_per_viewer": rnd(loop_per_viewer, 4),
        "viewers_per_core": rnd(ours_vpc, 1),
        "packets_per_s_per_viewer": rnd(pps, 1),
        "relay_us_per_packet_per_viewer": rnd(us_per_packet, 2),
        "fps_min": rnd(fps_min, 2),
        "fps_mean": rnd(statistics.fmean(fps), 2) if fps else None,
        "source_fps_in_window": rnd(source_fps, 2),
        "source_frames_skipped_in_window": ours["source_skipped_n"],
        "join_failures": len(ours["join"]["errors"]),
        "ttff_p50_s": rnd(percentile(ttff, 50)),
        "ttff_p95_s": rnd(percentile(ttff, 95)),
        "added_latency_p50_ms": rnd(added_p50, 1),
        "added_latency_p95_ms": rnd(added_p95, 1),
        "added_latency_max_ms": rnd(max(lat["added_ms"]), 1) if lat["added_ms"] else None,
        "latency_samples": lat["matched"],
        "source_encode_p50_ms": rnd(percentile(lat["encode_ms"], 50), 1),
        "glass_to_viewer_p50_ms": rnd(percentile(lat["glass_ms"], 50), 1),
        "rss_mib_0_viewers": rnd(b0["rss_mib"], 1),
        "rss_mib_n_viewers": rnd(ours["rss_n_mib"], 1),
        "memory_kib_per_viewer": rnd(mem_per_viewer_kib, 0),
        "churn_joins": ch["rss_mib"][-1][0] if ch else None,
        "churn_failed": ch["failed"] if ch else None,
        "churn_rss_mib": [[j, rnd(m, 1)] for j, m in ch["rss_mib"]] if ch else None,
        "churn_growth_mib_per_100_joins": rnd(growth, 3),
        "churn_ttff_p95_s": rnd(percentile(ch["ttff"], 95)) if ch else None,
        "viewer_processes_cpu_pct": rnd(ours["viewer_procs_cpu_pct"], 1),
        "viewer_decode_cpu_pct": rnd(ours["viewer_decode_cpu_pct"], 1),
        "viewer_cpu_pct_per_viewer": rnd(viewer_pv, 3),
        "viewer_receive_path": "aiortc" if args.full_viewers else "lean",
        "viewer_lean_counters": ours["viewer_lean_counters"],
        "machine_busy_cores": rnd(w["machine_busy_cores"], 2),
        "machine_other_busy_cores": rnd(w["other_busy_cores"], 2),
        "machine_other_busy_before_window": rnd(ours.get("machine_other_busy_before_window"), 2),
        "udp_rcvbuf_errors": w["udp_rcvbuf_errors"],
        "naive_cpu_pct_per_viewer": rnd(naive_pv, 2),
        "naive_viewers_per_core": rnd(naive_vpc, 2),
        "naive_compared_at_viewers": naive["chosen_viewers"] if naive else None,
        "naive_runs": [
            {k: rnd(v, 2) if isinstance(v, float) else v for k, v in x.items() if k != "errors"}
            for x in naive["runs"]
        ]
        if naive
        else None,
        "naive_ratio": rnd(ratio, 1),
        "profile_layers": prof["layers"] if prof else None,
        "target_cpu_per_viewer_met": met["cpu_per_viewer"],
        "target_fps_met": met["fps"],
        "target_ttff_p95_met": met["ttff_p95"],
        "target_added_latency_met": met["added_latency"],
        "target_naive_ratio_met": met["naive_ratio"],
        "target_memory_flat_met": met["memory_flat"],
        "elapsed_s": round(elapsed),
    }


if __name__ == "__main__":
    sys.exit(main())
