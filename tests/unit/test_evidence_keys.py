"""The signing key file: 0600, never overwritten, never shown."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from telemetry.evidence.keys import KeyFileError, init_key, load_key
from telemetry.evidence.note import NoteVerifier, open_note, sign_note


def test_init_writes_a_0600_key_that_loads_and_signs(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    old = os.umask(0)  # even a permissive umask must not widen the file's mode
    try:
        signer = init_key(path, "trust.example.com/log")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert content.startswith("PRIVATE+KEY+trust.example.com/log+") and content.endswith("\n")
    loaded = load_key(path)
    assert (loaded.name, loaded.key_id, loaded.vkey) == (signer.name, signer.key_id, signer.vkey)
    note = sign_note("hello\n", [loaded])
    assert open_note(note, [NoteVerifier.from_vkey(signer.vkey)]).text == "hello\n"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    init_key(path, "trust.example.com/log")
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        init_key(path, "trust.example.com/log")
    assert path.read_bytes() == before


@pytest.mark.parametrize("origin", ["", "has space", "a+b"])
def test_init_refuses_bad_origins(tmp_path: Path, origin: str) -> None:
    with pytest.raises(KeyFileError):
        init_key(tmp_path / "k", origin)
    assert not (tmp_path / "k").exists()


def test_load_refuses_a_key_others_can_read_and_never_echoes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.key"
    init_key(path, "trust.example.com/log")
    secret = path.read_text().strip().rsplit("+", 1)[1]
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600") as exc:
        load_key(path)
    assert secret not in str(exc.value)
    path.chmod(0o600)
    path.write_text(path.read_text().replace("+", "-", 3))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyFileError) as exc:
        load_key(path)
    assert secret not in str(exc.value) and secret not in caplog.text
    with pytest.raises(KeyFileError, match="keys init"):
        load_key(tmp_path / "missing.key")
