"""The pages people open: ``/publish/<slug>`` (a producer's phone goes live) and
``/watch/<slug>`` (customers watch, no login), plus the files they load from ``/static/``.

Each page is server-rendered HTML in the reader's language (web.i18n), so it reads right
before any script runs; its script (plain JavaScript in web/static, no framework, nothing
from another site) does the WebRTC work against our own WHIP and WHEP endpoints. Both
catalogs are embedded in the page, so the language switch needs no reload.

Every page answers with a Content-Security-Policy that allows only this origin: a page
that showed a camera must never pull code from elsewhere, and the policy makes a stray
external URL fail in every browser instead of working by accident.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import orjson
from aiohttp import web

from stream.registry import SLUG_RE
from stream.settings import IceServer
from telemetry.alerts.rules import builtin_profiles
from web.demo import DEMO_SLUG, DEMO_TITLE
from web.i18n import LANGUAGE_COOKIE, LANGUAGES, Catalogs, choose_language, load_catalogs
from web.share import Access

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGES = ("publish", "watch", "console", "shipments")

# {{t:key}}: a message in the page's language (HTML-escaped, "{slug}" filled in);
# {{name}}: a value the handler computed (escaped by the handler where it is text).
_TOKEN = re.compile(r"\{\{\s*(t:)?([A-Za-z0-9_.]+)\s*\}\}")

_CSP_COMMON = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
)
# The publish page handles a secret key and a camera: no other site may frame it (a
# disguised frame could trick a producer into clicking Start). The player may be framed,
# so producers can embed it in their own sites.
_CSP = MappingProxyType(
    {
        "publish": "; ".join((*_CSP_COMMON, "frame-ancestors 'none'")),
        "watch": "; ".join(_CSP_COMMON),
        # The logistics console acts on alerts with the staff's session: never framed.
        "console": "; ".join((*_CSP_COMMON, "frame-ancestors 'none'")),
        # Shipments, their route and files: written with the user's session, never framed.
        "shipments": "; ".join((*_CSP_COMMON, "frame-ancestors 'none'")),
    }
)
_PERMISSIONS = MappingProxyType(
    {
        "publish": "camera=(self), microphone=(self), screen-wake-lock=(self)",
        "watch": "camera=(), microphone=()",
        "console": "camera=(), microphone=()",
        "shipments": "camera=(), microphone=()",
    }
)


@dataclass(frozen=True, slots=True)
class PageRenderer:
    """Templates and catalogs, read once at start-up; renders one page per request."""

    catalogs: Catalogs
    templates: Mapping[str, str]
    # (slug, share token) -> may this reader watch it (web.share); None: all public.
    access: Callable[[str, str | None], Awaitable[Access]] | None = None
    # STUN/TURN servers of the configuration, for the pages' peer connections.
    ice_servers: tuple[IceServer, ...] = ()

    @classmethod
    def load(
        cls,
        access: Callable[[str, str | None], Awaitable[Access]] | None = None,
        ice_servers: tuple[IceServer, ...] = (),
    ) -> PageRenderer:
        templates = {name: (TEMPLATE_DIR / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}
        return cls(load_catalogs(), MappingProxyType(templates), access, ice_servers)

    def render(
        self, page: str, slug: str, lang: str, extra: Mapping[str, object] | None = None, title: str = ""
    ) -> str:
        config = {
            "page": page,
            "slug": slug,
            "lang": lang,
            "languages": list(LANGUAGES),
            "cookie": LANGUAGE_COOKIE,
            "messages": self.catalogs.as_json_ready(),
            **(extra or {}),
        }
        values = {
            "lang": lang,
            "slug": html.escape(slug),
            "title": html.escape(title or slug),
            "config": _script_json(config),
            **{f"pressed_{code.replace('-', '_')}": str(code == lang).lower() for code in LANGUAGES},
        }

        def substitute(match: re.Match[str]) -> str:
            if match.group(1):
                text = self.catalogs.text(lang, match.group(2)).replace("{slug}", slug)
                return html.escape(text)
            return values[match.group(2)]

        return _TOKEN.sub(substitute, self.templates[page])

    async def handle(self, request: web.Request) -> web.Response:
        # /publish/<slug>, /watch/<slug>, /console; /shipments has a route of its own (its
        # own permission rule: producers use it too) and so no {page} in it.
        page = request.match_info.get("page") or request.path.strip("/")
        slug = request.match_info.get("slug", "")  # /console and /shipments have none
        lang = choose_language(
            request.query.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("Accept-Language"),
        )
        # A slug that can never exist still gets the page (its script then says "no such
        # stream" in the reader's language), with a 404 for crawlers and monitors.
        status = 200 if page in ("console", "shipments") or SLUG_RE.fullmatch(slug) else 404
        extra: dict[str, object] = {}
        title = ""
        if page == "watch" and status == 200:
            status, extra, title = await self._watch(slug, request.query.get("share"), lang)
        elif page == "shipments":
            # The built-in profiles, for producers too (the profiles API is for staff).
            extra = {
                "profiles": [{"id": pid, "name": p.name} for pid, p in builtin_profiles().items()],
            }
        elif page == "publish":
            # Without credentials: a TURN server's are given only for the stream's key (WHIP
            # OPTIONS, web.media_whip); STUN needs none.
            extra = {"iceServers": _ice_json(s for s in self.ice_servers if s.credential is None)}
        return web.Response(
            text=self.render(page, slug, lang, extra, title),
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": _CSP[page],
                "Permissions-Policy": _PERMISSIONS[page],
                "Referrer-Policy": "same-origin",
                "X-Content-Type-Options": "nosniff",
                # The language follows the request; a shared cache must not mix them up.
                "Vary": "Accept-Language, Cookie",
                "Cache-Control": "no-cache",
            },
        )


    async def _watch(self, slug: str, share: str | None, lang: str) -> tuple[int, dict[str, object], str]:
        """A watchable stream: 200, its title, site, share token and ICE servers for the
        script. An unknown stream and an unlisted one without a valid share token get the
        same 404 page (its script says "no such stream")."""
        access = await self.access(slug, share) if self.access is not None else Access(True, None)
        stream = access.stream
        if stream is None:
            return 404, {"stream": None, "share": None, "iceServers": []}, ""
        # The demo's registry title is English; its page shows the catalog's, in the
        # reader's language (watch.js does the same after a language switch).
        builtin = slug == DEMO_SLUG and stream.title == DEMO_TITLE
        title = self.catalogs.text(lang, "watch.demo_title") if builtin else stream.title
        return (
            200,
            {
                "stream": {"title": stream.title, "site": stream.site, "builtin": builtin},
                "share": share if stream.visibility == "unlisted" else None,
                # Every viewer of the stream may need the TURN server to get through.
                "iceServers": _ice_json(self.ice_servers),
            },
            title,
        )


def _ice_json(servers: Iterable[IceServer]) -> list[dict[str, object]]:
    """RTCIceServer dictionaries, as ``new RTCPeerConnection({iceServers})`` takes them."""
    out: list[dict[str, object]] = []
    for s in servers:
        entry: dict[str, object] = {"urls": list(s.urls)}
        if s.username is not None:
            entry["username"] = s.username
        if s.credential is not None:
            entry["credential"] = s.credential
        out.append(entry)
    return out


def _script_json(value: object) -> str:
    """JSON safe inside <script type="application/json">: no "</script>" or "<!--" can
    end the element early, whatever a slug or a message contains."""
    text = orjson.dumps(value).decode("utf-8")
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def _static_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/static/"):
        # Revalidate every time (a cheap 304): a phone must not keep last version's
        # script after an upgrade, and the pages load their modules by plain names.
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"


def add_page_routes(
    app: web.Application,
    access: Callable[[str, str | None], Awaitable[Access]] | None = None,
    ice_servers: tuple[IceServer, ...] = (),
) -> None:
    """GET /publish/{slug}, GET /watch/{slug} and the files under /static/."""
    renderer = PageRenderer.load(access, ice_servers)
    app.router.add_get(r"/{page:publish|watch}/{slug}", renderer.handle)
    # The logistics console: a static shell; its data comes from the API, which authorizes.
    app.router.add_get(r"/{page:console}", renderer.handle)
    app.router.add_get("/shipments", renderer.handle)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    app.on_response_prepare.append(_static_headers)
