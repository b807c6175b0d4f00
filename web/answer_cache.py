"""The built public answers of shipments (web.bundle), kept for repeat requests.

A trust page's answer for a month of readings takes the server about half a second to build
(the report's figures over every reading, the device's chain of batches, each batch's
readings, the proof): a QR code scanned by many customers, or a page reloaded, should
not pay that each time. An entry is used only while what it was built from is unchanged:

- the key: the shipment, its version (any edit bumps it) and the log's key;
- the fingerprint, read afresh for every request with a few aggregate queries (tens of
  milliseconds for a month of readings): per segment, the count/min/max/mean of the
  device's readings by day (a reading changed, added or deleted shows), the leaves
  covering them (a batch sealed since shows), the alerts with their audit trail (an
  acknowledgement or an edited comment shows); the shipment's files; its profile;
- its age: at most ``max_age_open_s`` for an open shipment (its report runs to "now"),
  ``max_age_closed_s`` for a closed one (a safety net for what the fingerprint does not
  see, e.g. a changed sequence number).

The entry keeps the checkpoint it was built with, and so its tree size: a later
checkpoint of the same log proves the same leaves, so a newer one is no reason to
rebuild (keying on the current checkpoint would empty the cache every minute a busy log
grows); the leaves that matter to the shipment are in the fingerprint instead.

Bounded by entries and by bytes (an answer is a few MB); least recently used first out.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_ENTRIES = 32
DEFAULT_MAX_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_AGE_OPEN_S = 15.0
DEFAULT_MAX_AGE_CLOSED_S = 600.0


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    fingerprint: Hashable
    body: dict[str, Any]
    files: list[Any]  # the StoredFile rows the body's files came from (for a bundle's bytes)
    size: int  # bytes, roughly: the serialized body's length
    built_at: float
    max_age_s: float


class AnswerCache:
    """Thread-safe (lookups happen on the event loop, builds finish in threads)."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_open_s: float = DEFAULT_MAX_AGE_OPEN_S,
        max_age_closed_s: float = DEFAULT_MAX_AGE_CLOSED_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age_open_s = max_age_open_s
        self.max_age_closed_s = max_age_closed_s
        self._clock = clock
        self._entries: OrderedDict[Hashable, CachedAnswer] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, fingerprint: Hashable) -> CachedAnswer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (
                entry.fingerprint != fingerprint or self._clock() - entry.built_at > entry.max_age_s
            ):
                self._drop(key)
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(
        self,
        key: Hashable,
        fingerprint: Hashable,
        body: dict[str, Any],
        files: list[Any],
        size: int,
        *,
        closed: bool,
    ) -> None:
        if size > self.max_bytes:
            return
        entry = CachedAnswer(
            fingerprint,
            body,
            files,
            size,
            self._clock(),
            self.max_age_closed_s if closed else self.max_age_open_s,
        )
        with self._lock:
            self._drop(key)
            self._entries[key] = entry
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes


__all__ = ["AnswerCache", "CachedAnswer"]
