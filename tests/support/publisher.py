"""A QoS 1 test publisher that keeps going through broker restarts, run as its own process.

Usage: python -m tests.support.publisher HOST PORT DEVICE_ID COUNT [BASE_MS]
Publishes COUNT readings as origincast/<DEVICE_ID>/telemetry with seq 0..COUNT-1 and
ts = BASE_MS + seq, waits until the broker has acknowledged every one (paho resends
unacknowledged messages after a reconnect of the same persistent session), then prints
"acked N" and exits 0. Exits 1 if not all were acknowledged within the time limit.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

DEADLINE_S = 300.0


def expected_temp(seq: int) -> float:
    """The temperature a test reading with this seq carries (exact in float32)."""
    return (seq % 400) / 8.0 - 20.0


def payload(seq: int, base_ms: int) -> bytes:
    return json.dumps({"ts": base_ms + seq, "temp_c": expected_temp(seq), "seq": seq}).encode()


def main() -> int:
    host, port, device_id, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    base_ms = int(sys.argv[5]) if len(sys.argv) > 5 else int(time.time() * 1000) - 10 * 24 * 3600 * 1000
    acked = 0
    lock = threading.Lock()
    done = threading.Event()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{device_id}",
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    client.username_pw_set(device_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)

    def on_publish(c, u, mid, rc, props):  # type: ignore[no-untyped-def]
        nonlocal acked
        with lock:
            acked += 1
            if acked == count:
                done.set()

    client.on_publish = on_publish
    client.connect(host, port, keepalive=10)
    client.loop_start()
    topic = f"origincast/{device_id}/telemetry"
    for seq in range(count):
        client.publish(topic, payload(seq, base_ms), qos=1)
    ok = done.wait(DEADLINE_S)
    client.disconnect()
    client.loop_stop()
    print(f"acked {acked}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
