"""`origincast shipments …`: shipments from the shell (web.cli wires the group in).

    origincast shipments create --product Milk --batch 77 --origin-site farm-7 --profile chilled [--id ID]
    origincast shipments list [--state open|closed] [--origin-site S]
    origincast shipments show ID
    origincast shipments add-segment ID --device truck-7 [--start T] [--label "Truck 7"]
    origincast shipments close ID [--at T]
    origincast shipments report ID [--format json|csv|pdf] [--lang zh-CN|en] [-o FILE]

Writes go straight to the database, like the API's (the same rules: telemetry.shipments).
A close is the API's (web.evidence.close_shipment): the route's readings sealed into the
evidence log, the closing leaf, a checkpoint signed with ``evidence.key_file`` and, with
``evidence.tsa_url``, one attempt at the RFC 3161 token (a server's loop retries it).
Times are ISO 8601 with a zone; the default is now.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from telemetry.alerts.rules import builtin_profiles
from telemetry.reports import ReportError, ReportParams, build_report
from telemetry.shipments import (
    Segment,
    Shipment,
    ShipmentConflict,
    ShipmentError,
    add_segment,
    close,
    find_profile,
    gather,
    iso,
    parse_time,
    shipment_from_request,
)
from telemetry.storage import Store, open_store
from web.config import Config
from web.evidence import EvidenceService, ReadingsNotSealed, close_shipment


def add_shipments_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shipments", help="shipments: create, list, show, add-segment, close, report")
    cmds = p.add_subparsers(dest="shipments_command", required=True)
    a = cmds.add_parser("create", help="open a shipment")
    a.add_argument("--id", help="a chosen id (3-40 of a-z 0-9 -); default: 10 random characters")
    a.add_argument("--product", required=True)
    a.add_argument("--batch", required=True)
    a.add_argument("--origin-site", required=True)
    a.add_argument("--profile", required=True, help="alert profile whose limits judge it (e.g. chilled)")
    a.add_argument("--opened-at", help="ISO 8601 time (default: now)")
    a.add_argument("--stream", action="append", default=[], help="a linked stream's slug (repeatable)")
    a = cmds.add_parser("list", help="shipments, newest opened first")
    a.add_argument("--state", choices=["open", "closed"])
    a.add_argument("--origin-site")
    a.add_argument("--limit", type=int, default=100)
    cmds.add_parser("show", help="one shipment with its route").add_argument("id")
    a = cmds.add_parser("add-segment", help="the goods move to another device's watch")
    a.add_argument("id")
    a.add_argument("--device", required=True)
    a.add_argument("--start", help="ISO 8601 time (default: now); the open segment ends then")
    a.add_argument("--end", help="ISO 8601 time, for a segment already over")
    a.add_argument("--label", help='what a reader sees, e.g. "Truck 7, Ningbo → Shanghai"')
    a = cmds.add_parser("close", help="close the shipment (and its open segment)")
    a.add_argument("id")
    a.add_argument("--at", help="ISO 8601 time (default: now)")
    a = cmds.add_parser("report", help="the shipment's report as JSON, CSV or PDF")
    a.add_argument("id")
    a.add_argument("--format", choices=["json", "csv", "pdf"], default="json")
    a.add_argument("--lang", choices=["zh-CN", "en"], default="en", help="the PDF's language")
    a.add_argument(
        "-o", "--output", help="file to write (default: standard output; a PDF: shipment-ID-LANG.pdf)"
    )
    a.add_argument("--gap-threshold-s", type=float, help="a fixed gap threshold G in seconds")
    a.add_argument("--gap-factor", type=float, default=3.0, help="G = factor × median interval (default 3)")
    a.add_argument("--min-gap-s", type=float, default=300.0, help="G is at least this (default 300)")


def _describe(s: Shipment) -> str:
    lines = [
        f"{'id':<12} {s.id}",
        f"{'product':<12} {s.product}",
        f"{'batch':<12} {s.batch}",
        f"{'origin site':<12} {s.origin_site}",
        f"{'profile':<12} {s.profile_id}",
        f"{'state':<12} {s.state.value}",
        f"{'opened':<12} {iso(s.opened_at)}",
        f"{'closed':<12} {iso(s.closed_at) if s.closed_at else '-'}",
        f"{'streams':<12} {', '.join(s.streams) or '-'}",
        "route:",
    ]
    for i, g in enumerate(s.segments, start=1):
        end = iso(g.end) if g.end else "(in transit)"
        lines.append(
            f"  {i:>2}. {g.device_id:<20} {iso(g.start)} → {end}" + (f"  {g.label}" if g.label else "")
        )
    if not s.segments:
        lines.append("  (no segments yet: `origincast shipments add-segment ID --device DEVICE`)")
    return "\n".join(lines)


def _load(store: Store, sid: str) -> Shipment:
    found = store.get_shipment(sid)
    if found is None:
        raise SystemExit(f"origincast: no shipment {sid!r}")
    return found


def _change(store: Store, sid: str, fn: Callable[[Shipment], Shipment]) -> Shipment:
    for _ in range(3):
        try:
            return store.save_shipment(fn(_load(store, sid)))
        except ShipmentConflict:
            continue  # another writer saved first: read again
    raise SystemExit(f"origincast: shipment {sid} keeps changing under us; try again")


def _when(value: str | None, name: str) -> datetime:
    return datetime.now(UTC) if value is None else parse_time(value, name)


def cmd_shipments(config: Config, args: argparse.Namespace) -> None:
    store = open_store(config.storage)
    store.open()
    try:
        store.migrate()
        _run(store, args, config)
    except (ShipmentError, ReportError, ReadingsNotSealed) as exc:
        raise SystemExit(f"origincast: {exc}") from None
    finally:
        store.close()


def _run(store: Store, args: argparse.Namespace, config: Config) -> None:
    cmd = args.shipments_command
    if cmd == "create":
        known = set(builtin_profiles()) | set(store.list_profiles())
        if args.profile not in known:
            raise SystemExit(
                f"origincast: unknown profile {args.profile!r} (known: {', '.join(sorted(known))})"
            )
        data = {
            "id": args.id,
            "product": args.product,
            "batch": args.batch,
            "origin_site": args.origin_site,
            "profile_id": args.profile,
            "opened_at": args.opened_at,
            "streams": args.stream,
        }
        made = shipment_from_request({k: v for k, v in data.items() if v is not None}, datetime.now(UTC))
        try:
            print(_describe(store.create_shipment(made)))
        except ShipmentConflict as exc:
            raise SystemExit(f"origincast: {exc}") from None
    elif cmd == "list":
        rows = store.list_shipments(state=args.state, origin_site=args.origin_site, limit=args.limit)
        if not rows:
            print("no shipments; open one with `origincast shipments create …`")
        for s in rows:
            print(
                f"{s.id:<24} {s.state.value:<7} {iso(s.opened_at)}  {s.origin_site:<16}"
                f" {s.product} / {s.batch}"
            )
    elif cmd == "show":
        print(_describe(_load(store, args.id)))
    elif cmd == "add-segment":
        segment = Segment(
            args.device,
            _when(args.start, "start"),
            None if args.end is None else parse_time(args.end, "end"),
            args.label,
        )
        print(_describe(_change(store, args.id, lambda s: add_segment(s, segment))))
    elif cmd == "close":
        print(_describe(asyncio.run(_close(store, config, args.id, _when(args.at, "at")))))
    elif cmd == "report":
        _report(store, args)


async def _close(store: Store, config: Config, sid: str, at: datetime) -> Shipment:
    service = EvidenceService.from_key_file(
        store, config.evidence_key_file, config.evidence_checkpoint_interval_s, config.evidence_tsa
    )

    async def closed(saved: Shipment) -> None:
        try:
            cp = await service.shipment_closed(saved.closed_leaf)
            if cp is not None and service.timestamper is not None:
                await service.timestamper.run_once()  # this process does not stay to retry
        except Exception as exc:  # the close is committed; a later checkpoint covers it too
            print(f"origincast: shipment {sid} closed, but its checkpoint or timestamp failed: {exc}",
                  file=sys.stderr)  # fmt: skip

    shipment = _load(store, sid)
    save = lambda: asyncio.to_thread(_change, store, sid, lambda s: close(s, at))  # noqa: E731
    return await close_shipment(store, shipment, save, closed)


def _report(store: Store, args: argparse.Namespace) -> None:
    shipment = _load(store, args.id)
    params = ReportParams(
        gap_factor=args.gap_factor, min_gap_s=args.min_gap_s, gap_threshold_s=args.gap_threshold_s
    )
    as_of = datetime.now(UTC)
    report = build_report(
        shipment, gather(store, shipment, as_of), find_profile(store, shipment.profile_id), as_of, params
    )
    if args.format == "pdf":
        from web.shipment_pdf import FontMissing, render_pdf

        try:
            data = render_pdf(report, args.lang, generated_at=as_of)
        except FontMissing as exc:
            raise SystemExit(f"origincast: {exc}") from None
        path = Path(args.output or f"shipment-{shipment.id}-{args.lang}.pdf")
        path.write_bytes(data)
        print(f"wrote {path} ({len(data):,} bytes)")
        return
    if args.format == "csv":
        from web.shipment_csv import report_csv

        text = report_csv(report)
    else:
        text = orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
