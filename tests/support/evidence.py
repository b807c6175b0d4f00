"""Checks of the evidence log's coverage of stored readings, shared by the tests."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import datetime
from typing import Any

import psycopg

from telemetry.evidence.canonical import parse_record, reading_record, readings_digest
from telemetry.evidence.merkle import leaf_hash, verify_inclusion
from telemetry.storage.evidence_batches import ts_us


def log_leaves(store: Any) -> list:
    with store.evidence_connection() as conn:
        size = store.evidence.size(conn)
        return store.evidence.leaves(conn, 0, size)


def batch_leaves(store: Any) -> list:
    """(index, record) of every readings_batch leaf."""
    out = []
    for leaf in log_leaves(store):
        record = parse_record(leaf.entry)
        if record.kind == "readings_batch":
            out.append((leaf.index, record))
    return out


def check_coverage(store: Any, expected_count: int) -> None:
    """Through the store's own reads, as a verifier gets them: each batch leaf's readings
    hash to its digest; together they are every stored reading, each exactly once; every
    leaf is in the tree."""
    covered: Counter[tuple[str, datetime]] = Counter()
    stored = log_leaves(store)
    with store.evidence_connection() as conn:
        size = store.evidence.size(conn)
        root = store.evidence.root(conn, size)
        proofs = store.evidence.inclusion_proofs(conn, range(size), size)
    for leaf in stored:
        verify_inclusion(leaf.index, size, leaf_hash(leaf.entry), proofs[leaf.index], root)
        record = parse_record(leaf.entry)
        if record.kind != "readings_batch":
            continue
        got = store.readings_of_leaf(record.device_id, leaf.index, record.ts_first_us, record.ts_last_us)
        assert len(got) == record.count, (leaf.index, len(got), record.count)
        digest = readings_digest(
            [reading_record(ts_us(r.ts), r.temp_c, r.rh, r.battery_v, r.door_open, r.seq) for r in got]
        )
        assert digest == record.readings_sha256, f"leaf {leaf.index}: stored readings do not match"
        covered.update((r.device_id, r.ts) for r in got)
    assert sum(covered.values()) == expected_count == store.count_readings()
    assert all(n == 1 for n in covered.values())


def assert_every_reading_sealed(url: str, expected_count: int) -> None:
    """Straight from the tables, bypassing the store: every stored reading's batch is
    mapped to exactly one readings_batch leaf of its device, whose count and digest its
    batch's rows reproduce; no batch is left open."""
    if url.startswith("sqlite:"):
        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
        ts_sql = "r.ts"
    else:
        conn = psycopg.connect(url, autocommit=True)
        ts_sql = "(extract(epoch FROM r.ts) * 1000000)::bigint"
    try:
        unmapped = conn.execute(
            "SELECT count(*) FROM readings r LEFT JOIN evidence_batch_leaves m"
            " ON m.batch_id = r.evidence_batch WHERE m.batch_id IS NULL"
        ).fetchone()[0]
        assert unmapped == 0, f"{unmapped} stored readings are in no sealed batch"
        still_open = conn.execute("SELECT count(*) FROM evidence_open_batches").fetchone()[0]
        assert still_open == 0, f"{still_open} batches are still open"
        leaves = {
            int(i): parse_record(bytes(e))
            for i, e in conn.execute("SELECT idx, entry FROM evidence_leaves WHERE kind = 'readings_batch'")
        }
        rows = conn.execute(
            f"SELECT m.leaf_idx, r.device_id, {ts_sql}, r.temp_c, r.rh, r.battery_v, r.door_open, r.seq"
            " FROM readings r JOIN evidence_batch_leaves m ON m.batch_id = r.evidence_batch"
        ).fetchall()
    finally:
        conn.close()
    by_leaf: dict[int, list] = {}
    for leaf, device, ts, temp, rh, bv, door, seq in rows:
        assert leaves[leaf].device_id == device, f"leaf {leaf} is not {device}'s"
        door = None if door is None else bool(door)
        by_leaf.setdefault(int(leaf), []).append(reading_record(int(ts), temp, rh, bv, door, seq))
    assert len(rows) == expected_count
    assert set(by_leaf) == set(leaves), "readings_batch leaves without readings, or readings of other leaves"
    assert sum(r.count for r in leaves.values()) == expected_count
    for idx, record in leaves.items():
        assert len(by_leaf[idx]) == record.count, (
            f"leaf {idx}: {len(by_leaf[idx])} rows, {record.count} hashed"
        )
        assert readings_digest(by_leaf[idx]) == record.readings_sha256, (
            f"leaf {idx} does not match its readings"
        )
