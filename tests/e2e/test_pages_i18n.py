"""The pages without a browser: every message a page or script asks for exists in both
languages, the language is chosen as documented, nothing is loaded from another site,
and the page answers carry their security headers. Fast; the browser tests show the
same pages working."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from stream.registry import StreamSpec
from telemetry.alerts.rules import builtin_profiles
from web.app import STREAMS, build_app
from web.config import load_config
from web.i18n import LANGUAGES, CatalogError, choose_language, load_catalogs, parse_accept_language
from web.pages import STATIC_DIR, TEMPLATE_DIR, PageRenderer

CATALOGS = load_catalogs()
TEMPLATES = {p.name: p.read_text(encoding="utf-8") for p in TEMPLATE_DIR.glob("*.html")}
SCRIPTS = {p.name: p.read_text(encoding="utf-8") for p in STATIC_DIR.glob("*.js")}
# Python that renders text for people (the shipment report PDF) asks for keys the same way.
SCRIPTS["shipment_pdf.py"] = (STATIC_DIR.parent / "shipment_pdf.py").read_text(encoding="utf-8")
# The states each script builds a key from (`publish.state_${state}`, `watch.state_${state}`).
PUBLISH_STATES = ("idle", "camera", "connecting", "live", "reconnecting", "stopped", "error")
WATCH_STATES = ("connecting", "live", "waiting", "offline", "reconnecting", "unknown", "unsupported")
# The console's keys built from values (`console.state_${state}`, `console.severity_${…}` …).
CONSOLE_BUILT = {
    f"console.{group}_{value}"
    for group, values in (
        ("state", ("ok", "alert", "offline", "stale")),
        ("severity", ("critical", "major", "minor", "warning")),
        ("status", ("open", "acknowledged", "resolved")),
        ("audit", ("raised", "peak", "acknowledged", "resolved", "site_changed")),
        ("role", ("admin", "logistics", "producer")),
    )
    for value in values
}
# The trust page's keys built from values (`trust.fig_${k}`, `trust.action_${a.action}`).
TRUST_BUILT = {f"trust.fig_{k}" for k in ("min", "max", "mean", "mkt", "out_of_range", "gaps")} | {
    f"trust.action_{a}" for a in ("raised", "peak", "acknowledged", "resolved", "cleared", "site_changed")
}
# The login page's role names (`role.${current.role}`).
ROLES_BUILT = {f"role.{r}" for r in ("admin", "logistics", "producer")}
# The shipments page's (`shipments.state_${s.state}`, `shipments.kind_${f.kind}`,
# `profile.${id}` for the built-in profiles).
SHIPMENTS_BUILT = (
    {f"shipments.state_{s}" for s in ("open", "closed")}
    | {f"shipments.kind_{k}" for k in ("test_report", "photo")}
    | {f"profile.{p}" for p in builtin_profiles()}
)
_KEY = r"(?:lang|common|publish|watch|error|report|console|trust|login|shipments|profile)\.[a-z0-9_]+"


def _keys_used() -> set[str]:
    used = {f"publish.state_{s}" for s in PUBLISH_STATES} | {f"watch.state_{s}" for s in WATCH_STATES}
    used |= CONSOLE_BUILT | TRUST_BUILT | ROLES_BUILT | SHIPMENTS_BUILT
    for text in TEMPLATES.values():
        used |= set(re.findall(r"\{\{t:(" + _KEY + r")\}\}", text))
        used |= set(re.findall(r'data-i18n(?:-[a-z-]+)?="(' + _KEY + ')"', text))
    for text in SCRIPTS.values():
        used |= set(re.findall(r"['\"](" + _KEY + r")['\"]", text))
    return used


def test_every_message_used_exists_in_both_languages():
    assert set(CATALOGS.messages) == set(LANGUAGES)
    used = _keys_used()
    assert len(used) > 40  # the scan found the pages' keys, not nothing
    for lang in LANGUAGES:
        missing = sorted(used - set(CATALOGS.messages[lang]))
        assert not missing, f"{lang} lacks {missing}"
    unused = sorted(set(CATALOGS.messages["en"]) - used)
    assert not unused, f"messages no page uses: {unused}"


def test_chinese_catalog_is_chinese():
    zh = CATALOGS.messages["zh-CN"]
    # Every message a reader sees as a sentence has Han characters (not English left over).
    for key, text in zh.items():
        if key in ("publish.stats",):
            continue
        assert re.search(r"[\u4e00-\u9fff]", text), f"zh-CN {key} is not Chinese: {text!r}"


def test_a_catalog_missing_keys_is_refused(tmp_path: Path):
    (tmp_path / "en.json").write_text('{"a": "A", "b": "B"}', encoding="utf-8")
    (tmp_path / "zh-CN.json").write_text('{"a": "甲"}', encoding="utf-8")
    with pytest.raises(CatalogError, match=r"zh-CN: missing \['b'\]"):
        load_catalogs(tmp_path)


@pytest.mark.parametrize(
    ("query", "cookie", "accept", "expected"),
    [
        (None, None, None, "en"),
        (None, None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, None, "zh-TW", "zh-CN"),  # Simplified is closer than English for a Traditional reader
        (None, None, "fr-FR, en;q=0.5, zh;q=0.7", "zh-CN"),  # q-values, not order
        (None, None, "zh;q=0, en", "en"),  # q=0 refuses
        (None, None, "de, *", "en"),
        (None, "en", "zh-CN", "en"),  # the reader's switch beats the browser
        ("zh", "en", "en", "zh-CN"),  # a link's ?lang= beats both
        ("xx", None, "zh-CN", "zh-CN"),  # an unknown ?lang= is ignored
    ],
)
def test_language_choice(query, cookie, accept, expected):
    assert choose_language(query, cookie, accept) == expected


def test_accept_language_ranking():
    assert parse_accept_language("en-GB;q=0.8, zh-Hans-CN, en-US") == ["zh-CN", "en"]
    assert parse_accept_language("en;q=abc, zh;q=0.1") == ["zh-CN"]  # a bad q is q=0


def test_nothing_is_loaded_from_another_site():
    # Only our own origin: no CDN, font service or analytics in any page or script.
    for name, text in {**TEMPLATES, **SCRIPTS, "style.css": (STATIC_DIR / "style.css").read_text()}.items():
        assert not re.search(r"(?:https?:)?//[a-z0-9-]+\.[a-z0-9.-]+", text, re.I), name
        assert "@import" not in text, name


def test_embedded_data_cannot_close_the_script_element():
    page = PageRenderer(CATALOGS, {"watch": "{{config}}"}).render("watch", "a</script><b>", "en")
    assert "</script>" not in page and "<b>" not in page


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    config = load_config(env={"ORIGINCAST_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"})
    return await aiohttp_client(build_app(config, with_ingest=False))


async def test_pages_are_served_in_the_chosen_language_with_their_headers(client):
    # The player answers 200 for a registered stream (unknown ones: the same page, a 404).
    await asyncio.to_thread(client.app[STREAMS].create, StreamSpec(slug="demo", title="Demo"))
    r = await client.get("/watch/demo", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert r.status == 200
    body = await r.text()
    assert '<html lang="zh-CN">' in body and "来自源头的实时画面" in body
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "Accept-Language" in r.headers["Vary"]

    r = await client.get(
        "/publish/farm-cam", headers={"Accept-Language": "zh-CN"}, cookies={"origincast_lang": "en"}
    )
    body = await r.text()
    assert '<html lang="en">' in body and "Go live from this phone" in body
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "camera=(self)" in r.headers["Permissions-Policy"]

    r = await client.get("/watch/demo?lang=zh")
    assert '<html lang="zh-CN">' in await r.text()

    # A slug that can never exist, or one nobody registered: still the page (its script
    # says so), but a 404.
    for slug in ("NOT_A_SLUG", "not-registered"):
        r = await client.get(f"/watch/{slug}")
        assert r.status == 404 and "text/html" in r.headers["Content-Type"]

    for name in ("common.js", "publish.js", "watch.js", "style.css"):
        r = await client.get(f"/static/{name}")
        assert r.status == 200, name
        assert r.headers["Cache-Control"] == "no-cache"
