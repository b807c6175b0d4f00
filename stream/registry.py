"""The streams a deployment knows: slug, title, site, source kind, visibility, publish key.

What is stored here is configuration, not state: whether a stream is live, its codec
and its viewers live in the hub. Storage is in ``registry_sql`` (SQLite and PostgreSQL,
the same database as telemetry, its own small migration table); everything here is
plain values and checks, so the web tier and the CLI share one set of rules.

Publish keys are 32 random bytes (``secrets.token_urlsafe``), shown once when made and
stored as their SHA-256. A slow, salted hash (scrypt, argon2) exists to protect
guessable passwords; a 256-bit random token cannot be guessed, so one SHA-256 is as
strong and lets a WHIP POST be checked without burning CPU an attacker could ask for.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, get_args
from urllib.parse import urlsplit, urlunsplit

SourceKind = Literal["whip", "rtsp", "testpattern"]
Visibility = Literal["public", "unlisted"]
SOURCE_KINDS: tuple[SourceKind, ...] = get_args(SourceKind)
VISIBILITIES: tuple[Visibility, ...] = get_args(Visibility)

SLUG_RE = re.compile(r"[a-z0-9-]{1,64}")
TITLE_MAX = 200
SITE_MAX = 100
OWNER_MAX = 100
PUBLISH_KEY_BYTES = 32


class RegistryError(ValueError):
    """A request the registry refuses; the message says why (shown to operators and API callers)."""


class InvalidStream(RegistryError):
    """A field has a value the registry does not accept."""


class StreamExists(RegistryError):
    pass


class StreamNotFound(RegistryError):
    pass


@dataclass(frozen=True, slots=True)
class Stream:
    slug: str
    title: str
    site: str | None
    kind: SourceKind
    visibility: Visibility
    owner: str | None
    created_at: datetime
    # Camera URLs often carry credentials: kept out of repr (and so out of logs); show
    # ``masked_rtsp_url`` instead.
    rtsp_url: str | None = field(default=None, repr=False)

    @property
    def masked_rtsp_url(self) -> str | None:
        return mask_url_credentials(self.rtsp_url) if self.rtsp_url else None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What an operator gives to create a stream (validated by ``validate_spec``)."""

    slug: str
    title: str
    site: str | None = None
    kind: SourceKind = "whip"
    visibility: Visibility = "public"
    owner: str | None = None
    rtsp_url: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StreamChanges:
    """A partial update; ``None`` means "leave as is". ``clear_site`` / ``clear_rtsp_url`` /
    ``clear_owner`` exist because None cannot also mean "set to nothing"."""

    title: str | None = None
    site: str | None = None
    clear_site: bool = False
    kind: SourceKind | None = None
    visibility: Visibility | None = None
    rtsp_url: str | None = field(default=None, repr=False)
    clear_rtsp_url: bool = False
    # The user who manages the stream (a producer's own streams); the web tier decides who
    # may change it.
    owner: str | None = None
    clear_owner: bool = False


class StreamRepository(Protocol):
    """Persistence of streams. Synchronous (call through ``asyncio.to_thread``); every
    method is safe to call from several threads."""

    kind: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def migrate(self) -> list[str]: ...

    def create(self, spec: StreamSpec) -> tuple[Stream, str]:
        """Store a new stream; returns it and its publish key (the only time the key exists
        in clear). Raises StreamExists, InvalidStream."""
        ...

    def get(self, slug: str) -> Stream | None: ...

    def list_streams(self, *, include_unlisted: bool = False) -> list[Stream]: ...

    def update(self, slug: str, changes: StreamChanges) -> Stream:
        """Raises StreamNotFound, InvalidStream."""
        ...

    def rotate_key(self, slug: str) -> str:
        """A new publish key replaces the old one at once. Raises StreamNotFound."""
        ...

    def delete(self, slug: str) -> bool: ...

    def verify_publish_key(self, slug: str, key: str) -> bool:
        """True when ``key`` is the stream's current publish key (constant-time compare)."""
        ...

    def get_links(self, slug: str) -> StreamLinks | None:
        """The sites and devices stored for ``slug`` (empty: none stored, see
        ``effective_links``); None for an unknown stream."""
        ...

    def set_links(self, slug: str, links: StreamLinks) -> StreamLinks:
        """Replace the stream's links (validated). Raises StreamNotFound, InvalidStream."""
        ...

    def share_stamp(self, slug: str) -> str | None:
        """What a share token is bound to besides the slug: the stream's creation time and
        its share generation, which ``rotate_key`` bumps (so rotating revokes every share
        link, and a stream removed and made again does not inherit the old links)."""
        ...

    def server_secret(self) -> bytes:
        """The deployment's share-link signing key, made once and kept in this database
        (every web node of a deployment shares it)."""
        ...


@dataclass(frozen=True, slots=True)
class StreamLinks:
    """The sensors a stream shows: every device of ``sites`` and each of ``devices``."""

    sites: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.sites and not self.devices


def effective_links(stream: Stream, stored: StreamLinks) -> StreamLinks:
    """Nothing stored means the stream's own site (a new stream shows its site's sensors
    without anyone linking it)."""
    if stored.empty:
        return StreamLinks(sites=(stream.site,) if stream.site else ())
    return stored


# -- checks ---------------------------------------------------------------------------


def check_slug(slug: object) -> str:
    if not isinstance(slug, str) or SLUG_RE.fullmatch(slug) is None:
        raise InvalidStream(f"slug must be 1 to 64 characters of a-z, 0-9 and '-', got {slug!r}")
    return slug


def _check_text(name: str, value: object, max_len: int, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidStream(f"{name} must be text, got {value!r}")
    value = value.strip()
    if not value:
        if required:
            raise InvalidStream(f"{name} must not be empty")
        return None
    if len(value) > max_len:
        raise InvalidStream(f"{name} must be at most {max_len} characters, got {len(value)}")
    if any(ord(c) < 32 for c in value):
        raise InvalidStream(f"{name} must not contain control characters")
    return value


def check_title(title: object) -> str:
    checked = _check_text("title", title, TITLE_MAX, required=True)
    assert checked is not None
    return checked


def check_site(site: object) -> str | None:
    return _check_text("site", site, SITE_MAX, required=False)


def check_owner(owner: object) -> str | None:
    return _check_text("owner", owner, OWNER_MAX, required=False)


def check_kind(kind: object) -> SourceKind:
    if kind not in SOURCE_KINDS:
        raise InvalidStream(f"kind must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    return kind


def check_visibility(visibility: object) -> Visibility:
    if visibility not in VISIBILITIES:
        raise InvalidStream(f"visibility must be one of {', '.join(VISIBILITIES)}, got {visibility!r}")
    return visibility


def check_rtsp_url(url: object) -> str:
    # The message never repeats the URL: it may hold the camera's password.
    if not isinstance(url, str) or not url.strip():
        raise InvalidStream("rtsp_url must be an rtsp:// or rtsps:// URL")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise InvalidStream("rtsp_url must be rtsp://[user:pass@]host[:port]/path or rtsps://…")
    try:
        _ = parts.port
    except ValueError:
        raise InvalidStream("rtsp_url: the port is not a number from 1 to 65535") from None
    if any(ord(c) <= 32 for c in url):
        raise InvalidStream("rtsp_url must not contain spaces or control characters")
    return url


def check_kind_and_url(kind: SourceKind, rtsp_url: str | None) -> None:
    """An RTSP stream needs its camera's URL; other kinds have none (a stale one would be
    a stored credential nobody uses)."""
    if kind == "rtsp" and not rtsp_url:
        raise InvalidStream("a stream of kind rtsp needs rtsp_url")
    if kind != "rtsp" and rtsp_url:
        raise InvalidStream(f"rtsp_url is only for streams of kind rtsp, not {kind}")


LINKS_MAX = 100
DEVICE_ID_MAX = 64


def check_links(sites: object, devices: object) -> StreamLinks:
    """Lists of site and device ids; duplicates dropped, order kept."""

    def ids(name: str, values: object, max_len: int) -> tuple[str, ...]:
        if not isinstance(values, list | tuple):
            raise InvalidStream(f"{name} must be a list of ids, got {values!r}")
        if len(values) > LINKS_MAX:
            raise InvalidStream(f"{name}: at most {LINKS_MAX} ids, got {len(values)}")
        out: dict[str, None] = {}
        for v in values:
            checked = _check_text(name, v, max_len, required=True)
            assert checked is not None
            out[checked] = None
        return tuple(out)

    return StreamLinks(sites=ids("sites", sites, SITE_MAX), devices=ids("devices", devices, DEVICE_ID_MAX))


def validate_spec(spec: StreamSpec) -> StreamSpec:
    kind = check_kind(spec.kind)
    rtsp_url = check_rtsp_url(spec.rtsp_url) if spec.rtsp_url is not None else None
    check_kind_and_url(kind, rtsp_url)
    return StreamSpec(
        slug=check_slug(spec.slug),
        title=check_title(spec.title),
        site=check_site(spec.site),
        kind=kind,
        visibility=check_visibility(spec.visibility),
        owner=check_owner(spec.owner),
        rtsp_url=rtsp_url,
    )


def apply_changes(stream: Stream, changes: StreamChanges) -> Stream:
    """The stream after ``changes``, validated as a whole (kind and URL together)."""
    kind = check_kind(changes.kind) if changes.kind is not None else stream.kind
    if changes.clear_rtsp_url:
        rtsp_url: str | None = None
    elif changes.rtsp_url is not None:
        rtsp_url = check_rtsp_url(changes.rtsp_url)
    elif kind != "rtsp":
        # Leaving rtsp drops the camera URL with it rather than refusing the change.
        rtsp_url = None
    else:
        rtsp_url = stream.rtsp_url
    check_kind_and_url(kind, rtsp_url)
    if changes.clear_site:
        site = None
    elif changes.site is not None:
        site = check_site(changes.site)
    else:
        site = stream.site
    return Stream(
        slug=stream.slug,
        title=check_title(changes.title) if changes.title is not None else stream.title,
        site=site,
        kind=kind,
        visibility=(
            check_visibility(changes.visibility) if changes.visibility is not None else stream.visibility
        ),
        owner=None if changes.clear_owner else check_owner(changes.owner) or stream.owner,
        created_at=stream.created_at,
        rtsp_url=rtsp_url,
    )


# -- keys and secrets -----------------------------------------------------------------


def new_publish_key() -> str:
    """32 random bytes, URL-safe base64 (43 characters): fits a Bearer header as is."""
    return secrets.token_urlsafe(PUBLISH_KEY_BYTES)


def hash_publish_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def publish_key_matches(key: str, stored_hash: str) -> bool:
    # Compare digests, not keys: equal lengths, and compare_digest takes the same time
    # wherever they differ.
    return hmac.compare_digest(hash_publish_key(key), stored_hash)


# Some cameras take credentials in the query (``?user=admin&password=…``) instead.
_SECRET_QUERY_KEYS = re.compile(r"user|username|pass|passwd|password|pwd|token|key|auth|secret", re.I)


def mask_url_credentials(url: str) -> str:
    """``rtsp://user:pass@cam/x?password=y`` → ``rtsp://***@cam/x?password=***``: what logs
    and listings may show."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = (
        "&".join(
            f"{k}=***" if sep and _SECRET_QUERY_KEYS.fullmatch(k) else f"{k}{sep}{v}"
            for k, sep, v in (item.partition("=") for item in parts.query.split("&"))
        )
        if parts.query
        else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
