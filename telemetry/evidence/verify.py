"""What a verifier needs, with no access to the server: pure functions over a
checkpoint, leaves and proofs. The browser's verifier mirrors these.

Each check raises VerificationFailed naming what failed; ``walk_batch_chain`` reports
gaps instead of raising, because gaps are data to show, not an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from telemetry.evidence import merkle
from telemetry.evidence.canonical import (
    JSONValue,
    ReadingsBatch,
    RecordError,
    parse_record,
    readings_digest,
)
from telemetry.evidence.note import Checkpoint, NoteError, NoteVerifier, open_checkpoint


class VerificationFailed(ValueError):
    """A check that failed; ``what`` names the record or object (for "mismatch: …")."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


def verify_checkpoint(note: str | bytes, vkey: str, origin: str | None = None) -> Checkpoint:
    """The checkpoint if ``vkey`` (the log's public key, e.g. from the QR code) signed it."""
    try:
        verifier = NoteVerifier.from_vkey(vkey)
    except NoteError as exc:
        raise VerificationFailed("public key", str(exc)) from None
    try:
        cp, _ = open_checkpoint(note, verifier, origin)
    except NoteError as exc:
        raise VerificationFailed("checkpoint", str(exc)) from None
    return cp


def verify_leaf_inclusion(entry: bytes, index: int, proof: Sequence[bytes], checkpoint: Checkpoint) -> None:
    try:
        merkle.verify_inclusion(index, checkpoint.size, merkle.leaf_hash(entry), proof, checkpoint.root_hash)
    except merkle.ProofError as exc:
        raise VerificationFailed(f"leaf {index}", str(exc)) from None


def verify_checkpoint_consistency(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    if old.origin != new.origin:
        raise VerificationFailed("checkpoints", f"origins differ: {old.origin!r} and {new.origin!r}")
    try:
        merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    except merkle.ProofError as exc:
        raise VerificationFailed(f"checkpoints {old.size} → {new.size}", str(exc)) from None


def check_batch_readings(
    index: int, batch: ReadingsBatch, readings: Sequence[Mapping[str, JSONValue]]
) -> None:
    """The raw readings (``reading_record`` dicts) are exactly the ones the batch leaf
    commits to: count, time range, sequence range and digest."""
    what = f"readings batch {index} ({batch.device_id})"
    if len(readings) != batch.count:
        raise VerificationFailed(what, f"{len(readings)} readings, the log says {batch.count}")
    ts = [r["ts_us"] for r in readings]
    if min(ts) != batch.ts_first_us or max(ts) != batch.ts_last_us:
        raise VerificationFailed(what, "readings' time range differs from the log's")
    seqs = [r["seq"] for r in readings if r.get("seq") is not None]
    got_seq = (min(seqs), max(seqs)) if seqs else (None, None)
    if got_seq != (batch.seq_first, batch.seq_last):
        raise VerificationFailed(what, "readings' sequence range differs from the log's")
    if readings_digest(readings) != batch.readings_sha256:
        raise VerificationFailed(what, "readings differ from what the log recorded (SHA-256 mismatch)")


@dataclass(frozen=True, slots=True)
class Gap:
    """Something missing from a device's record. ``kind``:
    - ``missing_batch``: a batch leaf the chain points to was not provided;
    - ``seq_gap``: sequence numbers between two consecutive batches never arrived;
    - ``start_not_covered`` / ``end_not_covered``: the batches given do not reach the
      window's start or end (the device sent nothing then, or batches were withheld)."""

    kind: str
    detail: str
    after_index: int | None = None
    before_index: int | None = None
    missing_seq: tuple[int, int] | None = None  # inclusive range


@dataclass(slots=True)
class ChainReport:
    device_id: str
    batches: list[int] = field(default_factory=list)  # leaf indices, in chain order
    gaps: list[Gap] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # broken links: a mismatch, not a gap

    @property
    def ok(self) -> bool:
        return not self.errors


def walk_batch_chain(
    device_id: str,
    batches: Iterable[tuple[int, bytes]],
    window: tuple[int, int] | None = None,
) -> ChainReport:
    """Walk one device's chain of readings-batch leaves, given as (index, entry bytes)
    already proved included. Each batch's ``prev`` must name the batch before it, by
    index and leaf hash; a pointer to a leaf not given is a missing batch. With a
    ``window`` (start_us, end_us), the first and last batches must reach its edges,
    else the uncovered stretch is a gap (to know that nothing was withheld at the start,
    give the batch just before the window too)."""
    report = ChainReport(device_id)
    parsed: list[tuple[int, bytes, ReadingsBatch]] = []
    for index, entry in sorted(batches, key=lambda b: b[0]):
        try:
            record = parse_record(entry)
        except RecordError as exc:
            report.errors.append(f"leaf {index}: {exc}")
            continue
        if not isinstance(record, ReadingsBatch) or record.device_id != device_id:
            report.errors.append(f"leaf {index} is not a readings batch of {device_id}")
            continue
        parsed.append((index, merkle.leaf_hash(entry), record))
    previous: tuple[int, bytes, ReadingsBatch] | None = None
    for index, _h, batch in parsed:
        report.batches.append(index)
        prev = batch.prev
        if previous is None:
            if prev is not None and prev.index >= index:
                report.errors.append(f"leaf {index} points forward to leaf {prev.index}")
            previous = (index, _h, batch)
            continue
        p_index, p_hash, p_batch = previous
        if prev is None:
            report.errors.append(f"leaf {index} claims to be the device's first batch, after leaf {p_index}")
        elif prev.index == p_index:
            if prev.leaf_hash != p_hash:
                report.errors.append(f"leaf {index} points to leaf {p_index} with a different hash")
        elif prev.index > p_index and prev.index < index:
            # the pointer names the latest missing batch; more may hide behind it
            report.gaps.append(
                Gap(
                    "missing_batch",
                    f"batch leaf {prev.index} (and any before it, after leaf {p_index}) was not provided",
                    after_index=p_index,
                    before_index=index,
                )
            )
        else:
            report.errors.append(
                f"leaf {index} points to leaf {prev.index}, not to the previous batch {p_index}"
            )
        direct = prev is not None and prev.index == p_index
        # across a missing batch the missing sequence numbers are that batch's, not lost
        if direct and p_batch.seq_last is not None and batch.seq_first is not None:
            if batch.seq_first > p_batch.seq_last + 1:
                report.gaps.append(
                    Gap(
                        "seq_gap",
                        f"sequence numbers {p_batch.seq_last + 1}..{batch.seq_first - 1} never arrived",
                        after_index=p_index,
                        before_index=index,
                        missing_seq=(p_batch.seq_last + 1, batch.seq_first - 1),
                    )
                )
        previous = (index, _h, batch)
    if window is not None:
        start_us, end_us = window
        if not parsed:
            report.gaps.append(Gap("start_not_covered", "no batches in the window"))
        else:
            first, last = parsed[0][2], parsed[-1][2]
            if first.ts_first_us > start_us:
                report.gaps.append(
                    Gap(
                        "start_not_covered",
                        "the first batch starts after the window",
                        before_index=parsed[0][0],
                    )
                )
            if last.ts_last_us < end_us:
                report.gaps.append(
                    Gap("end_not_covered", "the last batch ends before the window", after_index=parsed[-1][0])
                )
    return report
