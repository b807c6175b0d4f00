"""`origincast keys …`: the evidence log's signing key.

    origincast keys init --origin trust.example.com/log [--file PATH]
    origincast keys show [--file PATH]

The key file is made once (mode 0600, never overwritten) and lives outside the
database, so no database backup carries it; point ``ORIGINCAST_EVIDENCE_KEY_FILE`` at
it. Only the public verifier key is ever printed: it is what goes into the QR codes.
"""

from __future__ import annotations

import argparse
import sys

from telemetry.evidence.keys import KeyFileError, init_key, load_key
from web.config import Config

DEFAULT_KEY_FILE = "origincast-log.key"


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the evidence log's signing key: init, show")
    keys = p.add_subparsers(dest="keys_command", required=True)
    a = keys.add_parser("init", help="make the signing key file (once; never overwritten)")
    a.add_argument(
        "--origin", required=True, help="the log's name in its checkpoints, e.g. trust.example.com/log"
    )
    a.add_argument("--file", help=f"where (default: $ORIGINCAST_EVIDENCE_KEY_FILE or {DEFAULT_KEY_FILE})")
    a = keys.add_parser("show", help="print the public verifier key")
    a.add_argument("--file", help="the key file (default as for init)")


def cmd_keys(config: Config, args: argparse.Namespace) -> None:
    path = args.file or config.evidence_key_file or DEFAULT_KEY_FILE
    try:
        signer = init_key(path, args.origin) if args.keys_command == "init" else load_key(path)
    except KeyFileError as exc:
        print(f"origincast: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.keys_command == "init":
        print(f"signing key written to {path} (mode 600); keep it out of database backups")
        print(f"serve with ORIGINCAST_EVIDENCE_KEY_FILE={path}")
    print(f"public key: {signer.vkey}")
