"""Checking an offline evidence bundle (web.bundle) with nothing but the log's public
key: what ``origincast verify`` runs. No network, no database, no clock but the
token's own.

The checks, each naming the record that fails:
- the checkpoint's signature by the key given (never the key the bundle carries);
- every leaf's inclusion in that checkpoint: one multi-leaf proof for them all (bundle
  version 2, the trust page's form), or a proof per leaf (version 1, earlier servers');
- the shipment_opened and shipment_closed records against the shipment shown
  (product, batch, origin, limits; closing time and route);
- each device's chain of batches over its segment (``walk_batch_chain``: a broken link
  is a mismatch, a missing batch or sequence numbers that never arrived are gaps);
- each batch's raw readings against the digest its leaf records (version 2: the 29-byte
  records the digest is over; version 1: JSON objects);
- the report's figures recomputed from those readings by telemetry.reports, the very
  functions the server computed them with, against the figures shown;
- every acknowledgement and resolution shown against an alert_event leaf;
- each file's bytes against its manifest leaf (SHA-256);
- the RFC 3161 token of the closing checkpoint: that checkpoint signed by the key, the
  bundle's checkpoint consistent with it, its message imprint SHA-256 of that note, and
  its signature by a TSA certificate (those given with ``--tsa-cert``, else the root
  certificate the token carries, which proves the token intact but not who the TSA is).

This lives in web, not in telemetry.evidence, because the figures need telemetry.reports
and the evidence package imports nothing else of ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import rfc3161_client
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from telemetry.alerts.rules import Direction
from telemetry.evidence import merkle
from telemetry.evidence.canonical import (
    AlertEvent,
    FileManifest,
    ReadingsBatch,
    RecordError,
    ShipmentClosed,
    ShipmentOpened,
    parse_record,
    unpack_readings,
)
from telemetry.evidence.note import Checkpoint
from telemetry.evidence.verify import (
    VerificationFailed,
    check_batch_readings,
    verify_checkpoint,
    verify_checkpoint_consistency,
    verify_leaf_inclusion,
    walk_batch_chain,
)
from telemetry.reports import Gap as TimeGap
from telemetry.reports import (
    Limit,
    ReportError,
    ReportParams,
    Summary,
    Weighted,
    gap_threshold,
    summarize,
    weigh,
)

BUNDLE_FORMAT = "origincast-evidence-bundle"
SUPPORTED_VERSIONS = frozenset({1, 2})
SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Figures are recomputed by the same code from the same values, so they agree to the
# last bit; the tolerance only forgives a JSON round trip.
_ABS_TOL = 1e-6
# Version 2's readings are the digest's float32 values, where the server may have
# computed its figures from more digits (SQLite keeps doubles): a temperature figure
# (a min, max, weighted mean or MKT) then moves by at most a few float32 roundings of
# the largest temperature (MKT weighs a reading by up to ~(T_mkt / T)^2 < 3).
_F32_ROUNDING = 2.0**-24


class BundleError(ValueError):
    """The file is not an evidence bundle this verifier can read (exit code 2)."""


@dataclass(slots=True)
class Verdict:
    mismatches: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def headline(self) -> str:
        if self.mismatches:
            return f"MISMATCH: {self.mismatches[0]}"
        if self.gaps:
            return f"verified, {len(self.gaps)} gap{'s' if len(self.gaps) != 1 else ''}"
        return "verified"

    def lines(self) -> list[str]:
        out = [self.headline()]
        out += [f"MISMATCH: {m}" for m in self.mismatches[1:]]
        out += [f"gap: {g}" for g in self.gaps]
        out += self.notes
        return out


@dataclass(frozen=True, slots=True)
class _Point:
    ts: datetime
    temp_c: float


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{what} is not base64") from None


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _iso_us(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BundleError(f"{value!r} is not a time")
    try:
        return _us(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise BundleError(f"{value!r} is not an ISO 8601 time") from None


def _get(obj: object, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise BundleError(f"{where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, kind):
        raise BundleError(f"{where}.{key} has the wrong type")
    return value


def load_tsa_certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file (--tsa-cert); ValueError if there are none."""
    certs = x509.load_pem_x509_certificates(pem)
    if not certs:
        raise ValueError("no certificate in the file")
    return certs


def verify_bundle(
    bundle: object, vkey: str, tsa_certificates: Sequence[x509.Certificate] | None = None
) -> Verdict:
    """Check a parsed bundle against the log's key ``vkey``. BundleError when it is not
    a bundle at all; otherwise a Verdict listing every mismatch, gap and note."""
    if not isinstance(bundle, Mapping) or bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError("not an origincast evidence bundle (no format marker)")
    if bundle.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(f"bundle version {bundle.get('version')!r} is not one this verifier reads")
    try:
        return _Checker(bundle, vkey, tsa_certificates).run()
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, struct.error) as exc:
        if isinstance(exc, BundleError):
            raise
        # a field of the wrong shape somewhere: not a bundle this verifier can read
        raise BundleError(f"malformed bundle: {type(exc).__name__}: {exc}") from None


class _Checker:
    def __init__(
        self, bundle: Mapping[str, Any], vkey: str, tsa_certificates: Sequence[x509.Certificate] | None
    ) -> None:
        self.b = bundle
        self.vkey = vkey
        self.tsa_certs = list(tsa_certificates or [])
        self.v = Verdict()
        self.shipment = _get(bundle, "shipment", dict, "bundle")
        self.report = _get(bundle, "report", dict, "bundle")
        self.profile = _get(bundle, "profile", dict, "bundle")
        self.files = _get(bundle, "files", list, "bundle")
        self.ev = _get(bundle, "evidence", dict, "bundle")
        self.version = bundle["version"]
        self.records: dict[int, Any] = {}
        self.entries: dict[int, bytes] = {}

    def fail(self, what: str) -> None:
        self.v.mismatches.append(what)

    def run(self) -> Verdict:
        s = self.shipment
        sid = _get(s, "id", str, "shipment")
        self.v.notes.append(
            f"shipment {sid}: {s.get('product')} (batch {s.get('batch')}), from {s.get('origin_site')},"
            f" {s.get('state')}"
        )
        note = _get(self.ev, "checkpoint", str, "evidence")
        try:
            cp = verify_checkpoint(note, self.vkey)
        except VerificationFailed as exc:
            first = note.split("\n", 2)
            name = f"checkpoint {first[0]} @ {first[1]}" if len(first) > 1 else "checkpoint"
            self.fail(f"{name}: {exc.detail} (the key given did not sign it)")
            return self.v
        self.v.notes.append(f"checkpoint: {cp.origin}, {cp.size} leaves, signed by the key given")
        self._leaves(cp)
        self._opened_closed()
        readings = self._chains()
        self._figures(readings)
        self._alerts()
        self._files()
        self._timestamp(cp)
        pending = self.b.get("pending")
        if isinstance(pending, Mapping):
            # the server's own statement, not evidence: what the record above leaves out
            self.v.notes.append(
                f"{pending.get('count')} newer readings (from {pending.get('first')}) were not sealed into"
                f" the log yet when this bundle was made; the record ends at {pending.get('through')}"
            )
        return self.v

    # -- leaves ------------------------------------------------------------------------

    def _leaves(self, cp: Checkpoint) -> None:
        leaves = _get(self.ev, "leaves", dict, "evidence")
        entries: dict[int, bytes] = {}
        for key, b64 in leaves.items():
            try:
                index = int(key)
            except ValueError:
                raise BundleError(f"evidence.leaves has a key {key!r} that is no leaf index") from None
            entries[index] = _b64(b64, f"leaf {index}")
        if self.version == 1:
            proved = self._proved_one_by_one(cp, entries)
        else:
            proved = self._proved_together(cp, entries)
        for index in proved:
            entry = entries[index]
            try:
                self.records[index] = parse_record(entry)
            except RecordError as exc:
                self.fail(f"leaf {index}: not a record of the log ({exc})")
                continue
            self.entries[index] = entry
        self.v.notes.append(f"{len(self.records)} records proved included in the checkpoint")

    def _proved_one_by_one(self, cp: Checkpoint, entries: Mapping[int, bytes]) -> list[int]:
        proofs = _get(self.ev, "proofs", dict, "evidence")
        proved = []
        for index, entry in entries.items():
            key = str(index)
            proof = [_b64(h, f"leaf {index}'s proof") for h in _get(proofs, key, list, "evidence.proofs")]
            try:
                verify_leaf_inclusion(entry, index, proof, cp)
            except VerificationFailed as exc:
                try:
                    kind = parse_record(entry).kind
                except RecordError:
                    kind = "not a record"
                self.fail(f"leaf {index} ({kind}): not in the signed log: {exc.detail}")
                continue
            proved.append(index)
        return proved

    def _proved_together(self, cp: Checkpoint, entries: Mapping[int, bytes]) -> list[int]:
        """One multi-leaf proof for every leaf: it holds for all of them or names none (a
        proof that fails cannot tell which leaf is not in the tree)."""
        if not entries:
            return []
        blob = _b64(_get(self.ev, "multiproof", str, "evidence"), "evidence.multiproof")
        if len(blob) % merkle.HASH_SIZE:
            raise BundleError("evidence.multiproof is not a list of 32-byte hashes")
        proof = [blob[i : i + merkle.HASH_SIZE] for i in range(0, len(blob), merkle.HASH_SIZE)]
        hashes = {i: merkle.leaf_hash(e) for i, e in entries.items()}
        try:
            merkle.verify_multi_inclusion(cp.size, hashes, proof, cp.root_hash)
        except merkle.ProofError as exc:
            self.fail(
                f"the bundle's {len(entries)} records (leaves {min(entries)}..{max(entries)}): not all"
                f" in the signed log: {exc}"
            )
            return []
        return sorted(entries)

    def _record(self, index: object, kind: type, what: str) -> Any:
        if isinstance(index, bool) or not isinstance(index, int):
            self.fail(f"{what}: the bundle names no record of it")
            return None
        rec = self.records.get(index)
        if rec is None:
            self.fail(f"{what} (leaf {index}): not among the proved records")
            return None
        if not isinstance(rec, kind):
            self.fail(f"{what} (leaf {index}): is a {rec.kind} record")
            return None
        return rec

    # -- the shipment's opening and closing ----------------------------------------------

    def _opened_closed(self) -> None:
        s = self.shipment
        sid = s["id"]
        opened = self._record(self.ev.get("opened_leaf"), ShipmentOpened, f"shipment {sid}'s opening")
        if opened is not None:
            shown = {
                "shipment_id": sid,
                "product": s.get("product"),
                "product_batch": s.get("batch"),
                "origin_site": s.get("origin_site"),
                "at_us": _iso_us(s.get("opened_at")),
            }
            logged = {
                "shipment_id": opened.shipment_id,
                "product": opened.product,
                "product_batch": opened.product_batch,
                "origin_site": opened.origin_site,
                "at_us": opened.at_us,
            }
            for k in shown:
                if shown[k] != logged[k]:
                    self.fail(
                        f"shipment {sid}'s opening (leaf {self.ev['opened_leaf']}): {k} shown"
                        f" {shown[k]!r}, recorded {logged[k]!r}"
                    )
            limits = (opened.profile or {}).get("limits")
            if limits is not None and limits != self.profile.get("limits"):
                self.fail(
                    f"shipment {sid}'s opening (leaf {self.ev['opened_leaf']}): the limits shown differ"
                    " from those recorded"
                )
        if s.get("state") != "closed":
            return
        closed = self._record(self.ev.get("closed_leaf"), ShipmentClosed, f"shipment {sid}'s closing")
        if closed is None:
            return
        where = f"shipment {sid}'s closing (leaf {self.ev['closed_leaf']})"
        if closed.shipment_id != sid:
            self.fail(f"{where}: it closes shipment {closed.shipment_id!r}")
        if closed.at_us != _iso_us(s.get("closed_at")):
            self.fail(f"{where}: closing time shown {s.get('closed_at')}, recorded otherwise")
        route = [
            {"device_id": g.get("device_id"), "start_us": g.get("start_us"), "end_us": g.get("end_us"),
             "label": g.get("label")}
            for g in _get(s, "segments", list, "shipment")
        ]  # fmt: skip
        if (closed.summary or {}).get("segments") != route:
            self.fail(f"{where}: the route shown (devices and times) differs from the route recorded")

    # -- batch chains and readings ---------------------------------------------------------

    def _chains(self) -> list[list[dict[str, Any]]]:
        """Each segment's raw readings (of batches whose digest matched)."""
        raw = _get(self.ev, "readings" if self.version == 1 else "records", dict, "evidence")
        devices = _get(self.ev, "devices", list, "evidence")
        segments = _get(self.shipment, "segments", list, "shipment")
        if len(devices) != len(segments):
            self.fail(f"the evidence covers {len(devices)} segments, the route shown has {len(segments)}")
        out: list[list[dict[str, Any]]] = []
        total = batches = 0
        for i, d in enumerate(devices):
            device = _get(d, "device_id", str, "evidence.devices[]")
            indices = _get(d, "batches", list, "evidence.devices[]")
            if i < len(segments):
                g = segments[i]
                shown = (g.get("device_id"), g.get("start_us"), g.get("end_us"))
                if shown != (device, d.get("start_us"), d.get("end_us")):
                    self.fail(
                        f"segment {i + 1} ({device}): the evidence's window differs from the route shown"
                    )
            chain: list[tuple[int, bytes]] = []
            for index in indices:
                if index not in self.records:
                    self.fail(f"readings batch leaf {index} ({device}): not among the proved records")
                    continue
                chain.append((index, self.entries[index]))
            report = walk_batch_chain(device, chain)
            for err in report.errors:
                self.fail(f"{device}'s chain of batches: {err}")
            for gap in report.gaps:
                self.v.gaps.append(f"{device}: {gap.detail}")
            readings: list[dict[str, Any]] = []
            for index, _entry in chain:
                batch = self.records[index]
                if not isinstance(batch, ReadingsBatch):
                    continue
                rows = self._batch_readings(raw.get(str(index)), index)
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    self.fail(f"readings batch {index} ({device}): its readings are missing or unreadable")
                    continue
                try:
                    check_batch_readings(index, batch, rows)
                except VerificationFailed as exc:
                    self.fail(f"{exc.what}: {exc.detail}")
                    continue
                except (KeyError, TypeError, ValueError, OverflowError, struct.error) as exc:
                    self.fail(f"readings batch {index} ({device}): malformed readings ({exc})")
                    continue
                readings += rows
                total += len(rows)
                batches += 1
            out.append(readings)
        self.v.notes.append(f"{total} readings in {batches} batches match their records")
        return out

    def _batch_readings(self, shown: object, index: int) -> object:
        """A batch's readings as ``reading_record`` dicts (version 2: from its records)."""
        if self.version == 1 or shown is None:
            return shown
        try:
            return unpack_readings(_b64(shown, f"readings batch {index}'s records"))
        except (RecordError, BundleError):
            return None

    # -- the report's figures --------------------------------------------------------------

    def _figures(self, readings: list[list[dict[str, Any]]]) -> None:
        method = _get(self.report, "method", dict, "report")
        try:
            params = ReportParams(
                gap_factor=method.get("gap_factor"),
                min_gap_s=method.get("min_gap_s"),
                gap_threshold_s=method.get("gap_threshold_s"),
                activation_k=method.get("activation_k"),
            )
            limits = [_limit(x) for x in _get(self.profile, "limits", list, "profile")]
        except (ReportError, KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the report's method or limits cannot be read: {exc}") from None
        shown_segments = _get(self.report, "segments", list, "report")
        devices = self.ev["devices"]
        temp_tol = _ABS_TOL
        if self.version >= 2:
            hottest = max((abs(float(r["temp_c"])) for rows in readings for r in rows), default=0.0)
            temp_tol += 4 * _F32_ROUNDING * hottest
        all_weighted: list[Weighted] = []
        all_gaps: list[TimeGap] = []
        window = timedelta()
        for i, d in enumerate(devices):
            start = _EPOCH + timedelta(microseconds=int(d["start_us"]))
            end = _EPOCH + timedelta(microseconds=int(d["end_us"]))
            points = [
                _Point(_EPOCH + timedelta(microseconds=int(r["ts_us"])), float(r["temp_c"]))
                for r in (readings[i] if i < len(readings) else [])
            ]
            times = sorted(p.ts for p in points if start <= p.ts < end)
            g = gap_threshold(times, params)
            weighted, gaps = weigh(points, start, end, g)
            summary = summarize(weighted, gaps, end - start, limits, params.activation_k)
            name = f"segment {i + 1} ({d['device_id']})"
            if i < len(shown_segments):
                shown = _get(shown_segments[i], "summary", dict, "report.segments[]")
                self._compare(name, shown, summary, temp_tol)
            all_weighted += weighted
            all_gaps += gaps
            window += end - start
            for gap in gaps:
                self.v.gaps.append(
                    f"{d['device_id']}: no readings from {_fmt(gap.start)} to {_fmt(gap.end)}"
                    f" ({gap.duration.total_seconds() / 60:.0f} min)"
                )
        total = summarize(all_weighted, all_gaps, window, limits, params.activation_k)
        self._compare("the whole shipment", _get(self.report, "total", dict, "report"), total, temp_tol)

    def _compare(self, name: str, shown: Mapping[str, Any], computed: Summary, temp_tol: float) -> None:
        again = computed.to_dict()
        bad = []
        if shown.get("reading_count") != again["reading_count"]:
            bad.append(f"reading_count {shown.get('reading_count')} (recomputed {again['reading_count']})")
        for k in ("min_c", "max_c", "mean_c", "mkt_c", "window_s", "covered_s", "gap_s", "in_range_s",
                  "out_of_range_s"):  # fmt: skip
            if not _close(shown.get(k), again[k], temp_tol if k.endswith("_c") else _ABS_TOL):
                bad.append(f"{k} {shown.get(k)} (recomputed {again[k]})")
        beyond = {b["limit_id"]: b["beyond_s"] for b in again["beyond"]}
        for b in shown.get("beyond") or []:
            lid = b.get("limit_id") if isinstance(b, Mapping) else None
            if not _close(b.get("beyond_s") if isinstance(b, Mapping) else None, beyond.get(lid)):
                bad.append(f"time beyond {lid}")
        if bad:
            self.fail(f"report figures of {name}: {'; '.join(bad)}")

    # -- how staff handled excursions ------------------------------------------------------

    def _alerts(self) -> None:
        events: list[tuple[int, AlertEvent]] = []
        for index in _get(self.ev, "alert_leaves", list, "evidence"):
            rec = self.records.get(index)
            if isinstance(rec, AlertEvent):
                events.append((index, rec))
            else:
                self.fail(f"alert event leaf {index}: not among the proved alert_event records")
        for x in _get(self.report, "excursions", list, "report"):
            aid = str(x.get("id"))
            for a in x.get("audit") or []:
                action = a.get("action")
                if action not in ("acknowledged", "resolved"):
                    continue
                who = f"alert {aid}'s {action} by {a.get('actor')}"
                at_us = _iso_us(a.get("at"))
                same = [(i, e) for i, e in events if e.alert_id == aid and e.change == action]
                match = [
                    (i, e) for i, e in same
                    if e.at_us == at_us and e.actor == (a.get("actor") or None)
                    and e.comment == (a.get("comment") or None)
                ]  # fmt: skip
                if match:
                    continue
                if same:
                    i, e = same[0]
                    differs = [
                        n for n, shown, logged in (
                            ("comment", a.get("comment") or None, e.comment),
                            ("actor", a.get("actor") or None, e.actor),
                            ("time", at_us, e.at_us),
                        ) if shown != logged
                    ]  # fmt: skip
                    self.fail(f"{who}: the {', '.join(differs)} shown differs from alert_event leaf {i}")
                else:
                    self.fail(f"{who}: no alert_event record of it in the log")

    # -- files -----------------------------------------------------------------------------

    def _files(self) -> None:
        leaves = _get(self.ev, "file_leaves", dict, "evidence")
        checked = 0
        for f in self.files:
            name = f.get("name")
            sha = f.get("sha256")
            index = leaves.get(sha)
            rec = self._record(index, FileManifest, f"file {name!r}")
            if rec is None:
                continue
            where = f"file {name!r} ({rec.kind} leaf {index})"
            if rec.sha256 != sha or rec.size != f.get("size") or rec.content_type != f.get("content_type"):
                self.fail(f"{where}: the file shown differs from its manifest")
                continue
            content = f.get("content_b64")
            if content is None:
                reason = f.get("omitted") or "not in the bundle"
                if "missing" in reason:
                    self.fail(f"{where}: its bytes are {reason}")
                else:
                    self.v.notes.append(f"{where}: not checked, {reason}")
                continue
            data = _b64(content, f"file {name!r}'s content")
            got = hashlib.sha256(data).hexdigest()
            if got != rec.sha256:
                self.fail(f"{where}: its bytes hash to {got[:16]}…, the manifest says {rec.sha256[:16]}…")
                continue
            checked += 1
        if self.files:
            self.v.notes.append(f"{checked} of {len(self.files)} files match their manifests")

    # -- RFC 3161 ----------------------------------------------------------------------------

    def _timestamp(self, cp: Checkpoint) -> None:
        ts = self.b.get("timestamp")
        if not isinstance(ts, Mapping):
            self.v.notes.append("timestamp: none in this bundle")
            return
        if ts.get("status") != "stamped":
            self.v.notes.append(f"timestamp: none ({ts.get('status')}: {ts.get('detail')})")
            return
        note = _get(ts, "checkpoint", str, "timestamp")
        size = ts.get("size")
        what = f"timestamp of checkpoint {size}"
        try:
            anchored = verify_checkpoint(note, self.vkey)
        except VerificationFailed as exc:
            self.fail(f"{what}: the timestamped checkpoint is not signed by the key given ({exc.detail})")
            return
        if anchored.size != size:
            self.fail(f"{what}: the timestamped checkpoint is of size {anchored.size}")
            return
        proof = [
            _b64(h, "timestamp.consistency_proof") for h in _get(ts, "consistency_proof", list, "timestamp")
        ]
        try:
            if anchored.size > cp.size:
                raise VerificationFailed(
                    "checkpoints", "the timestamped checkpoint is newer than the bundle's"
                )
            verify_checkpoint_consistency(anchored, cp, proof)
        except VerificationFailed as exc:
            self.fail(f"{what}: the bundle's checkpoint does not extend it ({exc.detail})")
            return
        closed = self.ev.get("closed_leaf")
        if isinstance(closed, int) and closed >= anchored.size:
            self.fail(f"{what}: it does not include the shipment's closing record (leaf {closed})")
        der = _b64(_get(ts, "response_der_b64", str, "timestamp"), "timestamp.response_der_b64")
        try:
            response = rfc3161_client.decode_timestamp_response(der)
            info = response.tst_info
            algorithm, imprint, gen_time = (
                info.message_imprint.hash_algorithm,
                info.message_imprint.message,
                info.gen_time,
            )
        except ValueError as exc:
            self.fail(f"{what}: the token cannot be read ({exc})")
            return
        digest = hashlib.sha256(note.encode("utf-8")).digest()
        if algorithm != SHA256_OID or imprint != digest:
            self.fail(f"{what}: the token's message imprint is not SHA-256 of the checkpoint")
            return
        embedded = [x509.load_der_x509_certificate(c) for c in response.signed_data.certificates]
        roots = self.tsa_certs or [c for c in embedded if _self_signed(c)]
        tsa = _signer_name(response, embedded)
        when = gen_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if not roots:
            self.v.notes.append(
                f"timestamp: {when} by {tsa}, over checkpoint {size}; its signature NOT checked: the token"
                " carries no root certificate (give the TSA's with --tsa-cert)"
            )
            return
        try:
            rfc3161_client.VerifierBuilder(roots=list(roots)).build().verify(response, digest)
        except (rfc3161_client.VerificationError, ValueError) as exc:
            self.fail(f"{what}: the token's signature does not verify ({exc})")
            return
        source = (
            "TSA certificate checked against --tsa-cert"
            if self.tsa_certs
            else "signed by the certificate the token carries, not by one you chose:"
            " give --tsa-cert to pin the TSA"
        )
        self.v.notes.append(f"timestamp: {when} by {tsa}, over checkpoint {size} ({source})")


def _limit(d: Mapping[str, Any]) -> Limit:
    return Limit(
        id=str(d["id"]),
        kind=str(d["kind"]),
        direction=Direction(d["direction"]),
        threshold=float(d["threshold"]),
        inclusive=bool(d["inclusive"]),
        severity=str(d["severity"]),
        budget_s=None if d.get("budget_s") is None else float(d["budget_s"]),
    )


def _close(a: object, b: object, abs_tol: float = _ABS_TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _signer_name(response: Any, certs: Sequence[x509.Certificate]) -> str:
    infos = list(response.signed_data.signer_infos)
    for cert in certs:
        if infos and cert.issuer == infos[0].issuer and cert.serial_number == infos[0].serial_number:
            return cert.subject.rfc4514_string()
    return "an unnamed TSA"


__all__ = ["BUNDLE_FORMAT", "BundleError", "Verdict", "load_tsa_certificates", "verify_bundle"]
