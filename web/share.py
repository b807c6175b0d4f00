"""Who may watch a stream: public streams anyone; unlisted ones whoever holds a valid,
unexpired share link (``/watch/<slug>?share=<token>``).

A token is ``<expiry, Unix seconds>.<HMAC-SHA256, base64url>`` over the slug, the
stream's share stamp (its creation time and share generation, ``StreamRepository.
share_stamp``) and the expiry, keyed with the deployment's secret. Nothing per link is
stored: a link cannot be revoked alone, but rotating the stream's publish key bumps its
generation and so revokes every link at once, and a stream removed and made again under
the same slug does not accept its predecessor's links.

The secret is ``ORIGINCAST_SECRET_KEY`` when set, else one generated once and kept in
the stream registry's database: every web node of a deployment reads the same database,
so their links agree without copying a file between machines (a file next to a SQLite
database would not exist for PostgreSQL deployments).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from stream.registry import Stream, StreamNotFound, StreamRepository

SHARE_TTL_MIN_S = 60
SHARE_TTL_MAX_S = 365 * 24 * 3600
SHARE_TTL_DEFAULT_S = 7 * 24 * 3600
_TOKEN_MAX = 80  # an expiry and a 43-character MAC; anything longer is not ours


@dataclass(frozen=True, slots=True)
class Access:
    """``allowed`` False: answer as for an unknown stream. ``stream`` None with
    ``allowed``: not in the registry (the relay's hub decides whether it exists)."""

    allowed: bool
    stream: Stream | None


class ShareLinks:
    """Signs and checks share tokens; the secret is set when the registry is open."""

    def __init__(
        self,
        registry: StreamRepository,
        configured_secret: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._configured = configured_secret
        self._secret: bytes | None = None
        self._clock = clock

    async def open(self) -> None:
        if self._configured:
            self._secret = self._configured.encode("utf-8")
        else:
            self._secret = await asyncio.to_thread(self._registry.server_secret)

    def _mac(self, slug: str, stamp: str, expires: int) -> str:
        if self._secret is None:
            raise RuntimeError("share links are not open (the registry is not open yet)")
        message = f"origincast-share\x00{slug}\x00{stamp}\x00{expires}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    async def issue(self, slug: str, ttl_s: int) -> tuple[str, datetime]:
        """A token for ``slug`` valid ``ttl_s`` seconds. Raises StreamNotFound."""
        stamp = await asyncio.to_thread(self._registry.share_stamp, slug)
        if stamp is None:
            raise StreamNotFound(f"no stream {slug!r}")
        expires = int(self._clock()) + ttl_s
        return f"{expires}.{self._mac(slug, stamp, expires)}", datetime.fromtimestamp(expires, UTC)

    def verify(self, slug: str, stamp: str, token: str | None) -> bool:
        if not token or len(token) > _TOKEN_MAX:
            return False
        expiry, _, mac = token.partition(".")
        if not expiry.isdigit() or not mac:
            return False
        expires = int(expiry)
        if expires <= self._clock():
            return False
        return hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(slug, stamp, expires).encode())

    async def access(self, slug: str, token: str | None) -> Access:
        """May the holder of ``token`` (or of none) watch ``slug``?"""
        stream = await asyncio.to_thread(self._registry.get, slug)
        if stream is None:
            return Access(True, None)
        if stream.visibility == "public":
            return Access(True, stream)
        stamp = await asyncio.to_thread(self._registry.share_stamp, slug)
        ok = stamp is not None and self.verify(slug, stamp, token)
        return Access(ok, stream if ok else None)
