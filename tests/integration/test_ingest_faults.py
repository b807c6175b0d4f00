"""Nothing lost, nothing doubled: >65,535 QoS 1 messages through a crash of each part.

Each test publishes 72,000 single-reading messages from 8 publisher processes, breaks one
part mid-run, and then proves by count and by content that every reading is stored
exactly once, and that each is covered by exactly one sealed evidence leaf whose digest
its readings reproduce.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from tests.support.evidence import assert_every_reading_sealed
from tests.support.processes import IngesterProcess, start_publishers, wait_publishers, wait_until
from tests.support.publisher import expected_temp

pytestmark = pytest.mark.fault

DEVICES = [f"fault-{i}" for i in range(8)]
PER_DEVICE = 9_000  # 72,000 messages in all: more than 65,535
TOTAL = len(DEVICES) * PER_DEVICE
BASE_MS = 1_760_000_000_000


def stored_count(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
    except psycopg.OperationalError:
        return -1


def assert_exactly_once(url: str) -> None:
    with psycopg.connect(url) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM readings"
        ).fetchone()  # type: ignore[misc]
        assert total == TOTAL, f"stored {total} readings, published {TOTAL}"
        assert distinct == TOTAL
        rows = conn.execute(
            "SELECT device_id, seq, (extract(epoch FROM ts) * 1000)::bigint, temp_c FROM readings"
        ).fetchall()
    expected = {(d, s) for d in DEVICES for s in range(PER_DEVICE)}
    got = {(d, s) for d, s, _, _ in rows}
    assert got == expected, f"missing {len(expected - got)}, unexpected {len(got - expected)}"
    bad = [(d, s, ts, t) for d, s, ts, t in rows if ts != BASE_MS + s or t != expected_temp(s)]
    assert not bad, f"{len(bad)} readings differ from what was published, e.g. {bad[:3]}"


def open_batch_owners(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT owner FROM evidence_open_batches")]


def run_with_fault(db_url: str, mqtt_host: str, mqtt_port: int, fault, end: str = "stop") -> IngesterProcess:  # type: ignore[no-untyped-def]
    """Publish the run, break a part with ``fault`` mid-run, check every reading stored
    once; then end the ingester: "stop" (SIGTERM, which seals its open batches) or "kill"
    (kill -9 with its batches open, and an ingester started after it seals them at its
    first tick). Either way every stored reading is then in exactly one sealed leaf."""
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    ingester = IngesterProcess(db_url, f"mqtt://{mqtt_host}:{mqtt_port}", client_id)
    ingester.start()
    pubs = start_publishers(mqtt_host, mqtt_port, DEVICES, PER_DEVICE, BASE_MS)
    try:
        assert wait_until(lambda: stored_count(db_url) >= 15_000, 120), "ingest did not get going"
        ingester = fault(ingester) or ingester
        wait_publishers(pubs)
        ok = wait_until(lambda: stored_count(db_url) >= TOTAL, 180, step=0.5)
        assert ok, f"only {stored_count(db_url)} of {TOTAL} stored;\n" + "\n".join(ingester.log[-20:])
        time.sleep(1.0)  # a late duplicate would show up now
        assert_exactly_once(db_url)
        # what a writer that is gone left open was sealed by the live one: only its own remain
        assert wait_until(lambda: len(open_batch_owners(db_url)) <= 1, 60), open_batch_owners(db_url)
        if end == "kill":
            assert open_batch_owners(db_url), "the live ingester holds no open batch to leave behind"
            ingester.kill9()
            ingester = restarted(ingester)
            assert wait_until(lambda: not open_batch_owners(db_url), 60), "the batches left open stay open"
    finally:
        for p in pubs:
            if p.poll() is None:
                p.kill()
        code = ingester.stop()
    assert code == 0, "ingester did not shut down cleanly:\n" + "\n".join(ingester.log[-20:])
    assert_every_reading_sealed(db_url, TOTAL)
    return ingester


def restarted(ing: IngesterProcess) -> IngesterProcess:
    again = IngesterProcess(ing.env["ORIGINCAST_DATABASE_URL"], ing.env["ORIGINCAST_MQTT_URL"], ing.args[5])
    again.start()
    return again


def test_ingester_kill9_midrun(mosquitto, ts_url):
    """kill -9 mid-run, then again at the end with batches open: each restarted ingester
    seals what the killed one left from the stored rows (reconciled at its start)."""

    def kill_and_restart(ing: IngesterProcess) -> IngesterProcess:
        ing.kill9()
        time.sleep(1.0)
        return restarted(ing)

    run_with_fault(ts_url, mosquitto.host, mosquitto.port, kill_and_restart, end="kill")


def test_database_restart_midrun(mosquitto, timescale, ts_url):
    def restart_db(ing: IngesterProcess) -> None:
        timescale.crash_restart()
        return None

    ing = run_with_fault(ts_url, mosquitto.host, mosquitto.port, restart_db)
    assert any("database unavailable" in line for line in ing.log), "the restart was not noticed"


def test_broker_restart_midrun(mosquitto, pg_url):
    def restart_broker(ing: IngesterProcess) -> None:
        mosquitto.restart()
        return None

    ing = run_with_fault(pg_url, mosquitto.host, mosquitto.port, restart_broker)
    assert any("disconnected from broker" in line for line in ing.log), "the restart was not noticed"
