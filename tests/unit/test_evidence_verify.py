"""A verifier's pure checks: checkpoint, inclusion, readings against their batch, and a
device's batch chain with its gaps named."""

from __future__ import annotations

import pytest

from telemetry.evidence import merkle
from telemetry.evidence.canonical import (
    AlertEvent,
    LeafRef,
    canonical,
    parse_record,
    reading_record,
    readings_batch,
)
from telemetry.evidence.note import Checkpoint, NoteSigner, sign_checkpoint
from telemetry.evidence.verify import (
    VerificationFailed,
    check_batch_readings,
    verify_checkpoint,
    verify_checkpoint_consistency,
    verify_leaf_inclusion,
    walk_batch_chain,
)

T0 = 1_764_000_000_000_000
MIN = 60_000_000


def _chain(n: int, device: str = "truck-7") -> tuple[list[tuple[int, bytes]], list[list[dict]]]:
    """n batches of 3 readings, each pointing at the previous, interleaved with alerts."""
    out, readings, prev = [], [], None
    index = 0
    for b in range(n):
        rows = [reading_record(T0 + (3 * b + i) * MIN, 4.0, seq=3 * b + i) for i in range(3)]
        entry = canonical(readings_batch(device, rows).with_prev(prev))
        out.append((index, entry))
        readings.append(rows)
        prev = LeafRef(index, merkle.leaf_hash(entry))
        index += 2  # an alert leaf sits between batches
    return out, readings


def test_an_intact_chain_has_no_gaps() -> None:
    chain, _ = _chain(6)
    report = walk_batch_chain("truck-7", chain, window=(T0, T0 + 17 * MIN))
    assert report.ok and report.gaps == [] and report.batches == [0, 2, 4, 6, 8, 10]


def test_a_withheld_batch_is_a_named_gap() -> None:
    chain, _ = _chain(6)
    report = walk_batch_chain("truck-7", chain[:2] + chain[3:])
    assert report.ok
    assert [(g.kind, g.after_index, g.before_index) for g in report.gaps] == [("missing_batch", 2, 6)]
    assert "leaf 4" in report.gaps[0].detail


def test_lost_sequence_numbers_and_uncovered_window_edges_are_gaps() -> None:
    rows_a = [reading_record(T0 + i * MIN, 4.0, seq=i) for i in range(3)]
    a = canonical(readings_batch("d", rows_a))
    rows_b = [reading_record(T0 + (10 + i) * MIN, 4.0, seq=10 + i) for i in range(3)]
    b = canonical(readings_batch("d", rows_b).with_prev(LeafRef(0, merkle.leaf_hash(a))))
    report = walk_batch_chain("d", [(0, a), (1, b)], window=(T0 - MIN, T0 + 20 * MIN))
    assert report.ok
    kinds = {g.kind: g for g in report.gaps}
    assert kinds["seq_gap"].missing_seq == (3, 9)
    assert set(kinds) == {"seq_gap", "start_not_covered", "end_not_covered"}


def test_broken_links_are_errors_not_gaps() -> None:
    chain, _ = _chain(3)
    forged_prev = canonical(
        readings_batch("truck-7", [reading_record(T0 + 99 * MIN, 4.0, seq=99)]).with_prev(
            LeafRef(2, bytes(32))
        )
    )
    report = walk_batch_chain("truck-7", [*chain[:2], (4, forged_prev)])
    assert not report.ok and "different hash" in report.errors[0]
    other = canonical(AlertEvent("a", "k", "raised", T0))
    assert not walk_batch_chain("truck-7", [(0, other)]).ok
    assert not walk_batch_chain("room-1", chain).ok  # another device's batches
    first_again = canonical(readings_batch("truck-7", [reading_record(T0 + 50 * MIN, 4.0, seq=50)]))
    assert not walk_batch_chain("truck-7", [*chain, (20, first_again)]).ok


def test_readings_must_be_exactly_what_the_batch_committed() -> None:
    chain, readings = _chain(2)
    batch = parse_record(chain[1][1])
    rows = readings[1]
    check_batch_readings(2, batch, rows)
    check_batch_readings(2, batch, list(reversed(rows)))
    tampered = [*rows[:2], reading_record(rows[2]["ts_us"], 4.5, seq=rows[2]["seq"])]
    for bad in (rows[:2], tampered, [*rows[:2], reading_record(rows[2]["ts_us"] + 1, 4.0, seq=5)]):
        with pytest.raises(VerificationFailed) as exc:
            check_batch_readings(2, batch, bad)
        assert exc.value.what == "readings batch 2 (truck-7)"


def test_checkpoint_inclusion_and_consistency_checks_name_what_failed() -> None:
    signer = NoteSigner.generate("trust.example/log")
    chain, _ = _chain(5)
    entries = [e for _, e in chain]
    tree = merkle.MemoryTree()
    for e in entries:
        tree.append(e)
    note = sign_checkpoint(Checkpoint(signer.name, 5, tree.root()), signer)
    cp = verify_checkpoint(note, signer.vkey)
    for i, e in enumerate(entries):
        verify_leaf_inclusion(e, i, merkle.inclusion_proof(tree, i, 5), cp)
    with pytest.raises(VerificationFailed) as exc:
        verify_leaf_inclusion(entries[1] + b" ", 1, merkle.inclusion_proof(tree, 1, 5), cp)
    assert exc.value.what == "leaf 1"
    with pytest.raises(VerificationFailed) as exc:
        verify_checkpoint(note, NoteSigner.generate("trust.example/log").vkey)
    assert exc.value.what == "checkpoint"
    with pytest.raises(VerificationFailed):
        verify_checkpoint(note, "not a key")
    old = Checkpoint(signer.name, 2, tree.root(2))
    verify_checkpoint_consistency(old, cp, merkle.consistency_proof(tree, 2, 5))
    with pytest.raises(VerificationFailed):
        verify_checkpoint_consistency(
            Checkpoint(signer.name, 2, tree.root(3)), cp, merkle.consistency_proof(tree, 2, 5)
        )
