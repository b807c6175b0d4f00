"""The log's signing key file: made once, read at start, never shown.

The file holds one line, the signer key in Go's note format
(``PRIVATE+KEY+<name>+<id>+<base64>``), readable by its owner only. It lives outside
the database, so no database backup carries it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from telemetry.evidence.note import NoteError, NoteSigner, valid_name


class KeyFileError(RuntimeError):
    """A key file that cannot be made or used (the message never contains the key)."""


def init_key(path: str | os.PathLike[str], origin: str) -> NoteSigner:
    """Make a new Ed25519 key named ``origin`` (the log's checkpoint origin, e.g.
    ``trust.example.com/log``) and write it to ``path`` with mode 0600. An existing file
    is never overwritten: replacing a log's key is a decision, not an accident."""
    if not valid_name(origin):
        raise KeyFileError(f"invalid log origin {origin!r}: it must be non-empty, with no spaces or '+'")
    path = Path(path)
    signer = NoteSigner.generate(origin)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a signing key") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask left
        os.write(fd, (signer.export_skey() + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return signer


def load_key(path: str | os.PathLike[str]) -> NoteSigner:
    """Read the key file; refused when others may read or write it (as ssh does)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no signing key at {path}; make one with `origincast keys init`") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is accessible by other users (mode {st.st_mode & 0o777:o}); chmod 600 it")
    text = path.read_text(encoding="utf-8").strip()
    try:
        return NoteSigner.from_skey(text)
    except NoteError as exc:
        # the reason only: the file's content must not reach a log line
        raise KeyFileError(f"{path} is not a signing key: {exc}") from None
