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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import orjson
from aiohttp import web

from stream.registry import SLUG_RE
from web.i18n import LANGUAGE_COOKIE, LANGUAGES, Catalogs, choose_language, load_catalogs

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGES = ("publish", "watch")

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
    }
)
_PERMISSIONS = MappingProxyType(
    {
        "publish": "camera=(self), microphone=(self), screen-wake-lock=(self)",
        "watch": "camera=(), microphone=()",
    }
)


@dataclass(frozen=True, slots=True)
class PageRenderer:
    """Templates and catalogs, read once at start-up; renders one page per request."""

    catalogs: Catalogs
    templates: Mapping[str, str]

    @classmethod
    def load(cls) -> PageRenderer:
        templates = {name: (TEMPLATE_DIR / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}
        return cls(load_catalogs(), MappingProxyType(templates))

    def render(self, page: str, slug: str, lang: str) -> str:
        config = {
            "page": page,
            "slug": slug,
            "lang": lang,
            "languages": list(LANGUAGES),
            "cookie": LANGUAGE_COOKIE,
            "messages": self.catalogs.as_json_ready(),
        }
        values = {
            "lang": lang,
            "slug": html.escape(slug),
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
        page = request.match_info["page"]
        slug = request.match_info["slug"]
        lang = choose_language(
            request.query.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("Accept-Language"),
        )
        # A slug that can never exist still gets the page (its script then says "no such
        # stream" in the reader's language), with a 404 for crawlers and monitors.
        status = 200 if SLUG_RE.fullmatch(slug) else 404
        return web.Response(
            text=self.render(page, slug, lang),
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


def add_page_routes(app: web.Application) -> None:
    """GET /publish/{slug}, GET /watch/{slug} and the files under /static/."""
    renderer = PageRenderer.load()
    app.router.add_get(r"/{page:publish|watch}/{slug}", renderer.handle)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    app.on_response_prepare.append(_static_headers)
