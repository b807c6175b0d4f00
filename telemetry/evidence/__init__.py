"""The evidence log: an append-only transparency log of origincast's records.

RFC 6962 Merkle hashing over RFC 8785 canonical JSON leaves, served as C2SP tlog-tiles,
with C2SP signed-note checkpoints (Ed25519). Self-contained: it imports nothing else of
origincast (an import contract checks it); the ingest path and ``web`` call it.
"""

from telemetry.evidence.canonical import (
    AlertEvent,
    Correction,
    LeafRef,
    MediaManifest,
    ReadingsBatch,
    RecordError,
    ShipmentClosed,
    ShipmentOpened,
    TestReport,
    canonical,
    parse_record,
    reading_record,
    readings_batch,
)
from telemetry.evidence.keys import KeyFileError, init_key, load_key
from telemetry.evidence.log import EvidenceLog, IntegrityError, SignedCheckpoint
from telemetry.evidence.note import Checkpoint, NoteSigner, NoteVerifier
from telemetry.evidence.storage import (
    NotInTransaction,
    PostgresEvidenceStorage,
    SqliteEvidenceStorage,
    storage_for,
)

__all__ = [
    "AlertEvent",
    "Checkpoint",
    "Correction",
    "EvidenceLog",
    "IntegrityError",
    "KeyFileError",
    "LeafRef",
    "MediaManifest",
    "NotInTransaction",
    "NoteSigner",
    "NoteVerifier",
    "PostgresEvidenceStorage",
    "ReadingsBatch",
    "RecordError",
    "ShipmentClosed",
    "ShipmentOpened",
    "SignedCheckpoint",
    "SqliteEvidenceStorage",
    "TestReport",
    "canonical",
    "init_key",
    "load_key",
    "parse_record",
    "reading_record",
    "readings_batch",
    "storage_for",
]
