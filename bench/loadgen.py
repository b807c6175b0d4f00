#!/usr/bin/env python3
"""Load for bench/ingest.py: payload files for ``mosquitto_pub -l``, the same rows for a
COPY, and the latency probe (a publisher process of its own).

Payload files: one file per device, one MQTT message per line (``mosquitto_pub -l``
publishes each line of its standard input as one message). A message is either one
reading object or a JSON array of ``per_message`` of them. Reading ``seq`` of a device
(1, 2, …) has ``ts = base_ms + (seq - 1) * step_ms`` as integer epoch milliseconds, so
``(device_id, ts)`` is unique and a device's last reading is the one with the largest
ts. ``iter_rows`` yields exactly the rows the ingester should store, for the COPY limit.

The probe (``python bench/loadgen.py probe --host H --port P``) publishes one QoS 1
reading of device ``probe`` every ``--interval-ms`` with ``ts`` = its send time (RFC
3339, µs) and ``seq`` 1, 2, …; on SIGTERM it waits for its last message to be
acknowledged and prints ``{"sent": N}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PROBE_DEVICE = "probe"


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    device: str
    path: Path
    messages: int
    readings: int  # seq runs 1..readings
    last_ts_ms: int

    @property
    def topic(self) -> str:
        return f"origincast/{self.device}/telemetry"


@dataclass(frozen=True, slots=True)
class Load:
    name: str
    per_message: int
    base_ms: int
    step_ms: int
    devices: tuple[DeviceLoad, ...]

    @property
    def messages(self) -> int:
        return sum(d.messages for d in self.devices)

    @property
    def readings(self) -> int:
        return sum(d.readings for d in self.devices)


def temp_for(seq: int) -> float:
    """A plausible fridge temperature, always written with one decimal (a JSON float)."""
    return 2.0 + ((seq * 7) % 60) / 10.0


def make_load(
    directory: Path,
    name: str,
    *,
    messages: int,
    per_message: int,
    publishers: int,
    step_ms: int = 1000,
    base_ms: int | None = None,
) -> Load:
    """Write one payload file per device (``<name>-NN``) and describe them."""
    if messages < publishers:
        raise ValueError(f"{name}: {messages} messages cannot feed {publishers} publishers")
    directory.mkdir(parents=True, exist_ok=True)
    per_device = [messages // publishers + (1 if i < messages % publishers else 0) for i in range(publishers)]
    if base_ms is None:
        # Everything in the past (the ingester rejects readings > 5 min ahead), spanning
        # max(readings per device) * step_ms, ending an hour ago.
        span_ms = max(per_device) * per_message * step_ms
        base_ms = (int(time.time()) // 60 * 60) * 1000 - span_ms - 3_600_000
    devices = []
    for i, n_msgs in enumerate(per_device):
        device = f"{name}-{i:02d}"
        path = directory / f"{device}.lines"
        seq = 0
        with open(path, "w", encoding="ascii") as f:
            for _ in range(n_msgs):
                items = []
                for _ in range(per_message):
                    seq += 1
                    items.append(
                        f'{{"ts":{base_ms + (seq - 1) * step_ms},"temp_c":{temp_for(seq):.1f},"seq":{seq}}}'
                    )
                line = items[0] if per_message == 1 else "[" + ",".join(items) + "]"
                f.write(line + "\n")
        devices.append(DeviceLoad(device, path, n_msgs, seq, base_ms + (seq - 1) * step_ms))
    return Load(name, per_message, base_ms, step_ms, tuple(devices))


def iter_rows(load: Load) -> Iterator[tuple[str, datetime, float, int]]:
    """(device_id, ts, temp_c, seq) for every reading of ``load``, as stored."""
    for d in load.devices:
        for seq in range(1, d.readings + 1):
            ts = EPOCH + timedelta(milliseconds=load.base_ms + (seq - 1) * load.step_ms)
            yield d.device, ts, round(temp_for(seq), 1), seq


# --- the latency probe ----------------------------------------------------------------


def probe_main(argv: list[str]) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    ap = argparse.ArgumentParser(prog="loadgen.py probe")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--client-id", default="bench-probe")
    args = ap.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    connected = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311, clean_session=True
    )
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(15):
        print(json.dumps({"sent": 0, "error": "not connected"}), flush=True)
        return 1
    topic = f"origincast/{PROBE_DEVICE}/telemetry"
    interval = args.interval_ms / 1000.0
    seq = 0
    last = None
    next_at = time.monotonic()
    while not stop.is_set():
        seq += 1
        now = datetime.now(UTC)
        payload = f'{{"ts":"{now:%Y-%m-%dT%H:%M:%S.%f}Z","temp_c":5.0,"seq":{seq}}}'
        last = client.publish(topic, payload, qos=1)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()  # late: do not burst to catch up
    if last is not None:
        try:
            last.wait_for_publish(10)
        except (RuntimeError, ValueError):
            pass
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"sent": seq}), flush=True)
    return 0


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "probe":
        return probe_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description="write payload files (for trying mosquitto_pub -l by hand)")
    ap.add_argument("directory", type=Path)
    ap.add_argument("--name", default="dev")
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--per-message", type=int, default=1)
    ap.add_argument("--publishers", type=int, default=4)
    args = ap.parse_args()
    load = make_load(
        args.directory, args.name, messages=args.messages, per_message=args.per_message,
        publishers=args.publishers,
    )
    for d in load.devices:
        print(f"{d.path}\t{d.topic}\t{d.messages} messages\t{d.readings} readings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
