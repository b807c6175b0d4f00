#!/usr/bin/env python3
"""The baseline bench/ingest.py compares against: the ingester most tutorials write.

paho-mqtt 2.x with automatic acknowledgements (paho sends the PUBACK as soon as
``on_message`` returns), and in ``on_message`` one ``INSERT … ON CONFLICT DO NOTHING``
per reading on an autocommit connection: one transaction, one commit and one WAL flush
per reading. It accepts the same payloads the bench sends (a reading object or an
array of them, ``ts`` as epoch ms or RFC 3339) and validates nothing else.

    python bench/naive_ingest.py --port 1883 --database-url postgresql://…/db

The database must already be migrated (``python -m web migrate``). Prints
"subscribed to …" once the broker has granted the subscription; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

TOPIC = "origincast/+/telemetry"
INSERT = (
    "INSERT INTO readings (device_id, ts, temp_c, rh, battery_v, door_open, seq)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


def parse_ts(value: object) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000.0, UTC)
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError(f"bad ts {value!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--client-id", default="naive-ingest")
    args = ap.parse_args()

    conn = psycopg.connect(args.database_url, autocommit=True)
    cur = conn.cursor()

    def on_connect(client, userdata, flags, reason, properties):  # type: ignore[no-untyped-def]
        client.subscribe(TOPIC, qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):  # type: ignore[no-untyped-def]
        print(f"subscribed to {TOPIC}", flush=True)

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        try:
            device = msg.topic.split("/")[1]
            data = json.loads(msg.payload)
            for item in data if isinstance(data, list) else [data]:
                cur.execute(
                    INSERT,
                    (
                        device,
                        parse_ts(item["ts"]),
                        item["temp_c"],
                        item.get("rh"),
                        item.get("battery_v"),
                        item.get("door_open"),
                        item.get("seq"),
                    ),
                )
        except (ValueError, KeyError, TypeError) as exc:
            print(f"dropped a message on {msg.topic}: {exc}", file=sys.stderr, flush=True)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311, clean_session=True
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    signal.signal(signal.SIGINT, lambda *_: client.disconnect())
    client.connect(args.host, args.port, keepalive=30)
    client.loop_forever()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
