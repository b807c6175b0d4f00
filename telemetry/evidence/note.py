"""C2SP signed notes (Ed25519) and C2SP tlog-checkpoint bodies.

Key strings follow Go's golang.org/x/mod/sumdb/note, so keys made here work with Go's
tools and the other way round:

- verifier key ``<name>+<key id, 8 hex>+<base64(0x01 || public key)>``
- signer key ``PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x01 || seed)>``

key id = first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key), big-endian.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100  # what Go's note.Open accepts; the spec asks for at least 16
_HEX8 = re.compile(r"^[0-9a-f]{8}$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")


class NoteError(ValueError):
    """A malformed note or key string."""


class SignatureError(NoteError):
    """A signature by a known key that does not verify, or no known key signed."""


def valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, alg_key: bytes) -> int:
    """The note key id of ``alg_key`` (algorithm byte || public key) under ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + alg_key).digest()[:4], "big")


def _b64decode(s: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"not base64: {exc}") from None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class NoteVerifier:
    """An Ed25519 note verifier (a public key under a name)."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        if not valid_name(name):
            raise NoteError(f"invalid key name {name!r}")
        if len(public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, bytes([ALG_ED25519]) + public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        parts = vkey.split("+", 2)  # base64 may itself contain "+"
        if len(parts) != 3 or not _HEX8.match(parts[1]):
            raise NoteError("a verifier key is <name>+<8 hex digits>+<base64 key>")
        name, hex_id, b64 = parts
        raw = _b64decode(b64)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("not an Ed25519 verifier key")
        v = cls(name, raw[1:])
        if v.key_id != int(hex_id, 16):
            raise NoteError("the verifier key's id does not match its name and key")
        return v

    @property
    def vkey(self) -> str:
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{b64}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self.vkey!r})"


class NoteSigner:
    """An Ed25519 note signer. Its repr and str never show the private key; only
    ``export_skey`` does, for keys.init_key to write the key file."""

    __slots__ = ("_private", "key_id", "name", "public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_name(name):
            raise NoteError(f"invalid key name {name!r}")
        self.name = name
        self._private = private_key
        self.public_key = _raw_public(private_key.public_key())
        self.key_id = key_id(name, bytes([ALG_ED25519]) + self.public_key)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        parts = skey.removeprefix("PRIVATE+KEY+").split("+", 2)  # base64 may itself contain "+"
        if not skey.startswith("PRIVATE+KEY+") or len(parts) != 3 or not _HEX8.match(parts[1]):
            raise NoteError("a signer key is PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>")
        name, hex_id, b64 = parts
        raw = _b64decode(b64)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("not an Ed25519 signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id != int(hex_id, 16):
            raise NoteError("the signer key's id does not match its name and key")
        return signer

    def export_skey(self) -> str:
        seed = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{b64}"

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return self.verifier().vkey

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_id={self.key_id:08x})"

    __str__ = __repr__

    def __reduce__(self) -> tuple:
        # pickling would carry the private key into whatever stores the pickle
        raise TypeError("a NoteSigner is not picklable")


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    for c in text:
        if c < " " and c != "\n":
            raise NoteError("note text must not contain control characters other than newline")


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    key_id: int
    base64: str  # base64(key id || signature), as on the signature line


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    sigs: tuple[Signature, ...]  # verified
    unverified_sigs: tuple[Signature, ...] = ()  # by keys not among the verifiers given


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """The signed note: text, a blank line, one signature line per signer."""
    _check_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    lines = []
    for s in signers:
        sig = s.key_id.to_bytes(4, "big") + s.sign(text.encode())
        lines.append(f"{SIG_PREFIX}{s.name} {base64.b64encode(sig).decode()}\n")
    return text + "\n" + "".join(lines)


def open_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> Note:
    """Parse and verify a signed note the way Go's note.Open does: signatures by unknown
    keys are kept aside, a known key whose signature fails rejects the note, and at least
    one known key must have signed."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not UTF-8") from None
    for c in note:
        if c < " " and c != "\n":
            raise NoteError("note contains control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("note's signature block must end with a newline")
    known = {(v.name, v.key_id): v for v in verifiers}
    sigs: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    seen_unknown: set[str] = set()
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"not a signature line: {line!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        raw = _b64decode(b64) if b64 else b""
        if not valid_name(name) or len(raw) < 5:
            raise NoteError(f"malformed signature line: {line!r}")
        kid = int.from_bytes(raw[:4], "big")
        sig = Signature(name, kid, b64)
        v = known.get((name, kid))
        if v is None:
            if line not in seen_unknown:
                seen_unknown.add(line)
                unverified.append(sig)
            continue
        if (name, kid) in seen:
            continue
        seen.add((name, kid))
        if not v.verify(text.encode(), raw[4:]):
            raise SignatureError(f"signature by {name} ({kid:08x}) does not verify")
        sigs.append(sig)
    if not sigs:
        raise SignatureError("note is not signed by any of the known keys")
    return Note(text, tuple(sigs), tuple(unverified))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The body of a C2SP tlog-checkpoint: origin, tree size, root hash (+ extensions)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or any(c.isspace() for c in self.origin):
            raise NoteError(f"invalid checkpoint origin {self.origin!r}")
        if self.size < 0 or len(self.root_hash) != 32:
            raise NoteError("checkpoint needs a size >= 0 and a 32-byte root hash")
        if any(not e or "\n" in e for e in self.extensions):
            raise NoteError("checkpoint extension lines must be non-empty single lines")
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise NoteError("a checkpoint is at least three non-empty lines")
        origin, size, root_b64, *ext = lines
        if not _DECIMAL.match(size):
            raise NoteError(f"checkpoint size {size!r} is not a decimal without leading zeroes")
        root_hash = _b64decode(root_b64)
        if len(root_hash) != 32:
            raise NoteError("checkpoint root hash is not 32 bytes")
        return cls(origin, int(size), root_hash, tuple(ext))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    return sign_note(checkpoint.text(), [signer])


def open_checkpoint(
    note: str | bytes, verifier: NoteVerifier, origin: str | None = None
) -> tuple[Checkpoint, Note]:
    """Verify a checkpoint signed by ``verifier`` for the log ``origin`` (by default the
    key's name, as tlog-checkpoint recommends and origincast's logs do)."""
    opened = open_note(note, [verifier])
    cp = Checkpoint.from_text(opened.text)
    expected = verifier.name if origin is None else origin
    if cp.origin != expected:
        raise SignatureError(f"checkpoint origin {cp.origin!r} is not {expected!r}")
    return cp, opened
