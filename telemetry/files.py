"""Test reports (检测报告) and origin photos (溯源相册) of a product batch.

A file is known by its SHA-256. The bytes live on disk, content-addressed
(``<dir>/<first two hex>/<sha256>``), not in the database: photos and PDFs of many
megabytes would swell every database backup and every replica, while a file named by
its own hash can never be overwritten with other bytes, is written once however often
it is uploaded, and is checked by anyone who downloads it. The database keeps a row per
upload (which batch, which shipment, what kind, who) in the same transaction as the
evidence leaf that fingerprints the file (``test_report`` or ``media_manifest``).

An upload is streamed to a temporary file in the same directory while it is hashed and
its size counted, its type is taken from its first bytes (never from what the client
declares), and only a complete, accepted file is renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from telemetry.readings import PLAIN_ID

PDF, JPEG, PNG = "application/pdf", "image/jpeg", "image/png"
# The first bytes of each accepted format (its "magic"), longest first.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"%PDF-", PDF),
    (b"\xff\xd8\xff", JPEG),
)
MAGIC_BYTES = 8  # enough to tell the formats above apart
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BATCH_RE = PLAIN_ID
MAX_NAME = 200


class FileKind(StrEnum):
    TEST_REPORT = "test_report"  # a lab's report: PDF, or a scan as JPEG/PNG
    PHOTO = "photo"  # an origin photo: JPEG or PNG

    @property
    def accepted(self) -> frozenset[str]:
        return frozenset({PDF, JPEG, PNG}) if self is FileKind.TEST_REPORT else frozenset({JPEG, PNG})

    @property
    def leaf_kind(self) -> str:
        return "test_report" if self is FileKind.TEST_REPORT else "media_manifest"


@dataclass(frozen=True, slots=True)
class FilesSettings:
    directory: str = "origincast-files"
    max_bytes: int = 20 * 1024 * 1024


class FileRejected(ValueError):
    """An upload refused; ``status`` is the HTTP status that says why (400, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff(head: bytes) -> str | None:
    """The content type the bytes really are (of those we accept), or None."""
    for magic, content_type in _MAGIC:
        if head.startswith(magic):
            return content_type
    return None


def clean_name(name: str | None, content_type: str) -> str:
    """A file name fit to show and to put in a Content-Disposition header: the base name,
    no control characters or quotes, at most MAX_NAME characters; a default when empty."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable() and c not in '"<>').strip()[:MAX_NAME]
    if not base:
        base = {PDF: "report.pdf", JPEG: "photo.jpg", PNG: "photo.png"}[content_type]
    return base


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One upload's row: which batch (and shipment) a file belongs to, and its leaf."""

    id: int
    product_batch: str
    shipment_id: str | None
    kind: FileKind
    sha256: str
    size: int
    content_type: str
    name: str
    uploaded_at: datetime
    uploaded_by: str | None
    evidence_leaf: int

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "product_batch": self.product_batch,
            "shipment_id": self.shipment_id,
            "kind": self.kind.value,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "name": self.name,
            "uploaded_at": self.uploaded_at.isoformat().replace("+00:00", "Z"),
            "evidence_leaf": self.evidence_leaf,
            "url": f"/files/{self.sha256}",
        }


@dataclass(frozen=True, slots=True)
class Blob:
    """A complete upload waiting in its temporary file: hashed, sized, typed."""

    temp_path: Path
    sha256: str
    size: int
    content_type: str


class BlobStore:
    """The content-addressed directory. Synchronous (callers run it in a thread)."""

    def __init__(self, settings: FilesSettings) -> None:
        self._root = Path(settings.directory)
        self._max = settings.max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max

    def open(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError("not a SHA-256 in lowercase hex")
        return self._root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def receive(self) -> BlobWriter:
        return BlobWriter(self._root, self._max)

    def keep(self, blob: Blob) -> Path:
        """Move an accepted upload into place (atomic rename; the same bytes may already
        be there, which is fine: a name is its content)."""
        final = self.path(blob.sha256)
        final.parent.mkdir(exist_ok=True)
        if final.exists():
            blob.temp_path.unlink(missing_ok=True)
        else:
            os.replace(blob.temp_path, final)
        return final

    @staticmethod
    def discard(blob: Blob | None) -> None:
        if blob is not None:
            blob.temp_path.unlink(missing_ok=True)


class BlobWriter:
    """Receives one upload chunk by chunk; refuses it as soon as it is too big or its
    first bytes are no accepted format. ``close`` or ``finish`` always ends it."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=root)
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = b""
        self._done = False

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max:
            raise FileRejected(413, f"the file is larger than {self._max} bytes")
        if len(self._head) < MAGIC_BYTES:
            self._head += chunk[: MAGIC_BYTES - len(self._head)]
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self, accepted: frozenset[str]) -> Blob:
        if self._size == 0:
            raise FileRejected(400, "the file is empty")
        content_type = sniff(self._head)
        if content_type is None or content_type not in accepted:
            names = ", ".join(sorted({PDF: "PDF", JPEG: "JPEG", PNG: "PNG"}[t] for t in accepted))
            raise FileRejected(415, f"the file's content is not {names} (checked by its first bytes)")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._done = True
        return Blob(self._path, self._hash.hexdigest(), self._size, content_type)

    def close(self) -> None:
        """Drop the temporary file unless ``finish`` handed it on."""
        with contextlib.suppress(OSError):
            self._file.close()
        if not self._done:
            self._path.unlink(missing_ok=True)


__all__ = [
    "JPEG",
    "PDF",
    "PNG",
    "Blob",
    "BlobStore",
    "BlobWriter",
    "FileKind",
    "FileRejected",
    "FilesSettings",
    "StoredFile",
    "clean_name",
    "sniff",
]
