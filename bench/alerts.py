#!/usr/bin/env python3
"""Alert latency: a device publishes an out-of-limit reading; how long until the alert
event is on MQTT (``origincast/alerts/<site>``), and until it reaches a client of the
live feed (the WebSocket ``/api/v1/live?device=<probe>``, what the console and the watch
pages listen to), with other readings flowing.

    .venv/bin/python bench/alerts.py                 # 200 excursions under 5,000 readings/s
    .venv/bin/python bench/alerts.py --quick         # 30 excursions, ~20 s

Runs its own mosquitto and TimescaleDB (scripts/services.py) and ``origincast serve``
(ingest + alert engine) as a separate process. The load: ``--rate`` readings/s (default
5,000) of in-range readings from 16 devices on the chilled profile, paced by generator
processes that feed ``mosquitto_pub -l -q 1`` (one per device). The probe device has a
zero-delay upper-limit profile (4 °C); each round it publishes 10 °C (event time = send
time) and waits for the ``raised`` event on MQTT and on the live feed, then 2 °C and
waits for ``resolved``. Latency = event received − reading published, on this machine's
one clock. Targets: p99 ≤ 100 ms on MQTT, ≤ 150 ms on the live feed. Nothing is
asserted; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from scripts.services import Mosquitto, Timescale, free_port  # noqa: E402

TOKEN = "bench-admin-token-0123456789abcdef"
SITE = "bench"
PROBE = "probe-1"
ZERO_DELAY = {
    "name": "Zero delay (bench)",
    "rules": [
        {"kind": "limit", "id": "upper", "direction": "above", "threshold": 4.0, "delay_s": 0,
         "clear_hysteresis": 0.5, "clear_for_s": 0},
    ],
}  # fmt: skip


def pacer(port: int, devices: list[str], rate: float, seconds: float) -> None:
    """Feed each device's mosquitto_pub -l with `rate` readings/s in all, ts = now (µs)."""
    pubs = {
        d: subprocess.Popen(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-l",
             "-t", f"origincast/{d}/telemetry", "-i", f"load-{d}-{uuid.uuid4().hex[:6]}"],
            stdin=subprocess.PIPE,
        )
        for d in devices
    }  # fmt: skip
    per_tick = rate * 0.01  # every 10 ms
    owed = 0.0
    last_us = 0
    start = time.monotonic()
    k = 0
    tick = 0
    try:
        while time.monotonic() - start < seconds:
            tick += 1
            owed += per_tick
            n, owed = int(owed), owed - int(owed)
            for _ in range(n):
                now_us = max(time.time_ns() // 1000, last_us + 1)
                last_us = now_us
                d = devices[k % len(devices)]
                k += 1
                whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_us / 1e6))
                ts = f"{whole}.{now_us % 1_000_000:06d}Z"
                line = json.dumps({"ts": ts, "temp_c": 2.5 + (k % 10) / 10}) + "\n"
                stdin = pubs[d].stdin
                assert stdin is not None
                stdin.write(line.encode())
            for p in pubs.values():
                assert p.stdin is not None
                p.stdin.flush()
            time.sleep(max(0.0, start + tick * 0.01 - time.monotonic()))
    finally:
        for p in pubs.values():
            assert p.stdin is not None
            p.stdin.close()
        for p in pubs.values():
            p.wait(30)


class LiveClient:
    """A client of the live feed selecting the probe, on its own thread and event loop
    (this process's main thread is blocking MQTT code). Records when each alert event of
    the probe arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: dict[str, list[float]] = {}
        self.got = threading.Condition()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="live-client")

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(15):
            raise RuntimeError(f"live feed: no snapshot within 15 s ({self.error!r})")

    def count(self, kind: str) -> int:
        with self.got:
            return len(self.events.get(kind, []))

    def wait_for(self, kind: str, before: int, timeout: float) -> float | None:
        with self.got:
            ok = self.got.wait_for(lambda: len(self.events.get(kind, [])) > before, timeout)
            return self.events[kind][-1] if ok else None

    def stop(self) -> None:
        if self._loop is not None and self._ws is not None:
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(10)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Bearer {TOKEN}"}  # a device selection is for staff
                async with session.ws_connect(self.url, headers=headers) as ws:
                    self._ws = ws
                    async for msg in ws:
                        t = time.time()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        doc = json.loads(msg.data)
                        if doc["type"] == "snapshot":
                            self.ready.set()
                        elif doc["type"] == "alert" and doc["alert"].get("device_id") == PROBE:
                            with self.got:
                                self.events.setdefault(doc["event"], []).append(t)
                                self.got.notify_all()
        except BaseException as exc:  # reported by start() or in the result
            self.error = exc


def http(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else {}


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--rate", type=float, default=5000.0, help="background readings/s")
    ap.add_argument("--pacers", type=int, default=4, help="load generator processes")
    ap.add_argument(
        "--pacer", nargs=4, metavar=("PORT", "DEVICES", "RATE", "SECONDS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.pacer:
        port, devices, rate, seconds = args.pacer
        pacer(int(port), devices.split(","), float(rate), float(seconds))
        return 0
    rounds = 30 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="origincast-bench-alerts-"))
    procs: list[subprocess.Popen[bytes]] = []
    with Mosquitto(persistence=False) as broker, Timescale() as ts:
        db = ts.create_database(f"alerts_{uuid.uuid4().hex[:8]}")
        http_port = free_port()
        base = f"http://127.0.0.1:{http_port}"
        env = {
            **os.environ,
            "ORIGINCAST_DATABASE_URL": db,
            "ORIGINCAST_MQTT_URL": broker.url,
            "ORIGINCAST_HTTP_PORT": str(http_port),
            "ORIGINCAST_ADMIN_TOKEN": TOKEN,
            "ORIGINCAST_INGEST_CLIENT_ID": f"bench-{uuid.uuid4().hex[:6]}",
        }
        log = open(work / "serve.log", "wb")  # closed in finally
        server = subprocess.Popen(
            [sys.executable, "-m", "web", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        procs.append(server)
        events: dict[str, list[tuple[float, dict[str, Any]]]] = {"raised": [], "resolved": []}
        got = threading.Condition()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}")
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-{uuid.uuid4().hex[:6]}")
        live = LiveClient(f"ws://127.0.0.1:{http_port}/api/v1/live?device={PROBE}")
        try:
            wait_http(f"{base}/readyz", 60)
            http("PUT", f"{base}/api/v1/alert-profiles/zero", ZERO_DELAY)
            probe = {"site_id": SITE, "profile_id": "zero", "name": "probe"}
            http("PUT", f"{base}/api/v1/devices/{PROBE}", probe)
            load_devices = [f"load-{i:02d}" for i in range(16)]
            for d in load_devices:
                body = {"site_id": "load", "profile_id": "chilled", "name": d}
                http("PUT", f"{base}/api/v1/devices/{d}", body)

            def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
                t = time.time()
                e = json.loads(m.payload)
                if e.get("alert", {}).get("device_id") != PROBE:
                    return
                with got:
                    events.setdefault(e.get("event", "?"), []).append((t, e))
                    got.notify_all()

            ready = threading.Event()
            sub.on_connect = lambda c, *_: c.subscribe(f"origincast/alerts/{SITE}", qos=1)
            sub.on_subscribe = lambda *_: ready.set()
            sub.on_message = on_message
            sub.connect("127.0.0.1", broker.port)
            sub.loop_start()
            assert ready.wait(10), "alert subscription not confirmed"
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            live.start()

            duration = rounds * 0.6 + 15
            if args.rate > 0:
                per = [load_devices[i :: args.pacers] for i in range(args.pacers)]
                for group in per:
                    procs.append(subprocess.Popen(
                        [sys.executable, __file__, "--pacer", str(broker.port), ",".join(group),
                         str(args.rate / args.pacers), str(duration)], cwd=REPO))  # fmt: skip
            time.sleep(5.0)  # let the load settle

            def metric(name: str) -> float:
                with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
                    for line in r.read().decode().splitlines():
                        if line.startswith(name + " "):
                            return float(line.split()[1])
                return 0.0

            stored0, t0 = metric("origincast_ingest_readings_stored_total"), time.time()
            raised_ms: list[float] = []
            resolved_ms: list[float] = []
            live_ms: dict[str, list[float]] = {"raised": [], "resolved": []}
            missed = 0
            live_missed = 0
            for i in range(rounds):
                for temp, kind, out in ((10.0, "raised", raised_ms), (2.0, "resolved", resolved_ms)):
                    with got:
                        before = len(events.get(kind, []))
                    live_before = live.count(kind)
                    sent = time.time()
                    payload = json.dumps({"ts": int(sent * 1000), "temp_c": temp, "seq": i})
                    pub.publish(f"origincast/{PROBE}/telemetry", payload, qos=1)
                    with got:
                        ok = got.wait_for(lambda k=kind, b=before: len(events.get(k, [])) > b, 5.0)
                        arrived = events[kind][-1][0] if ok else None
                    if arrived is None:
                        missed += 1
                    else:
                        out.append((arrived - sent) * 1000)
                    live_arrived = live.wait_for(kind, live_before, 5.0)
                    if live_arrived is None:
                        live_missed += 1
                    else:
                        live_ms[kind].append((live_arrived - sent) * 1000)
                    time.sleep(0.1)
            stored1, t1 = metric("origincast_ingest_readings_stored_total"), time.time()
            load_rate = (stored1 - stored0) / (t1 - t0)
        finally:
            live.stop()
            for c in (sub, pub):
                c.disconnect()
                c.loop_stop()
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()

    result = {
        "bench": "alerts",
        "rounds": rounds,
        "background_readings_per_s": round(load_rate),
        "raised_p50_ms": round(statistics.median(raised_ms), 1) if raised_ms else None,
        "raised_p99_ms": round(pct(raised_ms, 99), 1) if raised_ms else None,
        "raised_max_ms": round(max(raised_ms), 1) if raised_ms else None,
        "resolved_p50_ms": round(statistics.median(resolved_ms), 1) if resolved_ms else None,
        "resolved_p99_ms": round(pct(resolved_ms, 99), 1) if resolved_ms else None,
        "missed_events": missed,
    }
    result["target_p99_le_100ms_met"] = result["raised_p99_ms"] is not None and result["raised_p99_ms"] <= 100
    lr = live_ms["raised"]
    result.update(
        live_raised_p50_ms=round(statistics.median(lr), 1) if lr else None,
        live_raised_p99_ms=round(pct(lr, 99), 1) if lr else None,
        live_raised_max_ms=round(max(lr), 1) if lr else None,
        live_resolved_p99_ms=round(pct(live_ms["resolved"], 99), 1) if live_ms["resolved"] else None,
        live_missed_events=live_missed,
    )
    result["live_target_p99_le_150ms_met"] = lr != [] and result["live_raised_p99_ms"] <= 150  # type: ignore[operator]
    print(f"alert latency, device publish -> alert event on MQTT, {rounds} excursions, "
          f"{result['background_readings_per_s']:,} other readings/s stored meanwhile")  # fmt: skip
    print(f"  raised:   p50 {result['raised_p50_ms']} ms, p99 {result['raised_p99_ms']} ms, "
          f"max {result['raised_max_ms']} ms  (target p99 <= 100 ms: "
          f"{'MET' if result['target_p99_le_100ms_met'] else 'NOT MET'})")  # fmt: skip
    print(f"  resolved: p50 {result['resolved_p50_ms']} ms, p99 {result['resolved_p99_ms']} ms")
    print(f"device publish -> alert event on the live-feed WebSocket (/api/v1/live?device={PROBE}):")
    print(f"  raised:   p50 {result['live_raised_p50_ms']} ms, p99 {result['live_raised_p99_ms']} ms, "
          f"max {result['live_raised_max_ms']} ms  (target p99 <= 150 ms: "
          f"{'MET' if result['live_target_p99_le_150ms_met'] else 'NOT MET'}); "
          f"resolved p99 {result['live_resolved_p99_ms']} ms; missed {live_missed}")  # fmt: skip
    print(f"  events missed (none within 5 s): {missed}; server log: {work / 'serve.log'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
