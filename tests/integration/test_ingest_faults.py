"""Nothing lost, nothing doubled: >65,535 QoS 1 messages through a crash of each part.

Each test publishes 72,000 single-reading messages from 8 publisher processes, breaks one
part mid-run, and then proves by count and by content that every reading is stored
exactly once.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from telemetry.evidence.canonical import parse_record, reading_record, readings_digest
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


def assert_covered_by_the_log(url: str) -> None:
    """Every stored reading is covered by exactly one readings_batch leaf whose digest its
    readings reproduce: the leaves are written in the readings' own transaction, so a
    crash can lose neither without the other."""
    with psycopg.connect(url) as conn:
        uncovered = conn.execute("SELECT count(*) FROM readings WHERE evidence_leaf IS NULL").fetchone()[0]  # type: ignore[index]
        assert uncovered == 0, f"{uncovered} stored readings have no evidence leaf"
        leaves = conn.execute(
            "SELECT idx, entry FROM evidence_leaves WHERE kind = 'readings_batch'"
        ).fetchall()
        rows = conn.execute(
            "SELECT evidence_leaf, (extract(epoch FROM ts) * 1000000)::bigint, temp_c, rh, battery_v,"
            " door_open, seq FROM readings"
        ).fetchall()
    by_leaf: dict[int, list] = {}
    for leaf, *values in rows:
        by_leaf.setdefault(leaf, []).append(reading_record(*values))
    records = {idx: parse_record(bytes(entry)) for idx, entry in leaves}
    assert sum(r.count for r in records.values()) == TOTAL
    assert set(by_leaf) == set(records), "readings point at leaves that are not readings batches"
    for idx, record in records.items():
        assert readings_digest(by_leaf[idx]) == record.readings_sha256, (
            f"leaf {idx} does not match its readings"
        )


def run_with_fault(db_url: str, mqtt_host: str, mqtt_port: int, fault) -> IngesterProcess:  # type: ignore[no-untyped-def]
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
        assert_covered_by_the_log(db_url)
    finally:
        for p in pubs:
            if p.poll() is None:
                p.kill()
        code = ingester.stop()
    assert code == 0, "ingester did not shut down cleanly:\n" + "\n".join(ingester.log[-20:])
    return ingester


def test_ingester_kill9_midrun(mosquitto, ts_url):
    def kill_and_restart(ing: IngesterProcess) -> IngesterProcess:
        ing.kill9()
        time.sleep(1.0)
        again = IngesterProcess(
            ing.env["ORIGINCAST_DATABASE_URL"], ing.env["ORIGINCAST_MQTT_URL"], ing.args[5]
        )
        again.start()
        return again

    run_with_fault(ts_url, mosquitto.host, mosquitto.port, kill_and_restart)


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
