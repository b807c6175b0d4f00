"""`origincast verify`: check an offline evidence bundle with no access to any server.

    origincast verify BUNDLE --key <vkey>       (the log's public key, e.g. from the QR code)
    origincast verify BUNDLE --key-file FILE    (a file holding that key's text)
                             [--tsa-cert PEM]   (the timestamp authority's root certificate(s))

The key is given separately on purpose: the bundle carries the key its server served,
and whoever could edit the bundle could swap that one too. The first line printed is
the verdict: ``verified``, ``verified, N gaps`` (each gap listed after it) or
``MISMATCH: <what, naming the record>`` (every mismatch found, one a line). Exit codes:
0 verified (with or without gaps), 1 a mismatch, 2 a file that is no readable bundle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from web.verify_bundle import BundleError, load_tsa_certificates, verify_bundle

EXIT_VERIFIED, EXIT_MISMATCH, EXIT_UNREADABLE = 0, 1, 2
MAX_BUNDLE_BYTES = 1024**3  # a guard against a wrong file, far above any bundle's cap


def add_verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a shipment's evidence bundle offline (downloaded from its trust page)",
        description="Check an evidence bundle with nothing but the log's public key: no network.",
    )
    p.add_argument("bundle", help="the bundle file (<shipment>.evidence.json); - reads standard input")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="the log's public key (<name>+<id>+<base64>), e.g. from the QR code")
    key.add_argument("--key-file", help="a file holding the log's public key")
    p.add_argument(
        "--tsa-cert",
        help="PEM file of the timestamp authority's root (and intermediate) certificates to trust;"
        " without it the token is checked against the root certificate it carries",
    )


def cmd_verify(args: argparse.Namespace) -> None:
    """Print the verdict and exit with its code (never returns)."""
    raise SystemExit(run(args.bundle, args.key, args.key_file, args.tsa_cert))


def run(bundle_path: str, key: str | None, key_file: str | None, tsa_cert: str | None) -> int:
    try:
        vkey = key.strip() if key is not None else Path(key_file or "").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return _unreadable(f"cannot read the key file: {exc}")
    certs = None
    if tsa_cert:
        try:
            certs = load_tsa_certificates(Path(tsa_cert).read_bytes())
        except (OSError, ValueError) as exc:
            return _unreadable(f"cannot read --tsa-cert {tsa_cert}: {exc}")
    try:
        raw = sys.stdin.buffer.read(MAX_BUNDLE_BYTES + 1) if bundle_path == "-" else _read(bundle_path)
        if len(raw) > MAX_BUNDLE_BYTES:
            return _unreadable(f"{bundle_path} is larger than {MAX_BUNDLE_BYTES} bytes")
        bundle = orjson.loads(raw)
        verdict = verify_bundle(bundle, vkey, certs)
    except OSError as exc:
        return _unreadable(f"cannot read {bundle_path}: {exc}")
    except orjson.JSONDecodeError as exc:
        return _unreadable(f"{bundle_path} is not JSON: {exc}")
    except BundleError as exc:
        return _unreadable(f"{bundle_path}: {exc}")
    print("\n".join(verdict.lines()))
    return EXIT_VERIFIED if verdict.ok else EXIT_MISMATCH


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_BUNDLE_BYTES + 1)


def _unreadable(message: str) -> int:
    print(f"unreadable: {message}")
    return EXIT_UNREADABLE
