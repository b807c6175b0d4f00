"""The authorization walk: every route the server registers, with every kind of caller.

A real ``origincast serve`` (PostgreSQL, mosquitto, the alert engine) is seeded with an
admin, a logistics user, two producers A and B each owning a public and an unlisted
stream (A's unlisted one live from a WHIP publisher, so /metrics has something to leak),
a device with a zero-delay profile and an alert it raised through MQTT, and a shipment.
Then every route of ``build_app(config).router.routes()`` (so a route added later is
walked without anyone listing it here) is called by:

    anon     no credentials           admin    admin user, session cookie + CSRF token
    logi     logistics, session       pa       producer A, session
    pa-tok   producer A, API token    pb       producer B, session
    adm-tok  the configured admin token (ORIGINCAST_ADMIN_TOKEN)

What each caller should get is derived from web.permissions.RULES (a route without a
rule is admin only), refined by the ownership notes of the rules: a producer changes only
their own streams (another producer's public stream 403, unlisted 404 as if unknown), an
unlisted stream's page, WHEP and live feed need its share link (404 without, whoever asks),
``?site=``/``?device=``/``?all=1`` live feeds are staff views, tokens and users are one's
own unless admin, WHIP takes only the stream's publish key. "Allowed" means neither 401
nor 403 (nor a redirect to /login) and no server error; refused means 401 without
credentials (303 to /login for a page), 403 with the wrong role. Every cookie write is
also sent without its X-CSRF-Token: 403. And no answer may name an unlisted stream to
someone who may not know it, unless the request named it first.

Reads run first; writes act on throwaway resources made for each caller; logging out
and in come last. ``pytest -s`` prints the whole matrix (✗ marks a wrong answer).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from paho.mqtt.enums import CallbackAPIVersion

from scripts.services import free_port
from stream.ice import host_addresses
from telemetry.evidence.keys import init_key
from tests.support.processes import REPO
from web.app import build_app
from web.config import load_config
from web.pages import PAGES
from web.permissions import DEFAULT_ROLES, rule_for

pytestmark = pytest.mark.timeout(300)

ADMIN_TOKEN = "walk-admin-token-0123456789abcdef"
PASSWORD = "walk the whole table"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

# Seeded names (lower case: user names and slugs are).
A_PUB, A_UNL, B_PUB, B_UNL = "walk-a-pub", "walk-a-unl", "walk-b-pub", "walk-b-unl"
UNLISTED = {A_UNL: "pa", B_UNL: "pb"}  # slug -> owner
DEVICE, SITE, PROFILE, SHIPMENT = "walk-dev", "walk-site", "walk-zero", "walk-ship"
USERS = {"admin": "walk-admin", "logi": "walk-logi", "pa": "walk-pa", "pb": "walk-pb"}
CALLERS = ("anon", "admin", "logi", "pa", "pa-tok", "pb", "adm-tok")
ZERO_DELAY = {
    "name": "Zero delay (walk)",
    "rules": [
        {
            "kind": "limit",
            "id": "upper",
            "direction": "above",
            "threshold": 4.0,
            "delay_s": 0,
            "clear_hysteresis": 0.5,
            "clear_for_s": 0,
        },
    ],
}


# -- callers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    key: str
    role: str | None  # None: no login
    user: str | None  # the acting user's name ("admin-token" for the configured token)
    owner: str | None  # "pa" / "pb": whose streams are theirs
    headers: dict[str, str] = field(default_factory=dict)
    session: bool = False  # authenticated by the cookie (so writes need the CSRF token)

    @property
    def bearer(self) -> bool:
        return "Authorization" in self.headers

    def may_see_unlisted(self, slug: str) -> bool:
        return self.role in ("admin", "logistics") or UNLISTED.get(slug) == self.owner


# -- what a caller should get --------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    kind: str  # "ok", "401", "403", "404", "login"
    why: str = ""

    def holds(self, status: int, location: str) -> bool:
        if self.kind == "ok":
            return status not in (401, 403) and status < 500 and not (status == 303 and "/login" in location)
        if self.kind == "login":
            return status == 303 and location.startswith("/login?next=")
        return status == int(self.kind)


OK, E401, E403, E404, LOGIN = Expect("ok"), Expect("401"), Expect("403"), Expect("404"), Expect("login")


def by_rule(method: str, canonical: str, caller: Caller) -> Expect:
    """What web.permissions' table alone says (HEAD is GET's; no rule: admin only)."""
    rule = rule_for(method, canonical)
    roles = rule.roles if rule is not None else DEFAULT_ROLES
    if not roles:
        return OK
    if caller.role is None:
        return LOGIN if rule is not None and rule.page else E401
    return OK if caller.role in roles else E403


@dataclass
class Case:
    method: str
    canonical: str
    target: str
    url: str
    caller: Caller
    expect: Expect
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ws: bool = False
    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()
    # Filled in by the walk:
    status: int = 0
    problem: str = ""

    @property
    def phase(self) -> int:
        """Reads, then writes, then what ends a resource, then deletions, then logging out
        and in (which end the caller's own session)."""
        if self.canonical == "/api/v1/session" and self.method == "DELETE":
            return 5
        if self.canonical == "/api/v1/session" and self.method == "POST":
            return 6
        if self.method in SAFE:
            return 0
        if self.method == "DELETE":
            return 4
        if self.canonical.endswith(("/rotate-key", "/close", "/resolve")):
            return 3
        return 1 if "no CSRF" in self.target else 2


@dataclass
class World:
    """What the seeding made, for the cases to point at."""

    shares: dict[str, str] = field(default_factory=dict)  # slug -> share token
    keys: dict[str, str] = field(default_factory=dict)  # slug -> publish key
    alert_id: int = 0
    tokens: dict[str, str] = field(default_factory=dict)  # label -> token id
    token_names: dict[str, list[str]] = field(default_factory=dict)  # owner key -> token names
    static_file: str = ""


# -- the server ----------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    log: Path


@pytest.fixture
def server(pg_url: str, mosquitto: Any, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    # With the evidence log's signing key, as a deployment has it: without one the log,
    # its key and the QR labels answer 503 whoever asks, and the walk would learn nothing.
    init_key(tmp_path / "log.key", "walk.origincast/log")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORIGINCAST_")},
        "ORIGINCAST_DATABASE_URL": pg_url,
        "ORIGINCAST_MQTT_URL": mosquitto.url,
        "ORIGINCAST_INGEST_CLIENT_ID": f"walk-{uuid.uuid4().hex[:8]}",
        "ORIGINCAST_HTTP_HOST": "127.0.0.1",
        "ORIGINCAST_HTTP_PORT": str(port),
        "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
        "ORIGINCAST_STREAM_ICE_HOST_ADDRESSES": "127.0.0.1",
        "ORIGINCAST_FILES_DIR": str(tmp_path / "files"),
        "ORIGINCAST_EVIDENCE_KEY_FILE": str(tmp_path / "log.key"),
        # The walk makes hundreds of refused WHIP calls from one address on purpose: with
        # the production delay and lockout it would stall and then lock itself out.
        "ORIGINCAST_AUTH_FAILURE_BASE_DELAY_S": "0",
        "ORIGINCAST_AUTH_FAILURE_MAX_DELAY_S": "0.01",
        "ORIGINCAST_AUTH_LOCKOUT_AFTER": "1000000",
        "ORIGINCAST_AUTH_ARGON2_TIME_COST": "1",
        "ORIGINCAST_AUTH_ARGON2_MEMORY_KIB": "1024",
        "ORIGINCAST_AUTH_ARGON2_PARALLELISM": "1",
    }
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "web", "serve"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "origincast serve exited:\n" + log.read_text(errors="replace")[-3000:]
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("origincast serve did not become ready:\n" + log.read_text()[-3000:])
        yield Server(base, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _routes(tmp_path: Path) -> list[tuple[str, str, Any]]:
    """(method, canonical path, resource) of every route the server registers, as
    tests/unit/test_openapi.py finds them (the same build_app the server runs)."""
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": f"sqlite:///{tmp_path}/routes.db",
            "ORIGINCAST_FILES_DIR": str(tmp_path / "route-files"),
        }
    )
    app = build_app(config)
    seen: dict[tuple[str, str], Any] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        method = "GET" if route.method == "*" else route.method
        seen.setdefault((method, resource.canonical), resource)
    return [(m, p, r) for (m, p), r in seen.items()]


def _a_static_file(routes: list[tuple[str, str, Any]]) -> str:
    """A file of the (first) static directory, to fetch through its route."""
    for _m, _p, resource in routes:
        directory = resource.get_info().get("directory")
        if directory is not None:
            return sorted(p.name for p in Path(directory).iterdir() if p.is_file())[0]
    return ""


# -- seeding -------------------------------------------------------------------------------


ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _ok(r: aiohttp.ClientResponse, *statuses: int) -> Any:
    text = await r.text()
    assert r.status in (statuses or (200, 201)), f"{r.method} {r.url}: {r.status} {text}"
    return json.loads(text) if text and r.content_type == "application/json" else None


async def _login(http: aiohttp.ClientSession, name: str) -> dict[str, str]:
    r = await http.post("/api/v1/session", json={"name": name, "password": PASSWORD})
    body = await _ok(r, 200)
    return {
        "Cookie": f"origincast_session={r.cookies['origincast_session'].value}",
        "X-CSRF-Token": body["csrf_token"],
    }


class _Frames(VideoStreamTrack):
    """Small plain frames: enough for the relay to call the stream live."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), 90, dtype=np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def _publish(http: aiohttp.ClientSession, slug: str, key: str) -> RTCPeerConnection:
    """A WHIP publisher (what OBS or the phone page does), on loopback only."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(_Frames(), direction="sendonly")
    with host_addresses(("127.0.0.1",)):
        await pc.setLocalDescription(await pc.createOffer())
    r = await http.post(
        f"/whip/{slug}",
        data=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"},
    )
    answer = await r.text()
    assert r.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc


def _mqtt_publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"walk-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    try:
        for p in payloads:
            c.publish(topic, p, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


async def _until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within} s: {what}")


async def _seed(http: aiohttp.ClientSession, mosquitto: Any) -> tuple[dict[str, Caller], World]:
    world = World()
    roles = {"admin": "admin", "logi": "logistics", "pa": "producer", "pb": "producer"}
    for key, name in USERS.items():
        await _ok(
            await http.post(
                "/api/v1/users", headers=ADM, json={"name": name, "role": roles[key], "password": PASSWORD}
            ),
            201,
        )
    # Users only a write of the walk touches: one to log in as, one to remove per caller.
    for name in ["walk-login", *(f"walk-victim-{k}" for k in CALLERS)]:
        await _ok(
            await http.post(
                "/api/v1/users", headers=ADM, json={"name": name, "role": "producer", "password": PASSWORD}
            ),
            201,
        )
    sessions = {k: await _login(http, name) for k, name in USERS.items()}
    made = await _ok(
        await http.post("/api/v1/tokens", json={"name": "walk pa script"}, headers=sessions["pa"])
    )
    callers = {
        "anon": Caller("anon", None, None, None),
        "admin": Caller("admin", "admin", USERS["admin"], None, sessions["admin"], session=True),
        "logi": Caller("logi", "logistics", USERS["logi"], None, sessions["logi"], session=True),
        "pa": Caller("pa", "producer", USERS["pa"], "pa", sessions["pa"], session=True),
        "pa-tok": Caller(
            "pa-tok", "producer", USERS["pa"], "pa", {"Authorization": f"Bearer {made['token']}"}
        ),
        "pb": Caller("pb", "producer", USERS["pb"], "pb", sessions["pb"], session=True),
        "adm-tok": Caller("adm-tok", "admin", "admin-token", None, dict(ADM)),
    }

    # Streams: each producer a public and an unlisted one (made with their own
    # credentials), and one throwaway per caller for the writes to change and remove.
    for slug, who, visibility in [
        (A_PUB, "pa-tok", "public"),
        (A_UNL, "pa-tok", "unlisted"),
        (B_PUB, "pb", "public"),
        (B_UNL, "pb", "unlisted"),
    ]:
        body = await _ok(
            await http.post(
                "/api/v1/streams",
                headers=callers[who].headers,
                json={"slug": slug, "title": slug, "site": SITE, "visibility": visibility},
            ),
            201,
        )
        assert body["owner"] == callers[who].user
        world.keys[slug] = body["publish_key"]
    for k in CALLERS:
        owner = USERS[callers[k].owner or "pb"]
        await _ok(
            await http.post(
                "/api/v1/streams",
                headers=ADM,
                json={"slug": f"walk-t-{k}", "title": "Throwaway", "owner": owner},
            ),
            201,
        )
    for slug, who in [(A_UNL, "pa"), (B_UNL, "pb")]:
        share = await _ok(
            await http.post(
                f"/api/v1/streams/{slug}/share", json={"ttl_s": 3600}, headers=callers[who].headers
            ),
            201,
        )
        world.shares[slug] = share["url"].split("share=", 1)[1]

    # Tokens for DELETE /api/v1/tokens/{id}: one of each caller's own, and one of the
    # other producer's (for the producers) or of anyone (for the admins).
    for k in CALLERS:
        owner = callers[k].user if callers[k].user not in (None, "admin-token") else USERS["pb"]
        for label in (f"own-{k}", f"other-{k}"):
            tok_owner = (
                owner if label.startswith("own") else USERS["pa" if callers[k].owner == "pb" else "pb"]
            )
            name = f"walk-tok-{label}"
            t = await _ok(
                await http.post("/api/v1/tokens", headers=ADM, json={"name": name, "owner": tok_owner}), 201
            )
            world.tokens[label] = t["id"]
            world.token_names.setdefault(tok_owner, []).append(name)

    # A device with a zero-delay profile, and the alert an out-of-limit reading raises.
    await _ok(await http.put(f"/api/v1/alert-profiles/{PROFILE}", json=ZERO_DELAY, headers=ADM))
    await _ok(
        await http.put(
            f"/api/v1/devices/{DEVICE}",
            headers=ADM,
            json={"site_id": SITE, "profile_id": PROFILE, "name": "Walk truck"},
        )
    )
    t0 = datetime.now(UTC)
    readings = [
        json.dumps({"ts": int((t0 + timedelta(seconds=s)).timestamp() * 1000), "temp_c": temp}).encode()
        for s, temp in ((0, 3.0), (1, 7.5))
    ]
    await asyncio.to_thread(
        _mqtt_publish, mosquitto.host, mosquitto.port, f"origincast/{DEVICE}/telemetry", readings
    )

    async def alert() -> int | None:
        body = await _ok(await http.get(f"/api/v1/alerts?device={DEVICE}", headers=ADM))
        return body["alerts"][0]["id"] if body["alerts"] else None

    world.alert_id = await _until(alert, 20, "the out-of-limit reading raises an alert")

    # Shipments: one to read (naming A's unlisted stream too: the public trust page must
    # not), and a throwaway per caller to edit and close.
    base = {"product": "Walk cheese", "batch": "W-1", "origin_site": SITE, "profile_id": "chilled"}
    await _ok(
        await http.post(
            "/api/v1/shipments",
            headers=ADM,
            json={
                **base,
                "id": SHIPMENT,
                "streams": [A_PUB, A_UNL],
                "opened_at": (t0 - timedelta(hours=1)).isoformat(),
                "segments": [{"device_id": DEVICE, "start": (t0 - timedelta(hours=1)).isoformat()}],
            },
        ),
        201,
    )
    for k in CALLERS:
        await _ok(
            await http.post("/api/v1/shipments", headers=ADM, json={**base, "id": f"walk-ship-{k}"}), 201
        )
    return callers, world


# -- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamTarget:
    label: str
    slug: str
    share: str | None = None  # the share token sent (?share=)

    def public(self) -> bool:
        return self.slug in (A_PUB, B_PUB) or self.slug.startswith("walk-t-")

    def known(self) -> bool:
        return self.slug != "walk-nope"

    def share_valid(self, world: World) -> bool:
        return self.share is not None and world.shares.get(self.slug) == self.share

    def query(self) -> str:
        return f"?share={self.share}" if self.share else ""


def _read_targets(world: World) -> list[StreamTarget]:
    return [
        StreamTarget("A public", A_PUB),
        StreamTarget("A unlisted", A_UNL),
        StreamTarget("A unlisted + share", A_UNL, world.shares[A_UNL]),
        StreamTarget("B unlisted", B_UNL),
        StreamTarget("B unlisted + A's share", B_UNL, world.shares[A_UNL]),
        StreamTarget("unknown", "walk-nope"),
    ]


def _write_targets(caller: Caller) -> list[StreamTarget]:
    """A throwaway stream per caller (a producer's own; an admin's to manage), and for
    everyone but the admins a producer's public and unlisted streams that are not theirs."""
    own = StreamTarget("throwaway", f"walk-t-{caller.key}")
    if caller.owner == "pa":
        return [own, StreamTarget("another's public", B_PUB), StreamTarget("another's unlisted", B_UNL)]
    if caller.owner == "pb" or caller.role in (None, "logistics"):
        return [own, StreamTarget("another's public", A_PUB), StreamTarget("another's unlisted", A_UNL)]
    return [own]


def _stream_read(caller: Caller, t: StreamTarget, world: World) -> Expect:
    """GET /api/v1/streams/{slug} and its links: unlisted for staff, its owner or ?share=."""
    if not t.known():
        return Expect("404", "no such stream")
    if t.public() or caller.may_see_unlisted(t.slug) or t.share_valid(world):
        return OK
    return Expect("404", "unlisted: answered as unknown")


def _watchable(t: StreamTarget, world: World) -> Expect:
    """Page, WHEP, live feed: public, or unlisted with its own valid share token; no
    login changes that (the share link is the credential)."""
    if not t.known():
        return Expect("404", "no such stream")
    if t.public() or t.share_valid(world):
        return OK
    return Expect("404", "unlisted without its share link")


def _stream_write(caller: Caller, t: StreamTarget, base: Expect, path: str = "") -> Expect:
    if base.kind != "ok" or caller.role == "admin":
        return base
    if path == "/api/v1/streams/{slug}/links" and caller.role == "logistics":
        return base  # staff set which sensors any stream shows (web.permissions)
    if UNLISTED.get(t.slug) is not None and UNLISTED[t.slug] != caller.owner:
        return Expect("404", "another producer's unlisted stream: unknown to them")
    if t.slug in (A_PUB, B_PUB) and {A_PUB: "pa", B_PUB: "pb"}[t.slug] != caller.owner:
        return Expect("403", "another producer's stream")
    return base


STREAM_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/api/v1/streams/{slug}"): {"title": "Walked"},
    ("PUT", "/api/v1/streams/{slug}/links"): {"sites": [SITE], "devices": [DEVICE]},
    ("POST", "/api/v1/streams/{slug}/share"): {"ttl_s": 600},
}
SDP = {"Content-Type": "application/sdp"}
NOT_AN_OFFER = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def _other(caller: Caller) -> str:
    """Another user than the caller, for the users and tokens routes."""
    return USERS["pa"] if caller.owner == "pb" else USERS["pb"]


class Planner:
    """Turns (route, caller) into the concrete calls to make and what each must answer."""

    def __init__(self, world: World, resources: dict[tuple[str, str], Any]) -> None:
        self.world = world
        self.resources = resources

    def cases(self, method: str, canonical: str, caller: Caller) -> list[Case]:
        base = by_rule(method, canonical, caller)
        made = self._specific(method, canonical, caller, base)
        if made is None:
            made = self._generic(method, canonical, caller, base)
        out = []
        for c in made:
            out.append(c)
            # The same write with the cookie but without X-CSRF-Token: refused before
            # anything else (routes that need no login are left alone, except logging out).
            rule = rule_for(method, canonical)
            needs_login = rule is None or bool(rule.roles)
            if caller.session and method not in SAFE and (needs_login or canonical == "/api/v1/session"):
                if canonical == "/api/v1/session" and method == "POST":
                    continue  # logging in needs no token: it makes the session
                headers = {k: v for k, v in c.headers.items() if k != "X-CSRF-Token"}
                out.insert(
                    len(out) - 1,
                    replace(
                        c,
                        target=f"{c.target} (no CSRF)",
                        headers=headers,
                        expect=Expect("403", "cookie write without X-CSRF-Token"),
                    ),
                )
        return out

    def _case(
        self, method: str, canonical: str, target: str, url: str, caller: Caller, expect: Expect, **kw: Any
    ) -> Case:
        headers = {**caller.headers, **kw.pop("headers", {})}
        return Case(method, canonical, target, url, caller, expect, headers=headers, **kw)

    # -- routes whose answer depends on the data (the rules' notes) ------------------------

    def _specific(self, method: str, canonical: str, caller: Caller, base: Expect) -> list[Case] | None:
        w, c = self.world, caller
        mk = self._case
        if canonical in ("/api/v1/streams/{slug}", "/api/v1/streams/{slug}/links") and method in SAFE:
            return [
                mk(
                    method,
                    canonical,
                    t.label,
                    canonical.replace("{slug}", t.slug) + t.query(),
                    c,
                    _stream_read(c, t, w),
                )
                for t in _read_targets(w)
            ]
        if canonical.startswith("/api/v1/streams/{slug}"):
            body = STREAM_BODIES.get((method, canonical))
            return [
                mk(
                    method,
                    canonical,
                    t.label,
                    canonical.replace("{slug}", t.slug),
                    c,
                    _stream_write(c, t, base, canonical),
                    json=body,
                )
                for t in _write_targets(c)
            ]
        if canonical == "/api/v1/streams" and method == "POST":
            out = [
                mk(
                    method,
                    canonical,
                    "new, own",
                    canonical,
                    c,
                    base,
                    json={"slug": f"walk-new-{c.key}", "title": "New"},
                )
            ]
            if c.role == "producer":
                out.append(
                    mk(
                        method,
                        canonical,
                        "for another owner",
                        canonical,
                        c,
                        Expect("403", "a producer's streams are their own"),
                        json={"slug": f"walk-new2-{c.key}", "title": "N", "owner": _other(c)},
                    )
                )
            return out
        if canonical == "/{page}/{slug}":
            out = []
            for page in self._values(canonical, "page", PAGES):
                for t in _read_targets(w):
                    url = f"/{page}/{t.slug}{t.query()}"
                    # The publish page asks for the key itself and looks nothing up: the same
                    # page for every slug, so it tells nobody whether a stream exists.
                    expect = OK if page == "publish" else _watchable(t, w)
                    out.append(mk(method, canonical, f"{page} {t.label}", url, c, expect))
            return out
        if canonical == "/whep/{slug}" and method == "POST":
            return [
                mk(
                    method,
                    canonical,
                    t.label,
                    f"/whep/{t.slug}{t.query()}",
                    c,
                    _watchable(t, w),
                    data=NOT_AN_OFFER,
                    headers=SDP,
                )
                for t in _read_targets(w)
            ]
        if canonical == "/whip/{slug}" and method == "POST":
            out = [
                mk(
                    method,
                    canonical,
                    "B public, caller's credentials",
                    f"/whip/{B_PUB}",
                    c,
                    Expect("401", "only the stream's publish key publishes"),
                    data=NOT_AN_OFFER,
                    headers=SDP,
                )
            ]
            if c.role is None:
                out.append(
                    mk(
                        method,
                        canonical,
                        "B public, its publish key",
                        f"/whip/{B_PUB}",
                        c,
                        OK,
                        headers={"Authorization": f"Bearer {w.keys[B_PUB]}"},
                    )
                )
            return out
        if canonical == "/whip/{slug}" and method == "OPTIONS":
            # With a Bearer it must be the stream's key (the answer carries TURN credentials).
            expect = Expect("401", "a Bearer here must be the publish key") if c.bearer else OK
            return [mk(method, canonical, "B public", f"/whip/{B_PUB}", c, expect)]
        if canonical == "/api/v1/live":
            return self._live(method, canonical, c)
        if canonical == "/api/v1/users/{name}" and method == "PATCH":
            self_name = c.user or "walk-nobody"
            staff_only = base if base.kind != "ok" or c.role == "admin" else Expect("403", "only an admin")
            return [
                mk(
                    method,
                    canonical,
                    "self: display name",
                    f"/api/v1/users/{self_name}",
                    c,
                    base,
                    json={"display_name": f"Walker {c.key}"},
                ),
                mk(
                    method,
                    canonical,
                    "self: role admin",
                    f"/api/v1/users/{self_name}",
                    c,
                    staff_only,
                    json={"role": "admin"} if c.role != "admin" else {"display_name": "Still admin"},
                ),
                mk(
                    method,
                    canonical,
                    "another user",
                    f"/api/v1/users/{_other(c)}",
                    c,
                    staff_only,
                    json={"display_name": f"Renamed by {c.key}"},
                ),
            ]
        if canonical == "/api/v1/users/{name}" and method == "DELETE":
            return [mk(method, canonical, "a throwaway user", f"/api/v1/users/walk-victim-{c.key}", c, base)]
        if canonical == "/api/v1/users" and method == "POST":
            return [
                mk(
                    method,
                    canonical,
                    "new user",
                    canonical,
                    c,
                    base,
                    json={"name": f"walk-made-{c.key}", "role": "producer", "password": PASSWORD},
                )
            ]
        if canonical == "/api/v1/tokens" and method == "POST":
            own = {"name": f"walk {c.key}"} | ({"owner": USERS["pb"]} if c.user == "admin-token" else {})
            other = base if base.kind != "ok" or c.role == "admin" else Expect("403", "another user's token")
            return [
                mk(method, canonical, "own", canonical, c, base, json=own),
                mk(
                    method,
                    canonical,
                    "for another user",
                    canonical,
                    c,
                    other,
                    json={"name": "not yours", "owner": _other(c)},
                ),
            ]
        if canonical == "/api/v1/tokens" and method in SAFE:
            # Their own tokens only (an admin: everyone's): no other user's token names.
            others = (
                ()
                if c.role == "admin"
                else tuple(
                    f'"{name}"' for owner, names in w.token_names.items() if owner != c.user for name in names
                )
            )
            return [mk(method, canonical, "list", canonical, c, base, must_not_contain=others)]
        if canonical == "/api/v1/tokens/{id}":
            other = base if base.kind != "ok" or c.role == "admin" else Expect("404", "not one of theirs")
            return [
                mk(method, canonical, "own", f"/api/v1/tokens/{w.tokens[f'own-{c.key}']}", c, base),
                mk(
                    method,
                    canonical,
                    "another user's",
                    f"/api/v1/tokens/{w.tokens[f'other-{c.key}']}",
                    c,
                    other,
                ),
            ]
        if canonical == "/api/v1/session" and method == "POST":
            return [
                mk(
                    method,
                    canonical,
                    "log in",
                    canonical,
                    c,
                    OK,
                    json={"name": "walk-login", "password": PASSWORD},
                )
            ]
        if canonical == "/api/v1/session" and method == "DELETE":
            return [mk(method, canonical, "log out", canonical, c, OK)]
        return None

    def _live(self, method: str, canonical: str, c: Caller) -> list[Case]:
        w, mk = self.world, self._case
        staff = OK if c.role in ("admin", "logistics") else E401 if c.role is None else E403
        selections: list[tuple[str, str, Expect]] = [
            (
                f"stream={t.label}",
                f"stream={t.slug}" + (f"&share={t.share}" if t.share else ""),
                _watchable(t, w),
            )
            for t in _read_targets(w)
        ]
        selections += [
            ("site", f"site={SITE}", staff),
            ("device", f"device={DEVICE}", staff),
            ("all", "all=1", staff),
        ]
        if method != "GET":  # HEAD: the same checks, then "not a WebSocket" (400)
            return [mk(method, canonical, label, f"{canonical}?{q}", c, e) for label, q, e in selections]
        out = [mk(method, canonical, label, f"{canonical}?{q}", c, e, ws=True) for label, q, e in selections]
        # Cross-site WebSocket hijacking: a handshake from another origin riding on the
        # staff cookie is refused (a Bearer is never sent by a browser on its own).
        cross = Expect("403", "staff feed from another origin") if c.session and staff.kind == "ok" else staff
        out.append(
            mk(
                method,
                canonical,
                "all, from another origin",
                f"{canonical}?all=1",
                c,
                cross,
                ws=True,
                headers={"Origin": "http://evil.example"},
            )
        )
        return out

    # -- every other route: the table's answer, with the seeded resource where one fits ----

    def _values(self, canonical: str, name: str, candidates: tuple[str, ...]) -> list[str]:
        """The candidates the route's own pattern takes for ``{name}`` (/{page} is only
        /console, /{page}/{slug} only publish and watch)."""
        rx = self.resources[canonical].get_info().get("pattern")

        def fits(value: str) -> bool:
            url = re.sub(r"{(\w+)}", lambda m: value if m.group(1) == name else "x", canonical)
            return rx is None or rx.fullmatch(url) is not None

        found = [v for v in candidates if fits(v)]
        assert found, f"the walk has no value for {{{name}}} in {canonical}: add one to Planner._param"
        return found

    def _param(self, method: str, canonical: str, name: str, c: Caller) -> str:
        w = self.world
        writes = method not in SAFE
        known: dict[str, str] = {
            "slug": B_PUB,
            "session": "no-such-session",
            "name": c.user or "walk-nobody",
            "batch": "W-1",
            "tile": "tile/0/000",  # /log/{tile:tile/.+}: a hash tile of level 0
            "index": "0",
        }
        if name == "id":
            if canonical.startswith("/api/v1/alerts/"):
                return str(w.alert_id)
            if canonical.startswith("/api/v1/alert-profiles/"):
                return "walk-custom"
            if canonical.startswith("/api/v1/devices/"):
                return f"walk-dev-{c.key}" if writes else DEVICE
            if "shipments" in canonical or canonical.startswith("/v/"):
                return f"walk-ship-{c.key}" if writes else SHIPMENT
        if name in known:
            return known[name]
        if name == "page":
            return self._values(canonical, name, PAGES)[0]
        # A parameter the walk has not met: the first placeholder the route's pattern takes.
        rx = self.resources[canonical].get_info().get("pattern")
        for guess in ("walk-unknown", "0" * 64, "1"):
            url = canonical.replace("{" + name + "}", guess)
            if rx is None or rx.fullmatch(re.sub(r"{\w+}", "x", url)):
                return guess
        raise AssertionError(
            f"the walk has no value for {{{name}}} in {canonical}: add one to Planner._param"
        )

    def _generic(self, method: str, canonical: str, c: Caller, base: Expect) -> list[Case]:
        resource = self.resources[canonical]
        info = resource.get_info()
        if "directory" in info:  # a static directory: one of its files
            return [self._case(method, canonical, "a file", f"{canonical}/{self.world.static_file}", c, base)]
        url = canonical
        for name in re.findall(r"{(\w+)}", canonical):
            url = url.replace("{" + name + "}", self._param(method, canonical, name, c))
        body = BODIES.get((method, canonical), {} if method not in SAFE else None)
        if callable(body):
            body = body(c)
        # Per-caller resources share a row: /api/v1/devices/walk-dev-<caller>.
        target = "" if url == canonical else url.replace(f"-{c.key}", "-<caller>")
        return [self._case(method, canonical, target, url, c, base, json=body)]


BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/v1/alerts/{id}/acknowledge"): lambda c: {"comment": f"seen by {c.key}"},
    ("POST", "/api/v1/alerts/{id}/resolve"): {"comment": "load moved to a cold truck"},
    ("PUT", "/api/v1/alert-profiles/{id}"): {**ZERO_DELAY, "name": "Walk custom"},
    ("PUT", "/api/v1/devices/{id}"): {"site_id": SITE},
    ("POST", "/api/v1/shipments"): lambda c: {
        "id": f"walk-new-ship-{c.key}",
        "product": "P",
        "batch": "B",
        "origin_site": SITE,
        "profile_id": "chilled",
    },
    ("PATCH", "/api/v1/shipments/{id}"): {"product": "Walked cheese"},
    ("POST", "/api/v1/shipments/{id}/segments"): {"device_id": DEVICE},
    ("POST", "/api/v1/shipments/{id}/close"): {},
}


# -- making the calls ----------------------------------------------------------------------


def _hidden_from(caller: Caller, case: Case) -> tuple[str, ...]:
    """Unlisted slugs this answer must not contain: those the caller may not know, unless
    the request named it (an echo of the caller's own words is no leak). Shipments name
    their streams to every signed-in user by design (web.permissions: shipments are any
    user's), so for users those answers are left out; for the public they count."""
    if (
        caller.role is not None
        and "/shipments" in case.canonical
        and not case.canonical.startswith("/api/v1/public")
    ):
        return ()
    sent = case.url + json.dumps(case.json)
    return tuple(s for s in UNLISTED if not caller.may_see_unlisted(s) and s not in sent)


async def _call(http: aiohttp.ClientSession, case: Case) -> tuple[int, str, str]:
    if case.ws:
        try:
            async with http.ws_connect(case.url, headers=case.headers) as ws:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                snap = json.loads(msg.data)
                assert snap["type"] == "snapshot", snap
                return 101, msg.data, ""
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, exc.message, ""
    async with http.request(
        case.method,
        case.url,
        json=case.json if case.data is None else None,
        data=case.data,
        headers=case.headers,
        allow_redirects=False,
    ) as r:
        body = await r.read()
        text = body.decode("utf-8", "replace")
        if r.status in (401, 403) and case.method != "HEAD":
            try:
                parsed = json.loads(text)
                assert list(parsed) == ["error"] and parsed["error"]
            except (ValueError, AssertionError):
                text = "NOT A JSON ERROR: " + text[:200]
        return r.status, text, r.headers.get("Location", "")


async def _walk(http: aiohttp.ClientSession, cases: list[Case]) -> None:
    for case in sorted(cases, key=lambda c: c.phase):  # stable: route order within a phase
        status, text, location = await _call(http, case)
        case.status = status
        problems = []
        if not case.expect.holds(status, location):
            problems.append(f"expected {case.expect.kind} ({case.expect.why or 'table'})")
        if text.startswith("NOT A JSON ERROR"):
            problems.append("refusal without a JSON {error}")
        for slug in _hidden_from(case.caller, case):
            if slug in text:
                problems.append(f"names unlisted {slug}")
        for secret in case.must_not_contain:
            if secret in text:
                problems.append(f"shows {secret}")
        for needed in case.must_contain:
            if needed not in text:
                problems.append(f"does not show {needed}")
        case.problem = "; ".join(problems)


def _table(cases: list[Case]) -> str:
    """One row per (route, target), in route order, each "(no CSRF)" row after its own."""
    order: dict[tuple[str, str, str], tuple[int, int, bool]] = {}
    groups: dict[tuple[str, str], int] = {}
    for c in cases:
        group = groups.setdefault((c.canonical, c.method), len(groups))
        base = c.target.removesuffix(" (no CSRF)")
        first = order.get((c.canonical, c.method, base), (group, len(order), False))
        order.setdefault((c.canonical, c.method, base), first)
        order.setdefault((c.canonical, c.method, c.target), (first[0], first[1], c.target != base))
    rows: dict[tuple[str, str, str], dict[str, Case]] = {k: {} for k in sorted(order, key=order.__getitem__)}
    for c in cases:
        rows[(c.canonical, c.method, c.target)][c.caller.key] = c
    width = max(len(f"{m} {p} {t}") for p, m, t in rows) + 1
    lines = [f"{'route (target)':<{width}}" + "".join(f"{k:>9}" for k in CALLERS)]
    for (path, method, target), by in rows.items():
        label = f"{method} {path}" + (f" [{target}]" if target else "")
        cells = []
        for k in CALLERS:
            c = by.get(k)
            cells.append(f"{'·':>9}" if c is None else f"{str(c.status) + ('✗' if c.problem else ''):>9}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


# -- the test ------------------------------------------------------------------------------


async def test_every_route_with_every_caller(server: Server, mosquitto: Any, tmp_path: Path) -> None:
    routes = _routes(tmp_path)
    assert len(routes) > 50, "too few routes: is the walk looking at the app?"
    async with aiohttp.ClientSession(
        base_url=server.base, cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        callers, world = await _seed(http, mosquitto)
        resources = {p: r for _m, p, r in routes}
        world.static_file = _a_static_file(routes)
        # A's unlisted and public streams go live, so /metrics has per-stream gauges to show
        # (the public one) and to keep quiet about (the unlisted one).
        publishers = [await _publish(http, slug, world.keys[slug]) for slug in (A_PUB, A_UNL)]
        try:

            async def live() -> bool:
                states = [
                    await _ok(await http.get(f"/api/v1/streams/{s}", headers=ADM)) for s in (A_PUB, A_UNL)
                ]
                return all(s["state"]["status"] == "live" for s in states)

            await _until(live, 30, "both WHIP publishers live")
            planner = Planner(world, resources)
            cases = [
                case
                for method, path, _r in routes
                for k in CALLERS
                for case in planner.cases(method, path, callers[k])
            ]
            for case in cases:
                if case.canonical == "/metrics" and case.method == "GET":
                    case.must_contain = ('origincast_stream_live{stream="walk-a-pub"} 1.0',)
            await _walk(http, cases)
        finally:
            for pc in publishers:
                await pc.close()

    walked = {(c.method, c.canonical) for c in cases}
    assert walked == {(m, p) for m, p, _r in routes}, "a route was not walked"
    print(f"\nauthorization walk: {len(cases)} calls over {len(routes)} routes x {len(CALLERS)} callers")
    print(_table(cases))
    wrong = [
        f"{c.caller.key:>7} {c.method} {c.url} [{c.target}]: {c.status}: {c.problem}"
        for c in cases
        if c.problem
    ]
    assert not wrong, f"{len(wrong)} wrong answers:\n" + "\n".join(wrong)
    # The walk acted, not only refused: the writes it was allowed to make happened.
    allowed_writes = [
        c for c in cases if c.method not in SAFE and c.expect.kind == "ok" and 200 <= c.status < 300
    ]
    assert len(allowed_writes) > 40, len(allowed_writes)


# -- /metrics and unlisted streams ---------------------------------------------------------


@pytest.fixture
async def local(aiohttp_client: Any, sqlite_url: str) -> AsyncIterator[Any]:
    config = load_config(
        env={
            "ORIGINCAST_DATABASE_URL": sqlite_url,
            "ORIGINCAST_ADMIN_TOKEN": ADMIN_TOKEN,
            "ORIGINCAST_STREAM_VIDEO_BITRATE_BPS": "200000",
        }
    )
    yield await aiohttp_client(build_app(config, with_ingest=False))


async def test_metrics_name_only_public_streams(local: Any) -> None:
    """/metrics is public (scrapers hold no login): its per-stream gauges leave out
    unlisted streams, which only their share links may reveal, and follow a change of
    visibility at the next scrape."""
    from stream.sources.testpattern import TestPatternSource
    from web.app import CONFIG, STREAM_HUB

    for slug, visibility in (("open-cam", "public"), ("hidden-cam", "unlisted")):
        r = await local.post(
            "/api/v1/streams",
            headers=ADM,
            json={"slug": slug, "title": slug, "kind": "testpattern", "visibility": visibility},
        )
        assert r.status == 201, await r.text()
    app = local.app
    sources = [
        TestPatternSource(app[STREAM_HUB], s, app[CONFIG].stream, width=160, height=90, fps=10)
        for s in ("open-cam", "hidden-cam")
    ]
    for s in sources:
        await s.start()
    try:

        async def both_live() -> bool:
            return all(
                (st := app[STREAM_HUB].get(s)) is not None and st.live for s in ("open-cam", "hidden-cam")
            )

        await _until(both_live, 20, "test patterns live")

        async def scrape() -> str:
            r = await local.get("/metrics")
            assert r.status == 200
            return await r.text()

        text = await scrape()
        assert 'origincast_stream_live{stream="open-cam"} 1.0' in text
        assert "hidden-cam" not in text
        # Ingest and live-feed figures are still there (the per-scrape stream gauges are
        # added to the app's registry, not instead of it).
        assert "origincast_live_clients" in text
        r = await local.patch("/api/v1/streams/hidden-cam", json={"visibility": "public"}, headers=ADM)
        assert r.status == 200
        r = await local.patch("/api/v1/streams/open-cam", json={"visibility": "unlisted"}, headers=ADM)
        assert r.status == 200
        text = await scrape()
        assert 'origincast_stream_live{stream="hidden-cam"} 1.0' in text and "open-cam" not in text
    finally:
        for s in sources:
            await s.stop()
