"""The ingester against a real broker and real databases, in-process, counting."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import replace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from telemetry.ingest import Ingester
from telemetry.metrics import IngestMetrics
from telemetry.settings import IngestSettings, MqttSettings, StorageSettings
from telemetry.storage import Store, open_store
from tests.support.processes import wait_until

BASE_MS = 1_760_000_000_000


def publish_all(host: str, port: int, messages: list[tuple[str, bytes]], protocol: int = mqtt.MQTTv5) -> None:
    """Publish QoS 1 and return once the broker acknowledged every message."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=protocol
    )
    client.max_inflight_messages_set(500)
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()
    client.disconnect()
    client.loop_stop()


def make_ingester(host: str, port: int, store: Store, **overrides: object) -> tuple[Ingester, IngestMetrics]:
    settings = IngestSettings(
        mqtt=MqttSettings(host=host, port=port, protocol=str(overrides.pop("protocol", "5"))),
        client_id=f"ingest-{uuid.uuid4().hex[:8]}",
    )
    settings = replace(settings, **overrides)  # type: ignore[arg-type]
    metrics = IngestMetrics(CollectorRegistry())
    return Ingester(settings, store, metrics), metrics


@pytest.fixture
def store(db_url: str):
    s = open_store(StorageSettings(url=db_url))
    s.open()
    s.migrate()
    yield s
    s.close()


def reading(seq: int, **extra: object) -> bytes:
    return json.dumps({"ts": BASE_MS + seq, "temp_c": 2.5, "seq": seq, **extra}).encode()


def test_stores_accepts_and_records_rejections(mosquitto, store):
    ingester, metrics = make_ingester(mosquitto.host, mosquitto.port, store)
    ingester.start()
    try:
        assert wait_until(lambda: ingester.status().broker_connected, 10)
        good = [(f"origincast/dev-{i % 3}/telemetry", reading(i)) for i in range(300)]
        bad = [
            ("origincast/dev-x/telemetry", b"{not json"),
            ("origincast/dev-x/telemetry", json.dumps({"ts": BASE_MS, "temp_c": 999}).encode()),
            ("origincast/dev-x/telemetry", json.dumps({"temp_c": 1.0}).encode()),
            ("origincast/dev-x/telemetry", b"\xff\xfe" * 50),
            ("origincast/dev-x/telemetry", b"[" * 100_000),
            ("origincast/dev-x/telemetry", b"x" * 300_000),
        ]
        batch = json.dumps([{"ts": BASE_MS + 10_000 + k, "temp_c": -18.0} for k in range(100)]).encode()
        publish_all(
            mosquitto.host,
            mosquitto.port,
            [*good[:150], *bad, ("origincast/dev-b/telemetry", batch), *good[150:]],
        )
        assert wait_until(lambda: store.count_readings() == 400, 20), store.count_readings()
        assert wait_until(lambda: len(store.recent_rejections()) == len(bad), 10)
        reasons = sorted(r.reason for r in store.recent_rejections())
        assert reasons == sorted(
            ["malformed_json", "temp_out_of_range", "missing_ts", "not_utf8", "malformed_json", "oversized"]
        )
        assert all(r.topic == "origincast/dev-x/telemetry" and r.detail for r in store.recent_rejections())
        assert store.count_readings("dev-b") == 100
        total_rejected = sum(
            s.value for m in metrics.rejected.collect() for s in m.samples if s.name.endswith("_total")
        )
        assert total_rejected == len(bad)
        assert metrics.stored._value.get() == 400  # type: ignore[attr-defined]
    finally:
        ingester.stop()


def test_redelivery_is_a_no_op(mosquitto, store):
    ingester, metrics = make_ingester(mosquitto.host, mosquitto.port, store)
    ingester.start()
    try:
        assert wait_until(lambda: ingester.status().broker_connected, 10)
        msgs = [("origincast/dup/telemetry", reading(i)) for i in range(200)]
        publish_all(mosquitto.host, mosquitto.port, msgs)
        assert wait_until(lambda: store.count_readings("dup") == 200, 20)
        publish_all(mosquitto.host, mosquitto.port, msgs[50:150])  # a logger re-sending
        assert wait_until(lambda: metrics.duplicates._value.get() == 100, 20)  # type: ignore[attr-defined]
        assert store.count_readings("dup") == 200
    finally:
        ingester.stop()


def test_stop_flushes_and_session_keeps_the_rest(mosquitto, pg_url):
    """A clean stop commits what it took; what arrives while it is down waits in the
    persistent session and is stored after the restart, once."""
    s = open_store(StorageSettings(url=pg_url))
    s.open()
    s.migrate()
    try:
        # A long batch delay: the stop, not the timer, must flush the batch.
        ingester, _ = make_ingester(mosquitto.host, mosquitto.port, s, batch_max_delay_s=30.0)
        client_id = ingester._settings.client_id
        ingester.start()
        assert wait_until(lambda: ingester.status().broker_connected, 10)
        publish_all(
            mosquitto.host, mosquitto.port, [("origincast/flush/telemetry", reading(i)) for i in range(100)]
        )
        assert wait_until(lambda: ingester.status().pending_messages == 100, 10)
        assert s.count_readings("flush") == 0
        ingester.stop()
        assert s.count_readings("flush") == 100
        publish_all(
            mosquitto.host,
            mosquitto.port,
            [("origincast/flush/telemetry", reading(i)) for i in range(100, 250)],
        )
        again, _ = make_ingester(mosquitto.host, mosquitto.port, s, client_id=client_id)
        again.start()
        try:
            assert wait_until(lambda: s.count_readings("flush") == 250, 20), s.count_readings("flush")
        finally:
            again.stop()
    finally:
        s.close()


def test_shared_subscription_splits_the_load(mosquitto, pg_url):
    s = open_store(StorageSettings(url=pg_url))
    s.open()
    s.migrate()
    group = f"g{uuid.uuid4().hex[:6]}"
    a, ma = make_ingester(mosquitto.host, mosquitto.port, s, shared_group=group)
    b, mb = make_ingester(mosquitto.host, mosquitto.port, s, shared_group=group)
    a.start()
    b.start()
    try:
        assert wait_until(lambda: a.status().broker_connected and b.status().broker_connected, 10)
        assert a.topic_filter.startswith(f"$share/{group}/")
        publish_all(
            mosquitto.host,
            mosquitto.port,
            [(f"origincast/sh-{i % 4}/telemetry", reading(i)) for i in range(2000)],
        )
        assert wait_until(lambda: s.count_readings() == 2000, 30), s.count_readings()
        got_a = ma.messages._value.get()  # type: ignore[attr-defined]
        got_b = mb.messages._value.get()  # type: ignore[attr-defined]
        assert got_a + got_b == 2000
        assert got_a > 0 and got_b > 0, (got_a, got_b)
    finally:
        a.stop()
        b.stop()
        s.close()


async def test_embedded_broker_with_mqtt311(sqlite_url):
    """The demo's path: amqtt speaks MQTT 3.1.1 only, and the ingester falls back to it."""
    from web.embedded_broker import EmbeddedBroker

    broker = EmbeddedBroker()
    await broker.start()
    s = open_store(StorageSettings(url=sqlite_url))
    s.open()
    s.migrate()
    ingester, _ = make_ingester(broker.host, broker.port, s, protocol="3.1.1")
    try:
        await asyncio.to_thread(ingester.start)
        await asyncio.to_thread(wait_until, lambda: ingester.status().broker_connected, 10)
        msgs = [("origincast/emb/telemetry", reading(i)) for i in range(50)]
        await asyncio.to_thread(publish_all, broker.host, broker.port, msgs, mqtt.MQTTv311)
        ok = await asyncio.to_thread(wait_until, lambda: s.count_readings("emb") == 50, 20)
        assert ok, s.count_readings("emb")
    finally:
        await asyncio.to_thread(ingester.stop)
        s.close()
        await broker.stop()


def test_database_down_holds_acks_and_bounds_memory(mosquitto, postgres, pg_url):
    """While the database is down nothing is acknowledged and at most Receive Maximum
    messages are in our memory; when it is back, all are stored once."""
    s = open_store(StorageSettings(url=pg_url))
    s.open()
    s.migrate()
    ingester, _ = make_ingester(mosquitto.host, mosquitto.port, s, receive_maximum=200, batch_max_rows=50)
    ingester.start()
    stop_event = threading.Event()
    try:
        assert wait_until(lambda: ingester.status().broker_connected, 10)
        postgres.stop()
        publish_all(
            mosquitto.host, mosquitto.port, [("origincast/down/telemetry", reading(i)) for i in range(1000)]
        )
        assert wait_until(lambda: not ingester.status().database_ok, 15)
        peak = 0
        for _ in range(20):
            peak = max(peak, ingester.status().unacked_messages)
            stop_event.wait(0.1)
        # The broker holds the other 800 for our session.
        assert 0 < peak <= 200, f"{peak} messages held with Receive Maximum 200"
        postgres.start()
        assert wait_until(lambda: s.count_readings("down") == 1000, 60), s.count_readings("down")
        assert ingester.status().database_ok
    finally:
        if not postgres.running:
            postgres.start()
        ingester.stop()
        s.close()
