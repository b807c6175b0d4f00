"""Message catalogs for the pages people read (Simplified Chinese and English), and the
choice between them.

The catalogs are JSON files beside this module, one per language, with the same keys.
The server renders a page in the chosen language (so it reads right before any script
runs) and embeds both catalogs, so the page's switch (中文 / EN) changes language at once
without a reload. The choice, in order: ``?lang=`` in the URL (a link can force one),
the cookie the switch sets (the reader chose), then the browser's Accept-Language.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

# The languages we have catalogs for, in the order the switch shows them.
LANGUAGES: tuple[str, ...] = ("zh-CN", "en")
# Who sends none of ours gets English: the producers' and customers' common second language.
DEFAULT_LANGUAGE = "en"
# Set by the page's switch (web/static/common.js); read here on the next request.
LANGUAGE_COOKIE = "origincast_lang"

_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Catalogs:
    """Every language's messages, read once at start-up; read-only afterwards."""

    messages: Mapping[str, Mapping[str, str]]

    def text(self, language: str, key: str) -> str:
        """The message ``key`` in ``language``; a missing key is a bug (KeyError), caught
        by the catalog test, not papered over with the key itself."""
        return self.messages[language][key]

    def as_json_ready(self) -> dict[str, dict[str, str]]:
        return {lang: dict(table) for lang, table in self.messages.items()}


class CatalogError(ValueError):
    """A catalog is missing, is not a flat JSON object of texts, or lacks keys others have."""


def load_catalogs(directory: Path = _DIR) -> Catalogs:
    tables: dict[str, Mapping[str, str]] = {}
    for lang in LANGUAGES:
        path = directory / f"{lang}.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"message catalog {path}: {exc}") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise CatalogError(f"message catalog {path}: expected a flat JSON object of texts")
        tables[lang] = MappingProxyType(dict(raw))
    # A key in one language only would show up as a raw key to the other's readers.
    keys = {lang: set(t) for lang, t in tables.items()}
    every = set().union(*keys.values())
    for lang, have in keys.items():
        if have != every:
            raise CatalogError(f"message catalog {lang}: missing {sorted(every - have)}")
    return Catalogs(MappingProxyType(tables))


def match_language(tag: str) -> str | None:
    """One of LANGUAGES for a BCP 47 tag, or None. Every Chinese variant gets the
    Simplified catalog (a Traditional reader still reads it better than English)."""
    primary = tag.strip().lower().split("-")[0]
    if primary == "zh":
        return "zh-CN"
    if primary == "en":
        return "en"
    return None


def parse_accept_language(header: str) -> list[str]:
    """Our languages the header accepts, best first (RFC 9110 12.5.4: q-values, q=0 refuses)."""
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(header.split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        lang = match_language(tag) if tag.strip() and tag.strip() != "*" else None
        if lang is not None and q > 0:
            ranked.append((-q, index, lang))  # index keeps the header's order among equals
    seen: list[str] = []
    for _q, _i, lang in sorted(ranked):
        if lang not in seen:
            seen.append(lang)
    return seen


def choose_language(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    for explicit in (query, cookie):
        if explicit:
            lang = match_language(explicit)
            if lang is not None:
                return lang
    if accept_language:
        accepted = parse_accept_language(accept_language)
        if accepted:
            return accepted[0]
    return DEFAULT_LANGUAGE
