"""A simulated sensor fleet publishing readings over MQTT, one client per device.

It speaks only the published contract (topic ``origincast/<device_id>/telemetry``, the
JSON reading, retained ``online``/``offline`` status with a last will), like real hardware.
Each device connects with its own id as username, so a broker ACL applies to it as to a
real sensor.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.thermal import ThermalSpace

log = logging.getLogger(__name__)

TOPIC = "origincast/{device_id}/telemetry"
STATUS_TOPIC = "origincast/{device_id}/status"


@dataclass(slots=True)
class SimulatedSensor:
    device_id: str
    space: ThermalSpace
    battery_v: float = 3.05
    seq: int = 0
    # Door events: (start offset s, duration s) after the fleet starts.
    doors: list[tuple[float, float]] = field(default_factory=list)
    compressor_fails_at_s: float | None = None

    def reading(self, now: float, elapsed_s: float, dt_s: float) -> dict[str, object]:
        sp = self.space
        sp.door_open = any(start <= elapsed_s < start + dur for start, dur in self.doors)
        if self.compressor_fails_at_s is not None and elapsed_s >= self.compressor_fails_at_s:
            sp.compressor_ok = False
        temp = sp.step(dt_s)
        self.seq += 1
        self.battery_v = max(2.5, self.battery_v - 0.00001 * dt_s)
        return {
            "ts": int(now * 1000),
            "temp_c": temp,
            "rh": round(80 + sp.rng.gauss(0, 1.5), 1),
            "battery_v": round(self.battery_v, 3),
            "door_open": sp.door_open,
            "seq": self.seq,
        }


def demo_fleet(seed: int = 7) -> list[SimulatedSensor]:
    """A cold room, a freezer, a pharma fridge and two reefer trucks: truck-7 opens its door
    for a minute every nine minutes (deliveries), truck-9's compressor fails a minute in."""
    rng = random.Random(seed)

    def space(sp: float) -> ThermalSpace:
        return ThermalSpace(setpoint_c=sp, rng=random.Random(rng.random()))

    return [
        SimulatedSensor("coldroom-1", space(2.0)),
        SimulatedSensor("freezer-1", space(-21.0)),
        SimulatedSensor("pharma-fridge-1", space(5.0)),
        SimulatedSensor("truck-7", space(3.0), doors=[(60.0 + 540.0 * k, 60.0) for k in range(12)]),
        SimulatedSensor("truck-9", space(3.0), compressor_fails_at_s=60.0),
    ]


class Fleet:
    """Publishes one reading per sensor every ``interval_s`` until ``stop()``."""

    def __init__(
        self,
        sensors: list[SimulatedSensor],
        host: str,
        port: int,
        *,
        interval_s: float = 2.0,
        protocol: str = "5",
        passwords: dict[str, str] | None = None,
    ) -> None:
        self._sensors = sensors
        self._host, self._port = host, port
        self._interval_s = interval_s
        self._protocol = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self._passwords = passwords or {}
        self._clients: dict[str, mqtt.Client] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0

    def start(self) -> None:
        for s in self._sensors:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"sim-{s.device_id}", protocol=self._protocol
            )
            client.username_pw_set(s.device_id, self._passwords.get(s.device_id))
            status = STATUS_TOPIC.format(device_id=s.device_id)
            client.will_set(status, "offline", qos=1, retain=True)

            def on_connect(c, _u, _f, rc, _p, status=status):
                if not rc.is_failure:
                    c.publish(status, "online", qos=1, retain=True)

            client.on_connect = on_connect
            client.connect_async(self._host, self._port, keepalive=30)
            client.loop_start()
            self._clients[s.device_id] = client
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = last = time.time()
        while not self._stop.wait(max(0.0, last + self._interval_s - time.time())):
            now = time.time()
            for s in self._sensors:
                payload = json.dumps(s.reading(now, now - started, now - last))
                self._clients[s.device_id].publish(TOPIC.format(device_id=s.device_id), payload, qos=1)
                self.published += 1
            last = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for device_id, client in self._clients.items():
            client.publish(STATUS_TOPIC.format(device_id=device_id), "offline", qos=1, retain=True)
            client.disconnect()
            client.loop_stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="origincast-simulate", description=__doc__)
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between readings")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = p.parse_args(argv)
    u = urlsplit(args.mqtt_url)
    fleet = Fleet(
        demo_fleet(),
        u.hostname or "127.0.0.1",
        u.port or 1883,
        interval_s=args.interval,
        protocol=args.protocol,
    )
    fleet.start()
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
