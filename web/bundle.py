"""A shipment's record with the evidence that proves it: one builder for the trust page's
endpoint (web.trust) and for the offline evidence bundle.

``ShipmentEvidence.view`` is what ``GET /api/v1/public/shipments/{id}`` answers: what a
customer may see, and beside it every piece of evidence the page checks in the browser
(a signed checkpoint, the leaves with their inclusion proofs, each batch's raw readings).

``ShipmentEvidence.bundle`` is the same record as one file to keep
(``GET /api/v1/public/shipments/{id}/bundle``): everything ``origincast verify`` needs
to check it with no access to the server, years later — the view, the log's public key
as served (for reference only: a verifier takes the key from somewhere else), each
file's bytes (up to a size cap; bigger ones by SHA-256 only, and the bundle says so),
and the RFC 3161 timestamp of the checkpoint signed at the shipment's close, with a
consistency proof from that checkpoint to the bundle's.

What a customer sees: the product, batch, origin, route (devices, labels, times), the
report's figures, excursions with their audit trail (actor names as the audit records
them: every alert event is a public leaf of the log anyway, so hiding them here would
hide nothing), the batch's files and the linked streams. Not shown: shipment versions,
uploaders' account names, device sites and anything of other shipments.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import orjson
from aiohttp import web

from telemetry.evidence.canonical import ReadingsBatch, parse_record
from telemetry.evidence.log import EvidenceLog, SignedCheckpoint
from telemetry.files import BlobStore, StoredFile
from telemetry.reports import ShipmentReport, build_report
from telemetry.shipments import Shipment, ShipmentError, check_shipment_id, find_profile, gather
from telemetry.storage import Store
from telemetry.storage.evidence_batches import ts_us
from telemetry.storage.files import FileCatalog
from web.errors import json_error

BUNDLE_FORMAT = "origincast-evidence-bundle"
BUNDLE_VERSION = 1
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
    ) -> None:
        # Looked up per call: the store and the evidence service open in cleanup_ctx.
        self._store = store
        self._files = files
        self._evidence = evidence
        self._blobs = blobs

    @property
    def evidence(self) -> EvidenceAccess | None:
        return self._evidence()

    async def view(self, shipment: Shipment, streams: Sequence[StreamInfo] = ()) -> dict[str, Any]:
        """The public endpoint's body (see the module's docstring)."""
        body, _report, _files = await self._view(shipment, streams)
        return body

    async def _view(
        self, shipment: Shipment, streams: Sequence[StreamInfo]
    ) -> tuple[dict[str, Any], ShipmentReport, list[StoredFile]]:
        store = self._store()
        as_of = datetime.now(UTC)

        def build() -> ShipmentReport:
            data = gather(store, shipment, as_of)
            return build_report(shipment, data, find_profile(store, shipment.profile_id), as_of)

        report = await asyncio.to_thread(build)
        files = await asyncio.to_thread(self._files.for_batch, shipment.batch, shipment.id)
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
            "files": [{k: v for k, v in f.to_dict().items() if k not in ("id",)} for f in files],
            "streams": [
                {"slug": s.slug, "title": s.title, "live": s.live, "url": f"/watch/{s.slug}"} for s in streams
            ],
        }
        evidence = self._evidence()
        if evidence is None:
            body["evidence"] = None
        else:
            body["evidence"] = await self._evidence_part(evidence, shipment, report, files)
        return body, report, files

    async def bundle(self, shipment: Shipment) -> dict[str, Any] | None:
        """The offline evidence bundle; None when the log cannot sign (no key), since a
        bundle without a signed checkpoint would prove nothing."""
        evidence = self._evidence()
        if evidence is None:
            return None
        body, _report, files = await self._view(shipment, ())
        if body["evidence"] is None:
            return None
        del body["streams"]  # live links mean nothing in a file kept for years
        body["files"] = await asyncio.to_thread(self._file_contents, body["files"], files)
        timestamp = await self._timestamp(evidence, shipment, body["evidence"])
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "generated_at": iso(datetime.now(UTC)),
            "key_notice": KEY_NOTICE,
            "vkey": evidence.vkey,
            **body,
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
    ) -> dict[str, Any]:
        """The RFC 3161 anchor of the checkpoint signed at the close, or why there is none."""
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
        store = self._store()
        log: EvidenceLog = store.evidence  # type: ignore[attr-defined]

        def prove() -> list[bytes]:
            with store.evidence_connection() as conn:  # type: ignore[attr-defined]
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
        log: EvidenceLog = store.evidence  # type: ignore[attr-defined]
        # Each audit row keeps the index of its alert_event leaf: a direct lookup, where
        # scanning the log from the shipment's opening would read every leaf since.
        alert_leaves = sorted(
            {x.evidence_leaf for e in report.excursions for x in e.alert.audit if x.evidence_leaf is not None}
        )
        windows = [(s.device_id, ts_us(s.start), ts_us(s.end)) for s in report.segments]

        def collect() -> tuple[dict[str, Any], dict[int, bytes]]:
            leaves: dict[int, bytes] = {}
            devices: list[dict[str, Any]] = []
            with store.evidence_connection() as conn:  # type: ignore[attr-defined]
                for i, (device, start, end) in enumerate(windows, start=1):
                    chain = log.device_leaves(conn, device)
                    picked = batches_over(chain, start, end)
                    for leaf in picked:
                        leaves[leaf.index] = leaf.entry
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
            return {"devices": devices}, leaves

        part, leaves = await asyncio.to_thread(collect)
        needed = max(leaves, default=-1) + 1
        checkpoint = await evidence.checkpoint()
        if checkpoint.size < needed:
            checkpoint = await evidence.checkpoint(force=True)

        def prove_and_read() -> tuple[dict[int, list[bytes]], dict[int, list[dict[str, Any]]]]:
            with store.evidence_connection() as conn:  # type: ignore[attr-defined]
                proofs = log.inclusion_proofs(conn, sorted(leaves), checkpoint.size) if leaves else {}
            readings: dict[int, list[dict[str, Any]]] = {}
            for index, entry in leaves.items():
                rec = parse_record(entry)
                if isinstance(rec, ReadingsBatch):
                    rows = store.readings_of_leaf(rec.device_id, index, rec.ts_first_us, rec.ts_last_us)
                    readings[index] = [
                        {"ts_us": ts_us(r.ts), "temp_c": r.temp_c, "rh": r.rh, "battery_v": r.battery_v,
                         "door_open": r.door_open, "seq": r.seq}
                        for r in rows
                    ]  # fmt: skip
            return proofs, readings

        proofs, readings = await asyncio.to_thread(prove_and_read)
        return {
            "vkey_origin": (evidence.vkey or "").split("+", 1)[0],
            "checkpoint": checkpoint.note,
            "size": checkpoint.size,
            "opened_leaf": shipment.opened_leaf,
            "closed_leaf": shipment.closed_leaf,
            **part,
            "alert_leaves": alert_leaves,
            "file_leaves": {f.sha256: f.evidence_leaf for f in files},
            "leaves": {str(i): b64(e) for i, e in sorted(leaves.items())},
            "proofs": {str(i): [b64(h) for h in p] for i, p in sorted(proofs.items())},
            "readings": {str(i): r for i, r in sorted(readings.items())},
        }


def batches_over(chain: Sequence[Any], start_us: int, end_us: int) -> list[Any]:
    """A device's batch leaves that hold readings in [start, end), with the batch just
    before and just after the window when they exist: the neighbours let a verifier see
    that nothing was left out at the window's edges (the chain's prev pointers link them)."""
    records = [(leaf, parse_record(leaf.entry)) for leaf in chain]
    inside = [i for i, (_, r) in enumerate(records) if r.ts_last_us >= start_us and r.ts_first_us < end_us]  # type: ignore[attr-defined]
    if not inside:
        before = [i for i, (_, r) in enumerate(records) if r.ts_last_us < start_us]  # type: ignore[attr-defined]
        after = [i for i, (_, r) in enumerate(records) if r.ts_first_us >= end_us]  # type: ignore[attr-defined]
        pick = before[-1:] + after[:1]
        return [records[i][0] for i in pick]
    lo, hi = max(inside[0] - 1, 0), min(inside[-1] + 1, len(records) - 1)
    return [records[i][0] for i in range(lo, hi + 1)]


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

    def __init__(self, store: Callable[[], Store], builder: ShipmentEvidence) -> None:
        self._store = store
        self._builder = builder

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/public/shipments/{id}/bundle", self.download)

    async def download(self, request: web.Request) -> web.Response:
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
