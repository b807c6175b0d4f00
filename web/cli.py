"""`origincast …`: the operator's commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

from aiohttp import web

from telemetry.alerts.rules import Direction, DoorOpenRule, LimitRule, OfflineRule, Profile
from telemetry.ingest import Ingester
from telemetry.metrics import IngestMetrics
from telemetry.storage import open_store
from web.app import ACCOUNTS, EVIDENCE, STORE, build_app
from web.cli_keys import add_keys_parser, cmd_keys
from web.cli_shipments import add_shipments_parser, cmd_shipments
from web.cli_verify import add_verify_parser, cmd_verify
from web.config import Config, ConfigError, HttpSettings, check_tls_files, load_config, parse_mqtt_url
from web.demo import (
    DEMO_ASSIGNMENTS,
    DEMO_SLUG,
    DEMO_USER,
    demo_key_file,
    ensure_demo_login,
    ensure_demo_shipment,
)

log = logging.getLogger("origincast")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="origincast", description="origincast: origin streams and cold-chain telemetry"
    )
    parser.add_argument("--config", help="TOML configuration file (default: $ORIGINCAST_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server: web, ingest (and later relay, alerts)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-ingest", action="store_true", help="web only; ingesters run elsewhere")
    p.add_argument(
        "--certfile",
        help="PEM certificate (chain) to serve HTTPS: phones open the camera only on secure pages",
    )
    p.add_argument("--keyfile", help="PEM private key of --certfile")

    p = sub.add_parser("ingest", help="run only the MQTT ingester (scale out with --shared)")
    p.add_argument("--shared", metavar="GROUP", help="join the MQTT 5 shared subscription $share/GROUP/…")
    p.add_argument("--client-id", help="MQTT client id (unique per ingester; fixed across restarts)")

    sub.add_parser("migrate", help="apply database migrations and exit")

    p = sub.add_parser("demo", help="run everything on embedded defaults with a simulated fleet")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between simulated readings")
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)"
    )

    p = sub.add_parser("simulate", help="publish a simulated sensor fleet to the configured broker")
    p.add_argument("--interval", type=float, default=2.0)

    _add_streams_parser(sub)
    _add_users_parser(sub)
    add_shipments_parser(sub)
    add_keys_parser(sub)
    add_verify_parser(sub)

    p = sub.add_parser("devices", help="devices: assign a site and an alert profile, list")
    devices = p.add_subparsers(dest="devices_command", required=True)
    a = devices.add_parser("assign", help="put a device on a site and an alert profile")
    a.add_argument("device")
    a.add_argument("--site", help="site id (a farm, plant, warehouse, or 'fleet')")
    a.add_argument("--profile", help="alert profile: frozen, chilled, pharma or a custom one")
    a.add_argument("--name", help="a human name for the device")
    devices.add_parser("list", help="every assigned device")

    args = parser.parse_args(argv)
    if args.command == "verify":  # offline: needs no configuration, database or network
        cmd_verify(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"origincast: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    try:
        if args.command == "serve":
            cmd_serve(config, args)
        elif args.command == "ingest":
            cmd_ingest(config, args)
        elif args.command == "migrate":
            cmd_migrate(config)
        elif args.command == "demo":
            asyncio.run(run_demo(config, args.port, args.interval, args.duration))
        elif args.command == "simulate":
            cmd_simulate(config, args.interval)
        elif args.command == "streams":
            cmd_streams(config, args)
        elif args.command == "devices":
            cmd_devices(config, args)
        elif args.command == "users":
            asyncio.run(cmd_users(config, args))
        elif args.command == "shipments":
            cmd_shipments(config, args)
        elif args.command == "keys":
            cmd_keys(config, args)
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:
        # Settings that only a command checks (serve's certificate): the same short
        # message and exit code as a bad setting found at load time.
        print(f"origincast: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(config: Config, args: argparse.Namespace) -> None:
    http = replace(config.http, host=args.host or config.http.host, port=args.port or config.http.port)
    if args.certfile or args.keyfile:
        # The command line names both files together; it replaces the configured pair.
        http = check_tls_files(replace(http, certfile=args.certfile, keyfile=args.keyfile))
    ssl_context = server_ssl_context(http)
    app = build_app(config, with_ingest=not args.no_ingest)
    scheme = "https" if ssl_context else "http"
    base = f"{scheme}://{http.host}:{http.port}"
    log.info("pages: %s/publish/<stream> (phones) and %s/watch/<stream> (viewers)", base, base)
    web.run_app(
        app, host=http.host, port=http.port, ssl_context=ssl_context, print=lambda s: log.info("%s", s)
    )


def server_ssl_context(http: HttpSettings) -> ssl.SSLContext | None:
    """The TLS context for `serve`, or None for plain HTTP (no certificate configured)."""
    if not http.certfile or not http.keyfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # TLS 1.2 is the oldest that phones still in use all speak; older ones are broken.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.certfile, http.keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--certfile {http.certfile} / --keyfile {http.keyfile}: not a PEM certificate and its"
            f" matching private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate or key: {exc}") from None
    return context


def cmd_migrate(config: Config) -> None:
    store = open_store(config.storage)
    store.open()
    try:
        applied = store.migrate()
        print(f"{store.kind}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    finally:
        store.close()


def cmd_ingest(config: Config, args: argparse.Namespace) -> None:
    settings = config.ingest
    if args.shared:
        if settings.mqtt.protocol != "5":
            raise SystemExit("origincast: --shared needs MQTT 5 (ORIGINCAST_MQTT_PROTOCOL=5)")
        settings = replace(settings, shared_group=args.shared)
    if args.client_id:
        settings = replace(settings, client_id=args.client_id)
    store = open_store(config.storage)
    store.open()
    store.migrate()
    from prometheus_client import CollectorRegistry

    ingester = Ingester(settings, store, IngestMetrics(CollectorRegistry()))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ingester.start()
    log.info("ingesting from %s:%d as %s", settings.mqtt.host, settings.mqtt.port, settings.client_id)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        ingester.stop()
        store.close()
        log.info("ingester stopped cleanly")


def _add_users_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("users", help="accounts: add, list, remove, passwd, token")
    users = p.add_subparsers(dest="users_command", required=True)
    a = users.add_parser("add", help="add a user (the password is asked for, never an argument)")
    a.add_argument("name", help="1-64 of a-z, 0-9, '_', '.', '-'")
    a.add_argument("--role", required=True, choices=["admin", "logistics", "producer"])
    a.add_argument("--display-name", help="the name pages show")
    a.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (scripts)"
    )
    users.add_parser("list", help="every user with role and state")
    users.add_parser("remove", help="remove a user, their sessions and tokens").add_argument("name")
    a = users.add_parser("passwd", help="set a user's password (ends their sessions)")
    a.add_argument("name")
    a.add_argument("--password-stdin", action="store_true")
    a = users.add_parser("token", help="make an API token for a user; prints it once")
    a.add_argument("name")
    a.add_argument("--label", help="what the token is for (shown in listings)")


def _read_password(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("origincast: the two passwords differ; nothing changed")
    return first


async def cmd_users(config: Config, args: argparse.Namespace) -> None:
    """Writes straight to the database: this is how the first admin is made, before any
    login exists (the running server sees changes at its next request)."""
    from web.accounts import AccountError, AccountService, password_hasher
    from web.accounts_sql import open_account_repository

    repo = open_account_repository(config.storage.url)
    await asyncio.to_thread(repo.open)
    a = config.auth
    accounts = AccountService(
        repo, hasher=password_hasher(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism)
    )
    try:
        await asyncio.to_thread(repo.migrate)
        cmd = args.users_command
        if cmd == "add":
            user = await accounts.create_user(
                args.name, args.role, _read_password(args.password_stdin), args.display_name
            )
            print(f"added {user.name} ({user.role})")
        elif cmd == "list":
            rows = await accounts.list_users()
            if not rows:
                print("no users; add one with `origincast users add NAME --role admin`")
            for u in rows:
                state = "disabled" if u.disabled else "enabled"
                print(f"{u.name:<24} {u.role:<10} {state:<9} {u.display_name or ''}")
        elif cmd == "remove":
            if not await accounts.delete_user(args.name):
                raise SystemExit(f"origincast: no user {args.name!r}")
            print(f"removed {args.name}")
        elif cmd == "passwd":
            if await accounts.get_user(args.name) is None:
                raise SystemExit(f"origincast: no user {args.name!r}")
            await accounts.set_password(args.name, _read_password(args.password_stdin))
            print(f"password of {args.name} changed; their sessions ended")
        elif cmd == "token":
            if await accounts.get_user(args.name) is None:
                raise SystemExit(f"origincast: no user {args.name!r}")
            token, record = await accounts.create_token(args.name, args.label)
            print(f"API token {record.id} for {args.name}: {token}")
            print("(shown once: only its hash is stored; send it as Authorization: Bearer <token>)")
    except AccountError as exc:
        raise SystemExit(f"origincast: {exc}") from None
    finally:
        await asyncio.to_thread(repo.close)


def _add_streams_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("streams", help="manage live streams: add, list, show, rotate-key, remove")
    streams = p.add_subparsers(dest="streams_command", required=True)
    a = streams.add_parser("add", help="register a stream; prints its publish key once")
    a.add_argument("slug", help="URL name: 1-64 of a-z, 0-9, '-'")
    a.add_argument("--title", required=True)
    a.add_argument("--site", help="the site (farm, plant, warehouse) it shows")
    a.add_argument("--kind", choices=["whip", "rtsp", "testpattern"], default="whip")
    a.add_argument("--rtsp-url", help="the camera's rtsp:// URL (kind rtsp); stored, never shown again")
    a.add_argument("--unlisted", action="store_true", help="reachable by its URL, not in the public list")
    streams.add_parser("list", help="every stream, public and unlisted")
    a = streams.add_parser(
        "link", help="choose the sensors a stream's page shows (replaces its links; none given: show them)"
    )
    a.add_argument("slug")
    a.add_argument("--site", action="append", default=[], help="every device of this site (repeatable)")
    a.add_argument("--device", action="append", default=[], help="this device (repeatable)")
    a.add_argument("--default", action="store_true", help="drop the links: show the stream's own site")
    for name, text in [
        ("show", "one stream's settings"),
        ("rotate-key", "replace the publish key; prints the new one once"),
        ("remove", "delete a stream"),
    ]:
        streams.add_parser(name, help=text).add_argument("slug")


def cmd_streams(config: Config, args: argparse.Namespace) -> None:
    from stream.registry import RegistryError, Stream, StreamLinks, StreamSpec, effective_links
    from stream.registry_sql import open_stream_repository

    def describe(s: Stream) -> str:
        # masked_rtsp_url: an operator's terminal (and its scrollback) is a log too.
        fields = [
            ("slug", s.slug),
            ("title", s.title),
            ("site", s.site or "-"),
            ("kind", s.kind),
            ("visibility", s.visibility),
            ("owner", s.owner or "-"),
            ("created", s.created_at.isoformat(timespec="seconds")),
        ]
        if s.masked_rtsp_url:
            fields.append(("rtsp_url", s.masked_rtsp_url))
        return "\n".join(f"{k:<11} {v}" for k, v in fields)

    repo = open_stream_repository(config.storage.url)
    repo.open()
    try:
        repo.migrate()
        cmd = args.streams_command
        if cmd == "add":
            spec = StreamSpec(
                slug=args.slug,
                title=args.title,
                site=args.site,
                kind=args.kind,
                visibility="unlisted" if args.unlisted else "public",
                rtsp_url=args.rtsp_url,
            )
            stream, key = repo.create(spec)
            print(describe(stream))
            print(f"publish key: {key}")
            print("(shown once: only its hash is stored; `origincast streams rotate-key` makes a new one)")
        elif cmd == "list":
            rows = repo.list_streams(include_unlisted=True)
            if not rows:
                print("no streams; add one with `origincast streams add SLUG --title …`")
            for s in rows:
                print(f"{s.slug:<24} {s.kind:<12} {s.visibility:<9} {s.site or '-':<16} {s.title}")
        elif cmd == "show":
            found = repo.get(args.slug)
            if found is None:
                raise SystemExit(f"origincast: no stream {args.slug!r}")
            print(describe(found))
        elif cmd == "link":
            stream_ = repo.get(args.slug)
            if stream_ is None:
                raise SystemExit(f"origincast: no stream {args.slug!r}")
            if args.site or args.device or args.default:
                repo.set_links(args.slug, StreamLinks(tuple(args.site), tuple(args.device)))
            stored = repo.get_links(args.slug) or StreamLinks()
            shown = effective_links(stream_, stored)
            sites, devices = ", ".join(shown.sites) or "-", ", ".join(shown.devices) or "-"
            note = "  (default: the stream's own site)" if stored.empty else ""
            print(f"{args.slug}: sites {sites} · devices {devices}{note}")
        elif cmd == "rotate-key":
            key = repo.rotate_key(args.slug)
            print(f"new publish key for {args.slug}: {key}")
            print("(shown once; the old key no longer works for new sessions, nor do the share links)")
        elif cmd == "remove":
            if not repo.delete(args.slug):
                raise SystemExit(f"origincast: no stream {args.slug!r}")
            print(f"removed {args.slug}")
    except RegistryError as exc:
        raise SystemExit(f"origincast: {exc}") from None
    finally:
        repo.close()


def cmd_devices(config: Config, args: argparse.Namespace) -> None:
    """Writes the assignment to the database; a running engine picks it up within its
    snapshot interval (30 s). The API (PUT /api/v1/devices/ID) applies it at once."""
    from telemetry.alerts import builtin_profiles
    from telemetry.storage.alerts import Device

    store = open_store(config.storage)
    store.open()
    try:
        store.migrate()
        if args.devices_command == "list":
            for d in store.list_devices():
                print(
                    f"{d.device_id:<24} site {d.site_id or '-':<16}"
                    f" profile {d.profile_id or '-':<12} {d.name or ''}"
                )
            return
        known = set(builtin_profiles()) | set(store.list_profiles())
        if args.profile is not None and args.profile not in known:
            raise SystemExit(
                f"origincast: unknown profile {args.profile!r} (known: {', '.join(sorted(known))})"
            )
        old = store.get_device(args.device) or Device(args.device)
        device = Device(
            args.device,
            args.site if args.site is not None else old.site_id,
            args.profile if args.profile is not None else old.profile_id,
            args.name if args.name is not None else old.name,
        )
        store.upsert_device(device)
        print(f"{device.device_id}: site {device.site_id or '-'}, profile {device.profile_id or '-'}")
    finally:
        store.close()


def cmd_simulate(config: Config, interval: float) -> None:
    from devices.simulator import Fleet, demo_fleet

    m = config.ingest.mqtt
    fleet = Fleet(demo_fleet(), m.host, m.port, interval_s=interval, protocol=m.protocol)
    fleet.start()
    try:
        while True:
            time.sleep(1)
    finally:
        fleet.stop()




def demo_reefer_profile() -> Profile:
    """Chilled goods in a delivery truck: doors open at every stop, so a 5-minute delay; no
    ignore period, so the demo's compressor failure shows within minutes."""
    return Profile(
        "reefer-demo",
        "Reefer truck, chilled 0-4 °C (demo)",
        (
            LimitRule("upper", Direction.ABOVE, 4.0, delay_s=300, clear_hysteresis=0.5, clear_for_s=60),
            LimitRule("lower", Direction.BELOW, 0.0, delay_s=300, clear_hysteresis=0.5, clear_for_s=60),
            OfflineRule(),
            DoorOpenRule(open_for_s=600),
        ),
    )


def _assign_demo_fleet(app: web.Application) -> None:
    from telemetry.storage.alerts import Device
    from web.api_alerts import ALERTS

    service = app.get(ALERTS)
    if service is None:
        return
    service.save_profile(demo_reefer_profile())
    for device_id, site, profile, name in DEMO_ASSIGNMENTS:
        service.assign(Device(device_id, site, profile, name))

    def show(event: dict[str, object]) -> None:
        a = event["alert"]
        assert isinstance(a, dict)
        peak = "" if a.get("peak") is None else f" peak {a['peak']:+.1f}"
        print(
            f"[{time.strftime('%H:%M:%S')}] ALERT {event['event']}: {a['device_id']} ({event['site_id']})"
            f" {a['rule_id']} {a['severity']}{peak}" + (" · found late" if a.get("found_late") else ""),
            flush=True,
        )

    service.add_listener(show)


DEMO_SEAL_SPAN_S = 30.0


async def run_demo(config: Config, port: int, interval: float, duration: float) -> None:
    from devices.simulator import Fleet, demo_fleet
    from web.embedded_broker import EmbeddedBroker

    # A newcomer's console is for the readings, not for every HTTP request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    broker: EmbeddedBroker | None = None
    if config.mqtt_url is None:
        broker = EmbeddedBroker()
        await broker.start()
        mqtt = replace(parse_mqtt_url(broker.url), protocol="3.1.1")
        config = replace(config, ingest=replace(config.ingest, mqtt=mqtt, client_id="origincast-demo"))
        log.info("embedded MQTT broker (MQTT 3.1.1) on %s", broker.url)
    # The demo shows live video too: the test pattern, watchable over WHEP at /whep/demo;
    # and signs its evidence log with a key of its own, so its trust page verifies.
    config = replace(config, demo_test_pattern=True)
    # Readings are sealed into the log a device window at a time (15 min by default): the
    # demo's trust page should show them verified within a minute of arriving.
    span = min(config.storage.evidence_batch_max_span_s, DEMO_SEAL_SPAN_S)
    config = replace(config, storage=replace(config.storage, evidence_batch_max_span_s=span))
    if not config.evidence_key_file:
        config = replace(config, evidence_key_file=str(demo_key_file(config.storage.url)))
    app = build_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, config.http.host, port)
    await site.start()
    _assign_demo_fleet(app)
    password = await ensure_demo_login(app[ACCOUNTS])
    shipment = await asyncio.to_thread(ensure_demo_shipment, app[STORE], datetime.now(UTC))
    vkey = app[EVIDENCE].vkey
    m = config.ingest.mqtt
    fleet = Fleet(demo_fleet(), m.host, m.port, interval_s=interval, protocol=m.protocol)
    fleet.start()
    print(
        f"origincast demo: http://{config.http.host}:{port}/metrics · database {config.storage.url}"
        f" · broker {m.host}:{m.port} · live test pattern: WHEP http://{config.http.host}:{port}/whep/demo"
        " · Ctrl-C to stop",
        flush=True,
    )
    # Their own lines: the addresses a newcomer copies into a browser.
    base = f"http://{config.http.host}:{port}"
    print(f"watch the live test pattern with the fleet's readings: {base}/watch/{DEMO_SLUG}", flush=True)
    print(f"logistics console: {base}/console · log in as {DEMO_USER} / {password}", flush=True)
    print(f"shipments (route, files, QR labels): {base}/shipments · the same login", flush=True)
    if vkey:
        print(f"a shipment's trust page, verified in your browser: {base}/v/{shipment}#k={vkey}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            store = app[STORE]
            latest = await asyncio.to_thread(store.latest)
            count = await asyncio.to_thread(store.count_readings)
            line = ", ".join(f"{r.device_id} {r.temp_c:+.1f} °C" for r in latest)
            print(f"[{time.strftime('%H:%M:%S')}] {count} readings stored · {line}", flush=True)
            if duration and time.monotonic() - started >= duration:
                break
    finally:
        await asyncio.to_thread(fleet.stop)
        await runner.cleanup()
        if broker is not None:
            await broker.stop()
