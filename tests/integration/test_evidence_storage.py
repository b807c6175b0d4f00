"""The evidence log on real storage, SQLite and PostgreSQL: appends inside the caller's
transaction, proofs that verify, tiles equal to recomputed hashes, a database that
refuses UPDATE and DELETE, and a reopened log that continues the same tree."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from telemetry.evidence import merkle
from telemetry.evidence.canonical import (
    AlertEvent,
    Correction,
    LeafRef,
    RecordError,
    parse_record,
    reading_record,
    readings_batch,
)
from telemetry.evidence.log import EvidenceLog, IntegrityError
from telemetry.evidence.note import Checkpoint, NoteSigner
from telemetry.evidence.storage import (
    EvidenceStorage,
    NotInTransaction,
    PostgresEvidenceStorage,
    SqliteEvidenceStorage,
)
from telemetry.evidence.tiles import TileHashSource, decode_entry_bundle, split_tile, tiles_for_size
from telemetry.evidence.verify import (
    check_batch_readings,
    verify_checkpoint,
    verify_checkpoint_consistency,
    verify_leaf_inclusion,
    walk_batch_chain,
)

T0 = 1_764_000_000_000_000


class Db:
    """One back end: how to connect, run a transaction, and which errors it raises."""

    def __init__(
        self, storage: EvidenceStorage, connect: Callable[[], Any], refused: type[Exception]
    ) -> None:
        self.storage = storage
        self.connect = connect
        self.refused = refused

    @contextmanager
    def tx(self, conn: Any) -> Iterator[Any]:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        else:
            with conn.transaction():
                yield conn


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        path = tmp_path / "evidence.db"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(path, isolation_level=None, timeout=10)

        d = Db(SqliteEvidenceStorage(), connect, sqlite3.DatabaseError)
    else:
        url = request.getfixturevalue("pg_url")

        def connect() -> psycopg.Connection:
            return psycopg.connect(url, autocommit=True)

        d = Db(PostgresEvidenceStorage(), connect, psycopg.errors.RestrictViolation)
    conn = d.connect()
    try:
        assert d.storage.migrate(conn) == ["0001_evidence_log"]
        assert d.storage.migrate(conn) == []  # applied once
    finally:
        conn.close()
    yield d


def _batch(device: str, start: int, n: int, seq0: int) -> tuple[list[dict], Any]:
    rows = [reading_record(T0 + (start + i) * 60_000_000, 4.0 + (i % 7) / 10, seq=seq0 + i) for i in range(n)]
    return rows, readings_batch(device, rows)


def test_append_prove_tile_and_reopen(db: Db) -> None:
    signer = NoteSigner.generate("trust.example/log")
    conn = db.connect()
    log = EvidenceLog(db.storage, signer)
    readings: dict[int, list[dict]] = {}
    entries: list[bytes] = []
    seq = {"truck-7": 0, "room-1": 1000}
    for step in range(300):
        records = []
        for device in ("truck-7", "room-1") if step % 3 else ("truck-7",):
            rows, batch = _batch(device, step * 5, 5, seq[device])
            seq[device] += 5
            records.append((rows, batch))
        if step % 50 == 7:
            records.append((None, AlertEvent(f"a-{step}", "excursion_high", "raised", T0 + step)))
        with db.tx(conn):
            indices = log.append(conn, [r for _, r in records])
        for (rows, _), i in zip(records, indices, strict=True):
            if rows is not None:
                readings[i] = rows
        assert indices == list(range(len(entries), len(entries) + len(records)))
        entries.extend(leaf.entry for leaf in log.leaves(conn, indices[0], indices[-1] + 1))
    size = len(entries)
    assert log.size(conn) == size
    tree = merkle.MemoryTree()
    for e in entries:
        tree.append(e)

    cp = log.checkpoint(conn)
    assert (cp.size, cp.root_hash) == (size, tree.root())
    checkpoint = verify_checkpoint(cp.note, signer.vkey)
    assert log.checkpoint(conn) == cp  # not grown: the same note again

    # inclusion proofs for every leaf (one batched fetch), against the signed checkpoint
    proofs = log.inclusion_proofs(conn, range(size), size)
    for i, entry in enumerate(entries):
        verify_leaf_inclusion(entry, i, proofs[i], checkpoint)
    assert log.inclusion_proof(conn, 17, 100) == merkle.inclusion_proof(tree, 17, 100)

    # each device's batches chain without gaps, and hash to their readings
    for device in seq:
        leaves = log.device_leaves(conn, device)
        report = walk_batch_chain(device, [(leaf.index, leaf.entry) for leaf in leaves])
        assert report.ok and report.gaps == [], report
        for leaf in leaves[:20]:
            check_batch_readings(leaf.index, parse_record(leaf.entry), readings[leaf.index])

    # tiles: equal to the recomputed tree's hashes, and enough to rebuild every proof
    for ref in tiles_for_size(size):
        assert ref.level is not None
        data = log.tile(conn, ref.level, ref.index, ref.width)
        assert data is not None
        want = tree.node_hashes([(8 * ref.level, ref.index * 256 + i) for i in range(ref.width)])
        assert split_tile(data) == list(want.values())
    assert log.tile(conn, 0, 0, 256) is not None and log.tile(conn, 0, size // 256 + 1, 1) is None
    bundle = log.entry_bundle(conn, 0, 256)
    assert bundle is not None and decode_entry_bundle(bundle) == entries[:256]
    source = TileHashSource(size, lambda lv, n, w: log.tile(conn, lv, n, w) or b"")
    assert merkle.root(source, size) == checkpoint.root_hash

    # a reopened log (a restart) continues the same tree; consistency proofs hold
    conn.close()
    conn = db.connect()
    again = EvidenceLog(db.storage, signer)
    with db.tx(conn):
        [i] = again.append(conn, [Correction(3, "sensor mislabelled", T0)])
    assert i == size
    cp2 = again.checkpoint(conn)
    new = verify_checkpoint(cp2.note, signer.vkey)
    for old in (1, 255, 256, size):
        verify_checkpoint_consistency(
            verify_checkpoint(again.checkpoint_at(conn, size).note, signer.vkey)
            if old == size
            else _cp(again, conn, old),
            new,
            again.consistency_proof(conn, old, size + 1),
        )
    # the reopened log's batch for truck-7 points at the batch the first log wrote
    rows, batch = _batch("truck-7", 10_000, 3, seq["truck-7"])
    with db.tx(conn):
        [j] = again.append(conn, [batch])
    chain = again.device_leaves(conn, "truck-7")
    assert chain[-1].index == j
    assert walk_batch_chain("truck-7", [(x.index, x.entry) for x in chain]).gaps == []
    conn.close()


def _cp(log: EvidenceLog, conn: Any, size: int) -> Checkpoint:
    return Checkpoint(log.origin or "", size, log.root(conn, size))


def test_the_database_refuses_update_and_delete(db: Db) -> None:
    signer = NoteSigner.generate("trust.example/log")
    conn = db.connect()
    log = EvidenceLog(db.storage, signer)
    with db.tx(conn):
        log.append(conn, [_batch("truck-7", i, 2, 2 * i)[1] for i in range(5)])
    log.checkpoint(conn)
    p = "?" if isinstance(db.storage, SqliteEvidenceStorage) else "%s"
    attempts = [
        (f"UPDATE evidence_leaves SET entry = {p} WHERE idx = 2", (b"{}",)),
        ("DELETE FROM evidence_leaves WHERE idx = 4", ()),
        ("DELETE FROM evidence_leaves", ()),
        (f"UPDATE evidence_nodes SET hash = {p} WHERE level = 1", (bytes(32),)),
        ("DELETE FROM evidence_nodes", ()),
        ("UPDATE evidence_checkpoints SET note = 'x'", ()),
        ("DELETE FROM evidence_checkpoints", ()),
        # a leaf that replaces or skips an index
        (
            f"INSERT {'OR REPLACE ' if p == '?' else ''}INTO evidence_leaves"
            f" (idx, leaf_hash, entry, kind, tree_root) VALUES (1, {p}, {p}, 'x', {p})",
            (bytes(32), b"{}", bytes(32)),
        ),
        (
            "INSERT INTO evidence_leaves (idx, leaf_hash, entry, kind, tree_root)"
            f" VALUES (9, {p}, {p}, 'x', {p})",
            (bytes(32), b"{}", bytes(32)),
        ),
    ]
    if p == "?":
        attempts.append(
            (f"INSERT OR REPLACE INTO evidence_nodes (level, idx, hash) VALUES (1, 0, {p})", (bytes(32),))
        )
    else:
        attempts += [("TRUNCATE evidence_leaves", ()), ("TRUNCATE evidence_nodes, evidence_checkpoints", ())]
        attempts.append(
            (
                "INSERT INTO evidence_nodes (level, idx, hash) VALUES (1, 0, %s)"
                " ON CONFLICT (level, idx) DO UPDATE SET hash = EXCLUDED.hash",
                (bytes(32),),
            )
        )
    before = log.leaves(conn, 0, 10)
    for sql, params in attempts:
        with pytest.raises(db.refused) as exc:
            with db.tx(conn):
                conn.execute(sql, params)
        assert "append-only" in str(exc.value) or "out of order" in str(exc.value), sql
    assert log.leaves(conn, 0, 10) == before
    assert log.checkpoint(conn, force=True).size == 5
    conn.close()


def test_append_needs_the_callers_transaction_and_survives_its_rollback(db: Db) -> None:
    conn = db.connect()
    log = EvidenceLog(db.storage, NoteSigner.generate("trust.example/log"))
    with pytest.raises(NotInTransaction):
        log.append(conn, [_batch("d", 0, 1, 0)[1]])
    with db.tx(conn):
        log.append(conn, [_batch("d", 0, 1, 0)[1], _batch("d", 1, 1, 1)[1]])

    class Boom(Exception):
        pass

    # the caller's transaction fails after the append: the leaves vanish with it
    with pytest.raises(Boom), db.tx(conn):
        assert log.append(conn, [_batch("d", 2, 1, 2)[1]]) == [2]
        raise Boom
    assert log.size(conn) == 2
    # the next append notices and continues from what was committed
    with db.tx(conn):
        assert log.append(conn, [_batch("d", 3, 1, 3)[1]]) == [2]
    leaves = log.device_leaves(conn, "d")
    report = walk_batch_chain("d", [(x.index, x.entry) for x in leaves])
    assert report.ok and [g.kind for g in report.gaps] == ["seq_gap"]  # seq 2 was rolled back
    # a second writer (another process) appends in between: the first one follows
    other = EvidenceLog(db.storage)
    with db.tx(conn):
        other.append(conn, [_batch("d", 4, 1, 4)[1]])
    with db.tx(conn):
        assert log.append(conn, [_batch("d", 5, 1, 5)[1]]) == [4]
    leaves = log.device_leaves(conn, "d")
    assert walk_batch_chain("d", [(x.index, x.entry) for x in leaves]).ok
    tree = merkle.MemoryTree(x.leaf_hash for x in log.leaves(conn, 0, 5))
    assert log.root(conn, 5) == tree.root()
    # records the log cannot take leave nothing behind
    with pytest.raises(RecordError), db.tx(conn):
        log.append(conn, [Correction(99, "no such leaf", T0)])
    with pytest.raises(RecordError), db.tx(conn):
        log.append(conn, [_batch("d", 6, 1, 6)[1].with_prev(LeafRef(0, bytes(32)))])
    assert log.size(conn) == 5
    conn.close()


def test_tampering_behind_the_logs_back_stops_the_signing(db: Db) -> None:
    """Someone with the database's owner rights drops a trigger and rewrites a leaf
    consistently (entry, hash, nodes above it, stored roots): the next checkpoint is
    refused, because it would be inconsistent with the one already signed."""
    signer = NoteSigner.generate("trust.example/log")
    conn = db.connect()
    log = EvidenceLog(db.storage, signer)
    with db.tx(conn):
        log.append(conn, [_batch("d", i, 1, i)[1] for i in range(4)])
    log.checkpoint(conn)
    forged = merkle.MemoryTree()
    rows = log.leaves(conn, 0, 4)
    fake_entry = rows[1].entry.replace(b'"count":1', b'"count":2')
    for k, r in enumerate(rows):
        forged.append(fake_entry if k == 1 else r.entry)
    p = "?" if isinstance(db.storage, SqliteEvidenceStorage) else "%s"
    with db.tx(conn):
        if p == "?":
            conn.execute("DROP TRIGGER evidence_leaves_no_update")
            conn.execute("DROP TRIGGER evidence_nodes_no_update")
        else:
            conn.execute("ALTER TABLE evidence_leaves DISABLE TRIGGER evidence_leaves_append_only")
            conn.execute("ALTER TABLE evidence_nodes DISABLE TRIGGER evidence_nodes_append_only")
        for k in range(1, 4):
            conn.execute(
                f"UPDATE evidence_leaves SET entry = {p}, leaf_hash = {p}, tree_root = {p} WHERE idx = {p}",
                (
                    fake_entry if k == 1 else rows[k].entry,
                    forged.node_hashes([(0, k)])[(0, k)],
                    forged.root(k + 1),
                    k,
                ),
            )
        for level, idx in [(1, 0), (2, 0)]:
            conn.execute(
                f"UPDATE evidence_nodes SET hash = {p} WHERE level = {p} AND idx = {p}",
                (forged.node_hashes([(level, idx)])[(level, idx)], level, idx),
            )
    with db.tx(conn):
        log.append(conn, [_batch("d", 9, 1, 9)[1]])
    with pytest.raises(IntegrityError, match="not consistent"):
        log.checkpoint(conn)
    conn.close()


def test_append_costs_well_under_a_millisecond_of_cpu(db: Db) -> None:
    """One leaf per committed batch at ingest rates: the log's own CPU per append (the
    best of three rounds, so other load on the machine does not decide the figure)."""
    conn = db.connect()
    log = EvidenceLog(db.storage)
    batches = [_batch(f"dev-{i % 20}", i, 10, i * 10)[1] for i in range(320)]
    with db.tx(conn):
        log.append(conn, batches[:20])  # warm: every device has a previous batch
    rounds = []
    for r in range(3):
        spent = 0.0
        for batch in batches[20 + r * 100 : 120 + r * 100]:
            with db.tx(conn):
                t = time.process_time()
                log.append(conn, [batch])
                spent += time.process_time() - t
        rounds.append(spent / 100 * 1000)
    print(f"{db.storage.dialect}: {min(rounds):.3f} ms CPU per one-leaf append (rounds {rounds})")
    assert min(rounds) < 1.0
    assert log.size(conn) == 320
    conn.close()
