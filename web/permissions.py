"""Who may do what: the route × role table, in one place, and the middleware that enforces it.

Roles (web.accounts): ``admin`` does everything; ``logistics`` staff read and handle
alerts, profiles and devices; a ``producer`` runs their own streams. A viewer (no login)
watches public streams and nothing else. The legacy admin token is an admin.

``RULES`` below is the table. Before any handler runs, the middleware finds the rule of
the matched route (by method and the route's canonical path) and calls
``Authenticator.require`` with its roles (401 without credentials, 403 with the wrong
role or a missing CSRF token), or lets anyone through for a public rule. A route that
has no rule needs an admin: a new endpoint is closed until someone decides who may use
it (tests/unit/test_accounts_permissions.py fails for any route without a rule).
Handlers then add only what depends on the data, named in each rule's note.

Run ``python -m web.permissions`` to print the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

from web.accounts import Role
from web.auth import Authenticator

PUBLIC: tuple[Role, ...] = ()
ADMIN: tuple[Role, ...] = ("admin",)
STAFF: tuple[Role, ...] = ("admin", "logistics")
STREAM_OWNERS: tuple[Role, ...] = ("admin", "producer")
ANY_USER: tuple[Role, ...] = ("admin", "logistics", "producer")


@dataclass(frozen=True, slots=True)
class Rule:
    method: str
    path: str  # aiohttp's canonical form: "/api/v1/streams/{slug}"
    roles: tuple[Role, ...]  # () = anyone, no login needed
    note: str = ""
    # A page a browser opens: without a login it is sent to /login?next=… instead of a
    # JSON 401 it could not show.
    page: bool = False


# fmt: off
RULES: tuple[Rule, ...] = (
    # -- accounts ---------------------------------------------------------------------------
    Rule("POST",   "/api/v1/session",                    PUBLIC,  "log in (name, password)"),
    Rule("GET",    "/api/v1/session",                    ANY_USER, "who am I, and my CSRF token"),
    Rule("DELETE", "/api/v1/session",                    PUBLIC,  "log out (a live session: its CSRF token)"),
    Rule("GET",    "/api/v1/users",                      ADMIN),
    Rule("POST",   "/api/v1/users",                      ADMIN),
    Rule("PATCH",  "/api/v1/users/{name}",               ANY_USER, "admin: anyone; others: own password"
                                                                   " (with the old one), display name"),
    Rule("DELETE", "/api/v1/users/{name}",               ADMIN,   "never the last enabled admin"),
    Rule("GET",    "/api/v1/tokens",                     ANY_USER, "their own; admin: everyone's"),
    Rule("POST",   "/api/v1/tokens",                     ANY_USER, "a token of their own"),
    Rule("DELETE", "/api/v1/tokens/{id}",                ANY_USER, "their own; admin: any"),
    Rule("GET",    "/login",                             PUBLIC),
    # -- streams ----------------------------------------------------------------------------
    Rule("GET",    "/api/v1/streams",                    PUBLIC,  "public ones; staff all; a producer also"
                                                                  " their own unlisted ones"),
    Rule("POST",   "/api/v1/streams",                    STREAM_OWNERS, "a producer's stream is theirs"),
    Rule("GET",    "/api/v1/streams/{slug}",             PUBLIC,  "unlisted: staff, its owner or ?share="),
    Rule("PATCH",  "/api/v1/streams/{slug}",             STREAM_OWNERS, "a producer: own streams only"),
    Rule("DELETE", "/api/v1/streams/{slug}",             STREAM_OWNERS, "a producer: own streams only"),
    Rule("POST",   "/api/v1/streams/{slug}/rotate-key",  STREAM_OWNERS, "a producer: own streams only"),
    Rule("GET",    "/api/v1/streams/{slug}/links",       PUBLIC,  "as GET /api/v1/streams/{slug}"),
    Rule("PUT",    "/api/v1/streams/{slug}/links",       STAFF,   "staff: which sensors a page shows is the"
                                                                  " shippers' call, not a stream owner's"),
    Rule("POST",   "/api/v1/streams/{slug}/share",       STREAM_OWNERS, "a producer: own streams only"),
    # WHIP: the stream's publish key is the credential (web.media_whip).
    Rule("POST",   "/whip/{slug}",                       PUBLIC,  "publish key"),
    Rule("OPTIONS", "/whip/{slug}",                      PUBLIC),
    Rule("DELETE", "/whip/{slug}/{session}",             PUBLIC,  "the session's own URL"),
    Rule("PATCH",  "/whip/{slug}/{session}",             PUBLIC,  "the session's own URL"),
    Rule("OPTIONS", "/whip/{slug}/{session}",            PUBLIC),
    # WHEP and pages: public streams for anyone, unlisted ones with a share token (web.share).
    Rule("POST",   "/whep/{slug}",                       PUBLIC,  "unlisted: ?share="),
    Rule("OPTIONS", "/whep/{slug}",                      PUBLIC),
    Rule("DELETE", "/whep/{slug}/{session}",             PUBLIC,  "the session's own URL"),
    Rule("PATCH",  "/whep/{slug}/{session}",             PUBLIC,  "the session's own URL"),
    Rule("OPTIONS", "/whep/{slug}/{session}",            PUBLIC),
    Rule("GET",    "/{page}/{slug}",                     PUBLIC,  "/watch: unlisted needs ?share=;"
                                                                  " /publish: the key is asked on the page"),
    Rule("GET",    "/{page}",                            STAFF,   "/console", page=True),
    Rule("GET",    "/shipments",                         ANY_USER, "shipments, files, QR labels", page=True),
    Rule("GET",    "/static",                            PUBLIC),
    # -- telemetry --------------------------------------------------------------------------
    Rule("GET",    "/api/v1/live",                       PUBLIC,  "?stream= for its viewers; ?site=, ?device="
                                                                  " and the fleet: staff (web.live)"),
    Rule("GET",    "/api/v1/alerts",                     STAFF),
    Rule("GET",    "/api/v1/alerts/{id}",                STAFF),
    Rule("POST",   "/api/v1/alerts/{id}/acknowledge",    STAFF,   "audit actor: the user's name"),
    Rule("POST",   "/api/v1/alerts/{id}/resolve",        STAFF,   "audit actor: the user's name"),
    Rule("GET",    "/api/v1/alert-profiles",             STAFF),
    Rule("PUT",    "/api/v1/alert-profiles/{id}",        STAFF,   "custom profiles only"),
    Rule("GET",    "/api/v1/devices",                    STAFF),
    Rule("PUT",    "/api/v1/devices/{id}",               STAFF,   "site and profile assignment"),
    Rule("GET",    "/api/v1/devices/{id}/history",       STAFF),
    Rule("GET",    "/api/v1/fleet",                      STAFF),
    # -- shipments (web.api_shipments) -------------------------------------------------------
    Rule("GET",    "/api/v1/shipments",                  ANY_USER),
    Rule("POST",   "/api/v1/shipments",                  ANY_USER, "producers too (later: own origin site)"),
    Rule("GET",    "/api/v1/shipments/{id}",             ANY_USER),
    Rule("PATCH",  "/api/v1/shipments/{id}",             ANY_USER, "open shipments only"),
    Rule("POST",   "/api/v1/shipments/{id}/segments",    ANY_USER, "open shipments only"),
    Rule("POST",   "/api/v1/shipments/{id}/close",       ANY_USER),
    Rule("GET",    "/api/v1/shipments/{id}/report",      STAFF,   "public page: with the evidence log"),
    Rule("GET",    "/api/v1/shipments/{id}/report.csv",  STAFF),
    Rule("GET",    "/api/v1/shipments/{id}/report.pdf",  STAFF,   "?lang=zh-CN|en"),
    Rule("GET",    "/api/v1/shipments/{id}/qr.svg",      ANY_USER, "the package label: /v/<id>#k=<vkey>"),
    Rule("GET",    "/api/v1/shipments/{id}/qr.png",      ANY_USER, "the package label: /v/<id>#k=<vkey>"),
    # -- trust page, test reports and origin photos (web.trust, web.api_files) ---------------
    Rule("GET",    "/v/{id}",                            PUBLIC,  "the trust page; verifies in the browser"),
    Rule("GET",    "/api/v1/public/shipments/{id}",      PUBLIC,  "what a customer sees, and its evidence"),
    Rule("GET",    "/api/v1/public/shipments/{id}/bundle", PUBLIC, "the offline evidence bundle (a file)"),
    Rule("POST",   "/api/v1/batches/{batch}/files",      ANY_USER, "producers and staff; uploader recorded"),
    Rule("GET",    "/api/v1/batches/{batch}/files",      PUBLIC,  "shown on the trust page"),
    Rule("GET",    "/files/{sha256}",                    PUBLIC,  "content-addressed, immutable"),
    # -- the evidence log (web.api_evidence): public, since everything in it is checked ---
    Rule("GET",    "/log/checkpoint",                    PUBLIC),
    Rule("GET",    "/log/{tile}",                        PUBLIC,  "C2SP tlog-tiles"),
    Rule("GET",    "/api/v1/evidence/key",               PUBLIC),
    Rule("GET",    "/api/v1/evidence/proofs",            PUBLIC),
    Rule("GET",    "/api/v1/evidence/leaves",            PUBLIC),
    # Raw readings are the shippers' business (as the fleet and history are): staff only.
    # A customer gets a shipment's own readings in its public bundle (web.trust).
    Rule("GET",    "/api/v1/evidence/devices/{id}/batches", STAFF, "a device's batch chain over a window"),
    Rule("GET",    "/api/v1/evidence/batches/{index}/readings", STAFF, "the readings a batch leaf hashed"),
    # -- operations -------------------------------------------------------------------------
    Rule("GET",    "/api/v1/openapi.json",               PUBLIC),
    Rule("GET",    "/healthz",                           PUBLIC),
    Rule("GET",    "/readyz",                            PUBLIC),
    Rule("GET",    "/metrics",                           PUBLIC,  "for the scraper; no secrets"),
)
# fmt: on

_BY_KEY = {(r.method, r.path): r for r in RULES}
DEFAULT_ROLES: tuple[Role, ...] = ADMIN


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route (HEAD is GET's); None: no rule, so admin only."""
    return _BY_KEY.get(("GET" if method == "HEAD" else method, path))


def route_path(request: web.Request) -> str | None:
    """The canonical path of the route the request matched; None when none matched."""
    match = request.match_info
    if match.http_exception is not None:
        return None
    resource = match.route.resource
    return resource.canonical if resource is not None else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def permissions_middleware(auth: Authenticator) -> Middleware:
    @web.middleware
    async def enforce(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = route_path(request)
        if path is None:
            return await handler(request)  # 404/405: the router's own answer
        rule = rule_for(request.method, path)
        roles = rule.roles if rule is not None else DEFAULT_ROLES
        if roles:
            if rule is not None and rule.page and await auth.identify(request) is None:
                target = quote(request.path_qs, safe="/?=&")
                raise web.HTTPSeeOther(f"/login?next={quote(target, safe='')}")
            await auth.require(request, *roles)
        return await handler(request)

    return enforce


def table() -> str:
    """The rules as a text table (``python -m web.permissions``)."""
    lines = [f"{'method':<8} {'path':<38} {'who':<26} note"]
    for r in RULES:
        who = ", ".join(r.roles) if r.roles else "anyone"
        lines.append(f"{r.method:<8} {r.path:<38} {who:<26} {r.note}")
    lines.append(f"{'*':<8} {'(any other route)':<38} {', '.join(DEFAULT_ROLES):<26}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
