"""A shipment's record with the evidence that proves it: one builder for the trust page's
endpoint (web.trust) and for the offline evidence bundle.

``ShipmentEvidence.view`` is what ``GET /api/v1/public/shipments/{id}`` answers: what a
customer may see, and beside it every piece of evidence the page checks in the browser:
a signed checkpoint, the leaves (base64), one multi-leaf inclusion proof for all of them
(``multiproof``: the base64 of the 32-byte hashes of telemetry.evidence.merkle's
``multi_inclusion_proof``, which proves each leaf into the checkpoint's tree hashing
every node once), and each readings batch's raw readings (``records``: the base64 of the
29-byte records its digest is taken over, in time order — the page hashes them as they
come and reads the readings from them). A month of readings a minute is ~3 MB this way,
where a proof per leaf and a JSON object per reading were 7 to 58 MB.

``ShipmentEvidence.bundle`` is the same record as one file to keep
(``GET /api/v1/public/shipments/{id}/bundle``): everything ``origincast verify`` needs
to check it with no access to the server, years later — the view, the log's public key
as served (for reference only: a verifier takes the key from somewhere else), each
file's bytes (up to a size cap; bigger ones by SHA-256 only, and the bundle says so),
and the RFC 3161 timestamp of the checkpoint signed at the shipment's close, with a
consistency proof from that checkpoint to the bundle's. Bundle version 2 carries the
evidence in the page's form; web.verify_bundle still reads version 1 (per-leaf proofs,
readings as JSON objects), which earlier servers made.

Built answers are kept for repeat requests (web.answer_cache: per shipment, version and
key, while a fingerprint of the data they came from is unchanged); concurrent requests
for the same answer wait for one build.

What a customer sees: the product, batch, origin, route (devices, labels, times), the
report's figures, excursions with their audit trail (actor names as the audit records
them: every alert event is a public leaf of the log anyway, so hiding them here would
hide nothing), the batch's files and the linked streams. Not shown: shipment versions,
uploaders' account names, device sites and anything of other shipments.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import orjson
from aiohttp import web

from telemetry.evidence.canonical import pack_reading
from telemetry.evidence.log import EvidenceLog, SignedCheckpoint
from telemetry.files import BlobStore, StoredFile
from telemetry.reports import ShipmentReport, build_report
from telemetry.shipments import (
    Pending,
    Shipment,
    ShipmentError,
    check_shipment_id,
    find_profile,
    gather_sealed,
    report_end,
)
from telemetry.storage import Store
from telemetry.storage.evidence_batches import ts_us
from telemetry.storage.files import FileCatalog
from web.answer_cache import AnswerCache
from web.errors import json_error
from web.rate_limit import RateLimiter

BUNDLE_FORMAT = "origincast-evidence-bundle"
BUNDLE_VERSION = 2
# What a bundle download costs of an address's rate (web.rate_limit) against 1 for the
# page's answer: it carries the files' bytes too (up to FILES_INLINE_TOTAL_BYTES).
BUNDLE_RATE_COST = 4.0
# Files up to this size travel inside the bundle; bigger ones, and any beyond the total,
# are named by SHA-256 only (a verifier fetches them and compares).
FILE_INLINE_MAX_BYTES = 8 * 1024 * 1024
FILES_INLINE_TOTAL_BYTES = 32 * 1024 * 1024
KEY_NOTICE = (
    "Verify this bundle with the log's public key obtained separately (the QR code on the"
    " package, or the merchant's published key), never with the key written in this file:"
    " whoever could change the bundle could change that key too."
)


class EvidenceAccess(Protocol):
    """What the builder needs of the app's evidence service (web.evidence): the log's
    public key and signed checkpoints."""

    @property
    def vkey(self) -> str | None: ...

    async def checkpoint(self, *, force: bool = False) -> SignedCheckpoint: ...


@runtime_checkable
class AnchorAccess(Protocol):
    """An evidence service that also anchors checkpoints in time (web.evidence)."""

    @property
    def tsa_url(self) -> str | None: ...

    async def timestamp_covering(self, leaf: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class StreamInfo:
    slug: str
    title: str | None
    live: bool


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def load_shipment(store: Store, raw: str) -> Shipment:
    """The shipment of a URL's id; a JSON 404 for an id that cannot exist or does not."""
    try:
        sid = check_shipment_id(raw)
    except ShipmentError:
        raise json_error(web.HTTPNotFound, f"no shipment {raw!r}") from None
    found = await asyncio.to_thread(store.get_shipment, sid)
    if found is None:
        raise json_error(web.HTTPNotFound, f"no shipment {sid!r}")
    return found


class ShipmentEvidence:
    def __init__(
        self,
        store: Callable[[], Store],
        files: FileCatalog,
        evidence: Callable[[], EvidenceAccess | None],
        blobs: BlobStore | None = None,
        cache: AnswerCache | None = None,
    ) -> None:
        # Looked up per call: the store and the evidence service open in cleanup_ctx.
        self._store = store
        self._files = files
        self._evidence = evidence
        self._blobs = blobs
        self._cache = cache
        # key -> [lock, users]: one build per answer at a time (web.answer_cache)
        self._building: dict[Hashable, list[Any]] = {}

    @property
    def evidence(self) -> EvidenceAccess | None:
        return self._evidence()

    async def view(self, shipment: Shipment, streams: Sequence[StreamInfo] = ()) -> dict[str, Any]:
        """The public endpoint's body (see the module's docstring)."""
        body, _files = await self._answer(shipment)
        return {
            **body,
            "streams": [
                {"slug": s.slug, "title": s.title, "live": s.live, "url": f"/watch/{s.slug}"} for s in streams
            ],
        }

    async def _answer(
        self, shipment: Shipment, *, fresh: bool = False
    ) -> tuple[dict[str, Any], list[StoredFile]]:
        """The body without its streams (those are live), and the files it shows: from
        the cache while the data it came from is unchanged (unless ``fresh``), else built."""
        store = self._store()
        evidence = self._evidence()
        as_of = datetime.now(UTC)
        files = await asyncio.to_thread(self._files.for_batch, shipment.batch, shipment.id)
        cache = self._cache
        if cache is None:
            return await self._build(shipment, files, as_of, evidence), files
        key = (shipment.id, shipment.version, None if evidence is None else evidence.vkey)
        fp = await asyncio.to_thread(fingerprint, store, shipment, as_of, files)
        hit = None if fresh else cache.get(key, fp)
        if hit is not None:
            return hit.body, hit.files
        slot = self._building.setdefault(key, [asyncio.Lock(), 0])
        slot[1] += 1
        try:
            async with slot[0]:
                hit = None if fresh else cache.get(key, fp)  # built by the request waited for
                if hit is not None:
                    return hit.body, hit.files
                body = await self._build(shipment, files, as_of, evidence)
                cache.put(key, fp, body, files, _size(body), closed=shipment.closed_at is not None)
                return body, files
        finally:
            slot[1] -= 1
            if slot[1] == 0:
                del self._building[key]

    async def _build(
        self,
        shipment: Shipment,
        files: list[StoredFile],
        as_of: datetime,
        evidence: EvidenceAccess | None,
    ) -> dict[str, Any]:
        store = self._store()

        def build() -> tuple[ShipmentReport, Pending | None]:
            # Only what the log has sealed can be verified: the record leaves out readings
            # of a device's current, unsealed window (and says so, "pending").
            data, report_at, pending = gather_sealed(store, shipment, as_of)
            return build_report(shipment, data, find_profile(store, shipment.profile_id), report_at), pending

        report, pending = await asyncio.to_thread(build)
        body: dict[str, Any] = {
            "shipment": {
                "id": shipment.id,
                "product": shipment.product,
                "batch": shipment.batch,
                "origin_site": shipment.origin_site,
                "state": shipment.state.value,
                "opened_at": iso(shipment.opened_at),
                "closed_at": iso(shipment.closed_at),
                "segments": [
                    {
                        "index": s.index,
                        "device_id": s.device_id,
                        "label": s.label,
                        "start": iso(s.start),
                        "end": iso(s.end),
                        "start_us": ts_us(s.start),
                        "end_us": ts_us(s.end),
                        "open": s.open,
                    }
                    for s in report.segments
                ],
            },
            "profile": {
                "id": report.profile_id,
                "name": report.profile_name,
                "limits": [lim.to_dict() for lim in report.limits],
            },
            "report": public_report(report),
            "pending": None if pending is None else pending.to_dict(),
            "files": [{k: v for k, v in f.to_dict().items() if k not in ("id",)} for f in files],
        }
        if evidence is None:
            body["evidence"] = None
        else:
            body["evidence"] = await self._evidence_part(evidence, shipment, report, files)
        return body

    async def bundle(self, shipment: Shipment) -> dict[str, Any] | None:
        """The offline evidence bundle; None when the log cannot sign (no key), since a
        bundle without a signed checkpoint would prove nothing."""
        evidence = self._evidence()
        if evidence is None:
            return None
        body, files = await self._answer(shipment)
        if body["evidence"] is None:
            return None
        timestamp = await self._timestamp(evidence, shipment, body["evidence"])
        if timestamp is None:
            # anchored at a checkpoint newer than the kept answer's (signed at the close
            # while the answer was built): an answer with a checkpoint that covers it
            body, files = await self._answer(shipment, fresh=True)
            timestamp = await self._timestamp(evidence, shipment, body["evidence"])
            if timestamp is None:
                raise RuntimeError("the closing checkpoint is newer than the one just signed")
        # (no streams: live links mean nothing in a file kept for years)
        shown = await asyncio.to_thread(self._file_contents, body["files"], files)
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "generated_at": iso(datetime.now(UTC)),
            "key_notice": KEY_NOTICE,
            "vkey": evidence.vkey,
            **body,
            "files": shown,
            "file_limits": {
                "inline_max_bytes": FILE_INLINE_MAX_BYTES,
                "inline_total_bytes": FILES_INLINE_TOTAL_BYTES,
                "note": "files above these sizes are named by SHA-256 only (content null, with the"
                " reason): fetch them from /files/<sha256> and compare",
            },
            "timestamp": timestamp,
        }

    def _file_contents(
        self, shown: list[dict[str, Any]], files: Sequence[StoredFile]
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        total = 0
        for entry, f in zip(shown, files, strict=True):
            item = {**entry, "content_b64": None, "omitted": None}
            if f.size > FILE_INLINE_MAX_BYTES:
                item["omitted"] = f"larger than {FILE_INLINE_MAX_BYTES} bytes: referenced by SHA-256 only"
            elif total + f.size > FILES_INLINE_TOTAL_BYTES:
                item["omitted"] = (
                    f"the bundle's files already hold {FILES_INLINE_TOTAL_BYTES} bytes:"
                    " referenced by SHA-256 only"
                )
            else:
                data = self._read_file(f.sha256)
                if data is None:
                    item["omitted"] = "missing from the server's file store"
                else:
                    # The bytes as stored, whatever they hash to: the verifier judges them.
                    item["content_b64"] = b64(data)
                    total += len(data)
            out.append(item)
        return out

    def _read_file(self, sha256: str) -> bytes | None:
        if self._blobs is None:
            return None
        try:
            path = self._blobs.path(sha256)
            if path.stat().st_size > FILE_INLINE_MAX_BYTES:
                return None
            return path.read_bytes()
        except (OSError, ValueError):
            return None

    async def _timestamp(
        self, evidence: EvidenceAccess, shipment: Shipment, part: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The RFC 3161 anchor of the checkpoint signed at the close, or why there is none;
        None when that checkpoint is newer than the answer's (no consistency proof runs
        backwards)."""
        if shipment.closed_leaf is None:
            return {"status": "open", "detail": "the shipment is not closed: it is timestamped at its close"}
        if not isinstance(evidence, AnchorAccess) or evidence.tsa_url is None:
            return {
                "status": "not_configured",
                "detail": "this server has no timestamp authority (evidence.tsa_url)",
            }
        row = await evidence.timestamp_covering(shipment.closed_leaf)
        if row is None or row.response is None:
            detail = (
                "no timestamp yet: the timestamp authority has not answered; it is asked again until it does"
            )
            if row is not None and row.last_error:
                detail += f" (last attempt: {row.last_error})"
            return {"status": "pending", "detail": detail, "tsa_url": evidence.tsa_url}
        size = int(part["size"])
        if row.tree_size > size:
            return None
        store = self._store()
        log: EvidenceLog = store.evidence

        def prove() -> list[bytes]:
            with store.evidence_connection() as conn:
                return log.consistency_proof(conn, row.tree_size, size)

        proof = await asyncio.to_thread(prove)
        return {
            "status": "stamped",
            "detail": "RFC 3161 token over SHA-256 of the checkpoint note signed at the close",
            "tsa_url": row.tsa_url,
            "checkpoint": row.note,
            "size": row.tree_size,
            "gen_time": iso(row.gen_time),
            "response_der_b64": b64(row.response),
            "consistency_proof": [b64(h) for h in proof],
        }

    async def _evidence_part(
        self, evidence: EvidenceAccess, shipment: Shipment, report: ShipmentReport, files: Sequence[Any]
    ) -> dict[str, Any]:
        store = self._store()
        log: EvidenceLog = store.evidence
        # Each audit row keeps the index of its alert_event leaf: a direct lookup, where
        # scanning the log from the shipment's opening would read every leaf since.
        alert_leaves = sorted(
            {x.evidence_leaf for e in report.excursions for x in e.alert.audit if x.evidence_leaf is not None}
        )
        windows = [(s.device_id, ts_us(s.start), ts_us(s.end)) for s in report.segments]

        def collect() -> tuple[list[dict[str, Any]], dict[int, bytes], dict[int, tuple[str, int, int]]]:
            leaves: dict[int, bytes] = {}
            spans: dict[int, tuple[str, int, int]] = {}  # readings batch -> device, first, last
            devices: list[dict[str, Any]] = []
            with store.evidence_connection() as conn:
                for i, (device, start, end) in enumerate(windows, start=1):
                    picked = batches_over(log.device_leaves(conn, device), start, end)
                    for leaf in picked:
                        leaves[leaf.index] = leaf.entry
                        span = _span(leaf.entry)
                        if span is not None:
                            spans[leaf.index] = (device, *span)
                    devices.append(
                        {"segment": i, "device_id": device, "start_us": start, "end_us": end,
                         "batches": [leaf.index for leaf in picked]}
                    )  # fmt: skip
                singles = [x for x in (shipment.opened_leaf, shipment.closed_leaf) if x is not None]
                singles += [f.evidence_leaf for f in files] + alert_leaves
                for index in singles:
                    got = log.leaves(conn, index, index + 1)
                    if got:
                        leaves[index] = got[0].entry
            return devices, leaves, spans

        devices, leaves, spans = await asyncio.to_thread(collect)
        needed = max(leaves, default=-1) + 1
        checkpoint = await evidence.checkpoint()
        if checkpoint.size < needed:
            checkpoint = await evidence.checkpoint(force=True)

        def prove_and_read() -> tuple[bytes, dict[int, bytes]]:
            with store.evidence_connection() as conn:
                proof = log.multi_inclusion_proof(conn, leaves, checkpoint.size) if leaves else []
            records: dict[int, bytes] = {}
            for index, (device, first, last) in spans.items():
                # The readings as stored now, whatever they hash to: the verifier judges them.
                rows = store.readings_of_leaf(device, index, first, last)
                records[index] = b"".join(
                    [pack_reading(ts_us(r.ts), r.temp_c, r.rh, r.battery_v, r.door_open, r.seq) for r in rows]
                )
            return b"".join(proof), records

        proof, records = await asyncio.to_thread(prove_and_read)
        return {
            "vkey_origin": (evidence.vkey or "").split("+", 1)[0],
            "checkpoint": checkpoint.note,
            "size": checkpoint.size,
            "opened_leaf": shipment.opened_leaf,
            "closed_leaf": shipment.closed_leaf,
            "devices": devices,
            "alert_leaves": alert_leaves,
            "file_leaves": {f.sha256: f.evidence_leaf for f in files},
            "leaves": {str(i): b64(e) for i, e in sorted(leaves.items())},
            "multiproof": b64(proof),
            "records": {str(i): b64(r) for i, r in sorted(records.items())},
        }


def _span(entry: bytes) -> tuple[int, int] | None:
    """A readings batch leaf's time range, read without building its record (a device's
    whole chain is scanned for each answer); None for a leaf that is not one."""
    try:
        rec = orjson.loads(entry)
        first, last = rec["ts_first_us"], rec["ts_last_us"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if rec.get("kind") != "readings_batch" or not isinstance(first, int) or not isinstance(last, int):
        return None
    return first, last


def batches_over(chain: Sequence[Any], start_us: int, end_us: int) -> list[Any]:
    """A device's batch leaves that hold readings in [start, end), with the batch just
    before and just after the window when they exist: the neighbours let a verifier see
    that nothing was left out at the window's edges (the chain's prev pointers link them).
    A leaf whose time range cannot be read counts as inside: the verifier names it."""
    spans = [_span(leaf.entry) for leaf in chain]
    inside = [i for i, s in enumerate(spans) if s is None or (s[1] >= start_us and s[0] < end_us)]
    if not inside:
        before = [i for i, s in enumerate(spans) if s is not None and s[1] < start_us]
        after = [i for i, s in enumerate(spans) if s is not None and s[0] >= end_us]
        return [chain[i] for i in before[-1:] + after[:1]]
    lo, hi = max(inside[0] - 1, 0), min(inside[-1] + 1, len(chain) - 1)
    return list(chain[lo : hi + 1])


def fingerprint(store: Store, shipment: Shipment, as_of: datetime, files: Sequence[StoredFile]) -> bytes:
    """What an answer was built from, in a few aggregate queries (web.answer_cache): per
    segment the device's readings by day (count, min, max, mean), the leaves covering
    them and the alerts with their audit; the files and the profile."""
    stop = report_end(shipment, as_of)
    h = hashlib.sha256()
    for seg in shipment.segments:
        end = seg.end if seg.end is not None else stop  # (an open one's "now" is not hashed)
        h.update(repr((seg.device_id, seg.start, seg.end)).encode())
        if end <= seg.start:
            continue
        days = store.history(seg.device_id, seg.start, end, timedelta(days=1))
        h.update(repr([(b.start, b.count, b.min_c, b.max_c, b.mean_c) for b in days]).encode())
        h.update(repr(store.leaves_covering(seg.device_id, ts_us(seg.start), ts_us(end))).encode())
        h.update(repr(store.alerts_overlapping(seg.device_id, seg.start, end)).encode())
    h.update(repr(list(files)).encode())
    h.update(repr(find_profile(store, shipment.profile_id)).encode())
    return h.digest()


def _size(body: dict[str, Any]) -> int:
    """An answer's size for the cache's byte bound: its base64 texts, which are nearly all
    of it, plus room for the rest."""
    ev = body.get("evidence") or {}
    texts = [*ev.get("leaves", {}).values(), *ev.get("records", {}).values(), ev.get("multiproof", "")]
    return sum(len(t) for t in texts) + 64 * 1024


def public_report(report: ShipmentReport) -> dict[str, Any]:
    full = report.to_dict()
    excursions = []
    for e in report.excursions:
        a = e.alert
        excursions.append(
            {
                "id": a.alert_id,
                "category": e.category,
                "segments": list(e.segments),
                "device_id": a.device_id,
                "rule_id": a.rule_id,
                "rule_kind": a.kind,
                "severity": a.severity,
                "status": a.state,
                "threshold": a.threshold,
                "start": iso(a.start),
                "cleared_at": iso(a.cleared_at),
                "peak": a.peak,
                "peak_at": iso(a.peak_at),
                "audit": [
                    # "" and no comment are one thing: the alert_event leaf stores "" as null.
                    {"at": iso(x.at), "action": x.action, "actor": x.actor, "comment": x.comment or None}
                    for x in a.audit
                ],
            }
        )
    return {
        "as_of": full["as_of"],
        "method": full["method"],
        "segments": full["segments"],
        "total": full["total"],
        "gaps": full["gaps"],
        "excursions": excursions,
    }


class BundleApi:
    """``GET /api/v1/public/shipments/{id}/bundle``: the offline evidence bundle, public
    like the trust page it is downloaded from."""

    def __init__(
        self, store: Callable[[], Store], builder: ShipmentEvidence, limiter: RateLimiter | None = None
    ) -> None:
        self._store = store
        self._builder = builder
        self._limiter = limiter

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/public/shipments/{id}/bundle", self.download)

    async def download(self, request: web.Request) -> web.Response:
        if self._limiter is not None:
            self._limiter.check(request, BUNDLE_RATE_COST)
        shipment = await load_shipment(self._store(), request.match_info["id"])
        body = await self._builder.bundle(shipment)
        if body is None:
            raise json_error(
                web.HTTPServiceUnavailable,
                "the evidence log has no signing key, so there is no signed record to bundle",
            )
        data = await asyncio.to_thread(orjson.dumps, body)
        return web.Response(
            body=data,
            content_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="{shipment.id}.evidence.json"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )


__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "FILES_INLINE_TOTAL_BYTES",
    "FILE_INLINE_MAX_BYTES",
    "AnchorAccess",
    "BundleApi",
    "EvidenceAccess",
    "ShipmentEvidence",
    "StreamInfo",
    "batches_over",
    "load_shipment",
    "public_report",
]
