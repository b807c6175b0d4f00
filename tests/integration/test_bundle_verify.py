"""Offline evidence bundles and `origincast verify`, end to end, on SQLite and PostgreSQL.

A real server (readings over MQTT through mosquitto, a signing key file, a local RFC 3161
timestamp authority) closes a shipment with readings on two devices, an acknowledged
excursion and a test report; the bundle downloaded from its trust page verifies with
the CLI run as a subprocess, with nothing but the log's public key (a version 1 bundle,
as earlier servers made them, still does). Then the record is
changed behind the server's back, directly in the database or the file store — a
reading changed, one deleted, a batch's readings dropped, an acknowledgement's comment
edited, the PDF swapped, the log served under another key — and each fresh bundle is a
MISMATCH naming the record, while a shipment nobody touched still verifies. A bundle
edited by hand, and a timestamp token over another hash, are mismatches too.

The timestamp authority is Debian's ``openssl ts -reply`` behind a tiny HTTP endpoint on
127.0.0.1, with a CA and TSA certificate made here; it starts "down", so the first close
also shows that a close neither waits for nor fails on the TSA, and that the token comes
once the TSA answers.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from telemetry.alerts.lifecycle import SYSTEM, Action, Alert, AuditEntry, acknowledged
from telemetry.alerts.rules import Severity
from telemetry.evidence.canonical import unpack_readings
from telemetry.evidence.keys import init_key
from telemetry.evidence.note import NoteSigner
from tests.integration.test_serve import _publish
from web.app import PUBLIC_LIMITER, STORE, build_app
from web.config import load_config
from web.tsa import TimestampClient, TimestampError, check_response
from web.verify_bundle import BundleError, verify_bundle

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "bundle-admin-token-0123456789abcdef"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UTC = dt.UTC
T0 = dt.datetime.now(UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=4)
PDF = b"%PDF-1.4\n% origincast test report: total viable count below limit\n%%EOF\n"
OTHER_PDF = b"%PDF-1.4\n% a different report, swapped in behind the server's back\n%%EOF\n"


# -- a local timestamp authority ------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_tsa_certs(folder: Path) -> None:
    now = dt.datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("origincast test TSA root"))
        .issuer_name(_name("origincast test TSA root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        # openssl writes the token's certificates (TSA first, then this one) in that
        # order, and DER, which rfc3161-client holds it to, sorts a SET OF by encoding:
        # the root must be the longer one, so it carries a name nobody reads.
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("urn:origincast:tests:tsa-root:never-trusted-outside-tests")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa = (
        x509.CertificateBuilder()
        .subject_name(_name("origincast test TSA"))
        .issuer_name(ca.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "tsa.pem").write_bytes(tsa.public_bytes(pem))
    (folder / "tsa.key").write_bytes(
        tsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "serial").write_text("01\n")
    (folder / "ts.cnf").write_text(
        "[ tsa ]\ndefault_tsa = tsa_config\n[ tsa_config ]\n"
        f"serial = {folder / 'serial'}\ncrypto_device = builtin\n"
        f"signer_cert = {folder / 'tsa.pem'}\ncerts = {folder / 'ca.pem'}\n"
        f"signer_key = {folder / 'tsa.key'}\n"
        "signer_digest = sha256\ndefault_policy = 1.3.6.1.4.1.55555.1\nother_policies = 1.3.6.1.4.1.55555.2\n"
        "digests = sha256, sha384, sha512\naccuracy = secs:1\nordering = no\ntsa_name = yes\n"
        "ess_cert_id_chain = no\ness_cert_id_alg = sha256\n"
    )


class LocalTsa:
    """RFC 3161 over HTTP: each request answered by ``openssl ts -reply``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.up = False
        self.answered = 0
        self.refused = 0
        _make_tsa_certs(folder)

    async def handle(self, request: web.Request) -> web.Response:
        if not self.up:
            self.refused += 1
            return web.Response(status=503, text="down for the test")
        query = self.folder / f"q-{uuid.uuid4().hex}.tsq"
        reply = query.with_suffix(".tsr")
        query.write_bytes(await request.read())
        proc = await asyncio.create_subprocess_exec(
            "openssl", "ts", "-reply", "-config", str(self.folder / "ts.cnf"),
            "-queryfile", str(query), "-out", str(reply),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        self.answered += 1
        return web.Response(body=reply.read_bytes(), content_type="application/timestamp-reply")


@pytest.fixture
async def tsa(aiohttp_server: Any, tmp_path: Path) -> tuple[LocalTsa, str]:
    assert shutil.which("openssl"), "Debian's openssl is needed for the local TSA"
    folder = tmp_path / "tsa"
    folder.mkdir()
    local = LocalTsa(folder)
    app = web.Application()
    app.router.add_post("/tsr", local.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return local, str(server.make_url("/tsr"))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


# -- helpers -----------------------------------------------------------------------------------


def _sql(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A statement run behind the server's back, on a connection of its own."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=10)
        try:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []


def _verify(bundle: Path, *args: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "web", "verify", str(bundle), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    return out.returncode, out.stdout + out.stderr


def _alert(alert_id: int, device: str, start: dt.datetime) -> Alert:
    return Alert(
        id=alert_id,
        device_id=device,
        profile_id="chilled",
        rule_id="upper",
        rule_kind="limit",
        severity=Severity.MAJOR,
        start=start,
        raised_at=start + dt.timedelta(minutes=5),
        metric="temp_c",
        threshold=4.0,
        peak=6.5,
        peak_at=start + dt.timedelta(minutes=3),
        audit=(AuditEntry(start + dt.timedelta(minutes=5), Action.RAISED, SYSTEM, "", 6.5),),
    )


class Scenario:
    def __init__(self, client: Any, mosquitto: Any, db_url: str, tmp: Path) -> None:
        self.client = client
        self.mosquitto = mosquitto
        self.db_url = db_url
        self.tmp = tmp

    async def readings(self, device: str, start: dt.datetime, minutes: int, base: float) -> None:
        """One reading a minute, in two publishes (so in more than one batch)."""
        ms = int(start.timestamp() * 1000)
        payloads = [
            json.dumps({"ts": ms + i * 60_000, "temp_c": base + (i % 7) * 0.25, "seq": 1000 + i}).encode()
            for i in range(minutes)
        ]
        topic = f"origincast/{device}/telemetry"
        half = minutes // 2
        await asyncio.to_thread(_publish, self.mosquitto.host, self.mosquitto.port, topic, payloads[:half])
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_publish, self.mosquitto.host, self.mosquitto.port, topic, payloads[half:])
        for _ in range(200):
            rows = _sql(self.db_url, "SELECT count(*) FROM readings WHERE device_id = ?", (device,))
            if rows[0][0] == minutes:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{device}: {rows[0][0]} of {minutes} readings stored")

    async def shipment(self, sid: str, batch: str, segments: list[tuple[str, dt.datetime]]) -> None:
        r = await self.client.post(
            "/api/v1/shipments",
            json={
                "id": sid, "product": "冻带鱼 Frozen hairtail", "batch": batch, "origin_site": "zhoushan",
                "profile_id": "chilled", "opened_at": segments[0][1].isoformat(),
                "segments": [
                    {"device_id": d, "start": t.isoformat(), "label": f"{d} leg",
                     "end": segments[i + 1][1].isoformat() if i + 1 < len(segments) else None}
                    for i, (d, t) in enumerate(segments)
                ],
            },
            headers=ADM,
        )  # fmt: skip
        assert r.status == 201, await r.text()

    async def close(self, sid: str, at: dt.datetime) -> None:
        r = await self.client.post(f"/api/v1/shipments/{sid}/close", json={"at": at.isoformat()}, headers=ADM)
        assert r.status == 200, await r.text()

    async def bundle(self, sid: str, name: str) -> tuple[Path, dict[str, Any]]:
        r = await self.client.get(f"/api/v1/public/shipments/{sid}/bundle")  # no login
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers["Content-Disposition"] == f'attachment; filename="{sid}.evidence.json"'
        raw = await r.read()
        path = self.tmp / f"{name}.evidence.json"
        path.write_bytes(raw)
        return path, json.loads(raw)

    async def stamped_bundle(self, sid: str, name: str) -> tuple[Path, dict[str, Any]]:
        for _ in range(100):
            path, body = await self.bundle(sid, name)
            if body["timestamp"]["status"] == "stamped":
                return path, body
            await asyncio.sleep(0.1)
        raise AssertionError(f"no timestamp came: {body['timestamp']}")


async def test_bundle_verifies_offline_and_names_every_tampered_record(
    aiohttp_client: Any, mosquitto: Any, db: str, tmp_path: Path, tsa: tuple[LocalTsa, str]
) -> None:
    local_tsa, tsa_url = tsa
    key_file = tmp_path / "log.key"
    signer = init_key(key_file, "trust.origincast.test/log")
    files_dir = tmp_path / "files"
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": db,
            "ORIGINCAST_MQTT_URL": mosquitto.url,
            "ORIGINCAST_INGEST_CLIENT_ID": f"bundle-{uuid.uuid4().hex[:8]}",
            "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ORIGINCAST_FILES_DIR": str(files_dir),
            "ORIGINCAST_EVIDENCE_KEY_FILE": str(key_file),
            "ORIGINCAST_EVIDENCE_TSA_URL": tsa_url,
            "ORIGINCAST_EVIDENCE_TSA_RETRY_S": "0.2",
        }
    )
    client = await aiohttp_client(build_app(config))
    # This test downloads bundle after bundle from one address (polling for the token
    # too): more than the per-address rate limit (web.rate_limit) lets through.
    client.app[PUBLIC_LIMITER].burst = 1e9
    sc = Scenario(client, mosquitto, db, tmp_path)
    tag = uuid.uuid4().hex[:6]
    room, truck, spare = f"room-{tag}", f"truck-{tag}", f"spare-{tag}"
    key = ["--key", signer.vkey]
    pinned = [*key, "--tsa-cert", str(local_tsa.folder / "ca.pem")]

    # Shipment 1: a cold room for an hour, then a truck for an hour; an excursion in the
    # room, acknowledged with a comment; a test report.
    await sc.readings(room, T0, 60, 2.0)
    await sc.readings(truck, T0 + dt.timedelta(minutes=60), 60, 3.0)
    await sc.shipment("fish-1", f"F-{tag}", [(room, T0), (truck, T0 + dt.timedelta(minutes=60))])
    store = client.app[STORE]
    alert_id = await asyncio.to_thread(store.max_alert_id) + 100
    alert = acknowledged(
        _alert(alert_id, room, T0 + dt.timedelta(minutes=20)), "li.wei", "门未关好 door ajar, closed",
        T0 + dt.timedelta(minutes=30),
    )  # fmt: skip
    await asyncio.to_thread(store.record_alert, alert, "zhoushan", T0 + dt.timedelta(minutes=30))
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("kind", "test_report")
    form.add_field("shipment_id", "fish-1")
    form.add_field("file", PDF, filename="report.pdf", content_type="application/pdf")
    r = await client.post(f"/api/v1/batches/F-{tag}/files", data=form, headers=ADM)
    assert r.status == 201, await r.text()
    # Shipment 2, on a device of its own: nobody touches it.
    await sc.readings(spare, T0, 90, -20.0)
    await sc.shipment("fish-2", f"G-{tag}", [(spare, T0)])

    # The TSA is down at the first close: the close still succeeds and the bundle says so.
    await sc.close("fish-2", T0 + dt.timedelta(minutes=90))
    path, body = await sc.bundle("fish-2", "spare-pending")
    assert body["timestamp"]["status"] == "pending" and "no timestamp yet" in body["timestamp"]["detail"]
    code, out = await asyncio.to_thread(_verify, path, *key)
    assert code == 0 and out.startswith("verified"), out
    assert "timestamp: none (pending" in out
    local_tsa.up = True
    spare_path, _ = await sc.stamped_bundle("fish-2", "spare")
    assert local_tsa.refused >= 1 and local_tsa.answered >= 1

    await sc.close("fish-1", T0 + dt.timedelta(minutes=120))
    path, bundle = await sc.stamped_bundle("fish-1", "fish-clean")
    assert bundle["format"] == "origincast-evidence-bundle" and bundle["version"] == 2
    assert bundle["vkey"] == signer.vkey and "obtained separately" in bundle["key_notice"]
    (f,) = bundle["files"]
    assert base64.b64decode(f["content_b64"]) == PDF and f["omitted"] is None
    assert bundle["report"]["excursions"][0]["audit"][-1]["comment"] == "门未关好 door ajar, closed"
    ts = bundle["timestamp"]
    assert ts["size"] > bundle["evidence"]["closed_leaf"] and ts["response_der_b64"]

    code, out = await asyncio.to_thread(_verify, path, *pinned)
    assert code == 0, out
    assert out.splitlines()[0] == "verified", out
    r = await client.get("/v/fish-1", headers={"Accept-Language": "zh-CN"})
    page = await r.text()
    assert 'href="/api/v1/public/shipments/fish-1/bundle" download' in page and "下载证据文件" in page
    assert "TSA certificate checked against --tsa-cert" in out and "CN=origincast test TSA" in out
    code, out = await asyncio.to_thread(_verify, path, *key)  # the token's own root
    assert code == 0 and out.splitlines()[0] == "verified", out
    assert "not by one you chose" in out
    key_file_copy = tmp_path / "vkey.txt"
    key_file_copy.write_text(signer.vkey + "\n")
    code, out = await asyncio.to_thread(_verify, path, "--key-file", str(key_file_copy))
    assert code == 0, out

    # -- tampering behind the server's back, then a fresh bundle each time --------------
    leaves = {
        d: [row[0] for row in _sql(db, "SELECT DISTINCT m.leaf_idx FROM readings r"
                                       " JOIN evidence_batch_leaves m ON m.batch_id = r.evidence_batch"
                                       " WHERE r.device_id = ? ORDER BY 1", (d,))]
        for d in (room, truck)
    }  # fmt: skip
    assert len(leaves[room]) >= 2 and len(leaves[truck]) >= 2, leaves

    async def mismatch(name: str, expected: str) -> str:
        path, _ = await sc.bundle("fish-1", name)
        code, out = await asyncio.to_thread(_verify, path, *pinned)
        assert code == 1, out
        assert out.startswith("MISMATCH: "), out
        assert expected in out, (expected, out)
        return out

    # the rows a leaf covers: its batch's (telemetry.storage.evidence_batches)
    of_leaf = "evidence_batch = (SELECT batch_id FROM evidence_batch_leaves WHERE leaf_idx = ?)"
    first_room = leaves[room][0]
    seq = _sql(db, f"SELECT min(seq) FROM readings WHERE {of_leaf}", (first_room,))[0][0]
    _sql(db, "UPDATE readings SET temp_c = temp_c + 5 WHERE device_id = ? AND seq = ?", (room, seq))
    await mismatch("changed", f"readings batch {first_room} ({room}): readings differ")

    last_room = leaves[room][-1]
    seq = _sql(db, f"SELECT max(seq) FROM readings WHERE {of_leaf}", (last_room,))[0][0]
    _sql(db, "DELETE FROM readings WHERE device_id = ? AND seq = ?", (room, seq))
    await mismatch("deleted", f"readings batch {last_room} ({room}):")

    dropped = leaves[truck][0]
    _sql(db, f"DELETE FROM readings WHERE {of_leaf}", (dropped,))
    await mismatch("dropped", f"readings batch {dropped} ({truck}): 0 readings")

    _sql(db, "UPDATE alert_audit SET comment = ? WHERE alert_id = ? AND action = 'acknowledged'",
         ("all fine, nothing happened", alert_id))  # fmt: skip
    await mismatch("comment", f"alert {alert_id}'s acknowledged by li.wei: the comment shown differs")

    blob = files_dir / f["sha256"][:2] / f["sha256"]
    blob.write_bytes(OTHER_PDF)
    await mismatch("swapped", "file 'report.pdf' (test_report leaf")

    # The log served under another key: the bundle's checkpoint is not the real key's.
    other_key = tmp_path / "other.key"
    init_key(other_key, "trust.origincast.test/log")
    other = await aiohttp_client(
        build_app(
            load_config(
                env={
                    "ORIGINCAST_DATABASE_URL": db,
                    "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
                    "ORIGINCAST_FILES_DIR": str(files_dir),
                    "ORIGINCAST_EVIDENCE_KEY_FILE": str(other_key),
                }
            ),
            with_ingest=False,
        )
    )
    r = await other.get("/api/v1/public/shipments/fish-2/bundle")
    assert r.status == 200
    resigned = tmp_path / "resigned.evidence.json"
    resigned.write_bytes(await r.read())
    code, out = await asyncio.to_thread(_verify, resigned, *pinned)
    assert code == 1 and out.startswith("MISMATCH: checkpoint trust.origincast.test/log @ "), out
    assert "the key given did not sign it" in out

    # -- the untouched shipment still verifies; hand edits of its bundle do not -----------
    path, _ = await sc.bundle("fish-2", "spare-again")
    code, out = await asyncio.to_thread(_verify, path, *pinned)
    assert code == 0 and out.splitlines()[0] == "verified", out
    assert f"{90} readings in" in out

    edited = json.loads(spare_path.read_text())
    some_batch, b64 = next(iter(edited["evidence"]["records"].items()))
    records = bytearray(base64.b64decode(b64))
    struct.pack_into("<f", records, 8, struct.unpack_from("<f", records, 8)[0] - 3.0)  # the first temp_c
    edited["evidence"]["records"][some_batch] = base64.b64encode(records).decode()
    hand = tmp_path / "hand-edited.evidence.json"
    hand.write_text(json.dumps(edited))
    code, out = await asyncio.to_thread(_verify, hand, *pinned)
    assert code == 1 and out.startswith(
        f"MISMATCH: readings batch {some_batch} ({spare}): readings differ"
    ), out
    assert "report figures of segment 1" in out

    forged = json.loads(spare_path.read_text())
    other_token, _ = await TimestampClient(tsa_url, 10).stamp(b"some other checkpoint\n")
    forged["timestamp"]["response_der_b64"] = base64.b64encode(other_token).decode()
    bad = tmp_path / "bad-token.evidence.json"
    bad.write_text(json.dumps(forged))
    code, out = await asyncio.to_thread(_verify, bad, *pinned)
    assert code == 1, out
    size = forged["timestamp"]["size"]
    assert out.startswith(
        f"MISMATCH: timestamp of checkpoint {size}: the token's message imprint"
        " is not SHA-256 of the checkpoint"
    ), out

    # A leaf changed by hand: the one proof for all the records no longer holds.
    leafy = json.loads(spare_path.read_text())
    some_leaf = next(iter(leafy["evidence"]["leaves"]))
    entry = base64.b64decode(leafy["evidence"]["leaves"][some_leaf]).replace(b'"v":1', b'"v":1 ')
    leafy["evidence"]["leaves"][some_leaf] = base64.b64encode(entry).decode()
    bad = tmp_path / "leaf-edited.evidence.json"
    bad.write_text(json.dumps(leafy))
    code, out = await asyncio.to_thread(_verify, bad, *pinned)
    assert code == 1 and "records (leaves " in out and "not all in the signed log" in out, out

    # A version 1 bundle (a proof per leaf, readings as JSON objects), as earlier servers
    # made them, still verifies; changed, it is a mismatch naming the batch.
    old = await _as_version_1(client, json.loads(spare_path.read_text()))
    v1 = tmp_path / "version-1.evidence.json"
    v1.write_text(json.dumps(old))
    code, out = await asyncio.to_thread(_verify, v1, *pinned)
    assert code == 0 and out.splitlines()[0] == "verified" and f"{90} readings in" in out, out
    first = next(iter(old["evidence"]["readings"]))
    old["evidence"]["readings"][first][0]["temp_c"] += 1.0
    v1.write_text(json.dumps(old))
    code, out = await asyncio.to_thread(_verify, v1, *pinned)
    assert code == 1 and out.startswith(f"MISMATCH: readings batch {first} ({spare}): readings differ"), out

    not_json = tmp_path / "not-a-bundle.json"
    not_json.write_text("{ this is not json")
    code, out = await asyncio.to_thread(_verify, not_json, *key)
    assert code == 2 and out.startswith("unreadable:"), out


async def _as_version_1(client: Any, bundle: dict[str, Any]) -> dict[str, Any]:
    """A version 2 bundle in version 1's form: each leaf's own inclusion proof (from the
    server's proofs endpoint, against the same checkpoint) and readings as JSON objects."""
    ev = bundle["evidence"]
    query = "&".join(f"index={i}" for i in ev["leaves"])
    r = await client.get(f"/api/v1/evidence/proofs?size={ev['size']}&{query}", headers=ADM)
    assert r.status == 200, await r.text()
    proofs = (await r.json())["proofs"]
    readings = {i: unpack_readings(base64.b64decode(b)) for i, b in ev.pop("records").items()}
    del ev["multiproof"]
    ev["proofs"], ev["readings"] = proofs, readings
    return {**bundle, "version": 1}


async def test_tsa_answers_are_checked_before_they_are_kept(tsa: tuple[LocalTsa, str]) -> None:
    local_tsa, url = tsa
    client = TimestampClient(url, 10)
    with pytest.raises(TimestampError, match="HTTP 503"):
        await client.stamp(b"checkpoint\n")  # the TSA is down
    local_tsa.up = True
    token, when = await client.stamp(b"checkpoint\n")
    assert abs((when - dt.datetime.now(UTC)).total_seconds()) < 60
    assert check_response(token, b"checkpoint\n", None) == when
    with pytest.raises(TimestampError, match="another hash"):
        check_response(token, b"another checkpoint\n", None)
    with pytest.raises(TimestampError, match="nonce"):
        check_response(token, b"checkpoint\n", 12345)
    with pytest.raises(TimestampError, match="not a timestamp response"):
        check_response(b"\x30\x03\x02\x01\x00", b"checkpoint\n", None)
    closed = TimestampClient("http://127.0.0.1:9/tsr", 2)  # nothing listens on the discard port
    with pytest.raises(TimestampError, match="unreachable"):
        await closed.stamp(b"checkpoint\n")


def test_what_is_not_a_bundle_is_unreadable(tmp_path: Path) -> None:
    vkey = NoteSigner.generate("trust.origincast.test/log").vkey
    with pytest.raises(BundleError, match="not an origincast evidence bundle"):
        verify_bundle({"shipment": {}}, vkey)
    with pytest.raises(BundleError, match="version"):
        verify_bundle({"format": "origincast-evidence-bundle", "version": 99}, vkey)
    with pytest.raises(BundleError, match="shipment"):
        verify_bundle({"format": "origincast-evidence-bundle", "version": 1}, vkey)
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    code, out = _verify(path, "--key", vkey)
    assert code == 2 and out.startswith("unreadable:") and "not an origincast evidence bundle" in out
