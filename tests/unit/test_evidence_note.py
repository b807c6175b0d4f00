"""Signed notes and checkpoints against published examples (Go's note package, the
C2SP spec, a real checkpoint of Go's checksum database) and an independent Ed25519
implementation (OpenSSL)."""

from __future__ import annotations

import base64
import hashlib
import pickle
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from telemetry.evidence.note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    SignatureError,
    key_id,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)

# golang.org/x/mod/sumdb/note, note.go's package documentation and note_test.go
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
# C2SP signed-note.md (commit d4c16da5e7687a016619074e78dad84b2c7238cc), its example
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
# Go's checksum database: its published verifier key and a signed tree head it served
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n65209736\n5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo=\n\n"
    "\u2014 sum.golang.org "
    "Az3grnbssgK7ubgFX36gVETtNv0U23qxyAhAMai2QUfeGa3nB/akvkMdlUErfcZz7l/R3cVtYspg3dxXABkGZZKdsQ8=\n"
)


def test_go_key_strings_and_signature_byte_for_byte() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.key_id == 0xC74F20A3
    assert signer.vkey == GO_VKEY
    assert signer.export_skey() == GO_SKEY
    assert sign_note(GO_TEXT, [signer]) == GO_NOTE
    note = open_note(GO_NOTE, [NoteVerifier.from_vkey(GO_VKEY)])
    assert note.text == GO_TEXT
    assert [(s.name, s.key_id) for s in note.sigs] == [("PeterNeumann", 0xC74F20A3)]


def test_key_id_is_computed_as_the_spec_says() -> None:
    v = NoteVerifier.from_vkey(GO_VKEY)
    raw = base64.b64decode(GO_VKEY.split("+", 2)[2])
    assert raw[0] == 0x01
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + raw[1:]).digest()[:4]
    assert key_id("PeterNeumann", raw) == int.from_bytes(expected, "big") == v.key_id


def test_spec_example_verifies() -> None:
    note = open_note(SPEC_NOTE, [NoteVerifier.from_vkey(SPEC_VKEY)])
    assert note.text == "This is an example message.\n"
    assert note.sigs[0].key_id == 0x530D903A


def test_a_real_go_checksum_database_checkpoint_verifies() -> None:
    cp, note = open_checkpoint(SUMDB_NOTE, NoteVerifier.from_vkey(SUMDB_VKEY), origin="go.sum database tree")
    assert cp.size == 65209736
    assert base64.b64encode(cp.root_hash).decode() == "5+uGFjx6xBZG8ip1+wi77v+grwbhhukIrxEUS8PXvRo="
    assert note.sigs[0].name == "sum.golang.org"
    with pytest.raises(SignatureError):
        open_checkpoint(SUMDB_NOTE.replace("65209736", "65209737"), NoteVerifier.from_vkey(SUMDB_VKEY))


@pytest.mark.parametrize(
    "bad",
    [
        GO_VKEY[:-1],
        GO_VKEY.replace("c74f20a3", "c74f20a4"),
        GO_VKEY.replace("PeterNeumann", "PeterNeuman"),
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # note_test.go
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # note_test.go
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "",
    ],
)
def test_mangled_verifier_keys_are_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_vkey(bad)


@pytest.mark.parametrize("cut", [1, 5, 20, len(GO_SKEY) - 1])
def test_mangled_signer_keys_are_refused(cut: int) -> None:
    with pytest.raises(NoteError):
        NoteSigner.from_skey(GO_SKEY[:cut])
    with pytest.raises(NoteError):
        NoteSigner.from_skey(GO_SKEY[cut:])


def test_open_note_follows_gos_rules() -> None:
    peter = NoteVerifier.from_vkey(GO_VKEY)
    other = NoteSigner.generate("other.example/log")
    # an unknown key's signature is kept aside, the known one still verifies
    both = sign_note(GO_TEXT, [other, NoteSigner.from_skey(GO_SKEY)])
    note = open_note(both, [peter])
    assert [s.name for s in note.sigs] == ["PeterNeumann"]
    assert [s.name for s in note.unverified_sigs] == ["other.example/log"]
    # only unknown keys: refused
    with pytest.raises(SignatureError):
        open_note(sign_note(GO_TEXT, [other]), [peter])
    # a changed text: the known key's signature fails
    with pytest.raises(SignatureError):
        open_note(GO_NOTE.replace("problem,", "problem;"), [peter])
    # a signature by the right name and id but another key: fails
    impostor = NoteSigner.generate("PeterNeumann")
    forged_line = sign_note(GO_TEXT, [impostor]).split("\n\n", 1)[1]
    sig = base64.b64decode(forged_line.split(" ")[2])
    forged = (
        GO_TEXT + "\n\u2014 PeterNeumann " + base64.b64encode(b"\xc7\x4f\x20\xa3" + sig[4:]).decode() + "\n"
    )
    with pytest.raises(SignatureError):
        open_note(forged, [peter])
    for malformed in [GO_TEXT, GO_NOTE[:-1], GO_NOTE.replace("\u2014", "-"), GO_NOTE.replace("\n", "\r\n")]:
        with pytest.raises(NoteError):
            open_note(malformed, [peter])


def test_checkpoint_body_round_trip_and_rules() -> None:
    cp = Checkpoint(
        "example.com/behind-the-sofa",
        20852163,
        base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    text = cp.text()
    assert text == "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert Checkpoint.from_text(text) == cp
    for bad in [
        "origin\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n12\nCsUY\n",
        "origin\n12\n",
        "origin\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "origin\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\next\n",
    ]:
        with pytest.raises(NoteError):
            Checkpoint.from_text(bad)


def test_checkpoint_origin_must_be_the_keys_name() -> None:
    signer = NoteSigner.generate("trust.example/log")
    note = sign_checkpoint(Checkpoint("another.example/log", 3, bytes(32)), signer)
    with pytest.raises(SignatureError):
        open_checkpoint(note, signer.verifier())


def test_signer_never_shows_its_private_key() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    secret = GO_SKEY.rsplit("+", 1)[1]
    for shown in (repr(signer), str(signer), f"{signer}", repr([signer])):
        assert secret not in shown and "PRIVATE" not in shown
    with pytest.raises(TypeError):
        pickle.dumps(signer)


def test_openssl_verifies_our_checkpoint_signature(tmp_path: Path) -> None:
    """An independent Ed25519 implementation accepts the signature on our checkpoint."""
    signer = NoteSigner.generate("trust.example/log")
    text = Checkpoint("trust.example/log", 42, bytes(range(32))).text()
    note = sign_note(text, [signer])
    sig = base64.b64decode(note.split("\n\n")[1].split(" ")[2])
    assert int.from_bytes(sig[:4], "big") == signer.key_id
    (tmp_path / "text").write_text(text)
    (tmp_path / "sig").write_bytes(sig[4:])
    pem = Ed25519PublicKey.from_public_bytes(signer.public_key).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    cmd = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "pub.pem",
        "-rawin",
        "-in",
        "text",
        "-sigfile",
        "sig",
    ]
    ok = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "text").write_text(text.replace("42", "43"))
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
