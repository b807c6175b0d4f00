"""The live streams of this process, by slug, and who publishes into each.

The hub is runtime state only: which streams exist as configuration (titles, keys,
visibility) is the registry's business. A stream appears here when a source attaches
or when the registry says it exists (``ensure``), so a viewer of a known but idle
stream can be told "offline, retry" instead of "unknown".
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stream.fanout import LiveStream
from stream.packets import MediaPacket
from stream.settings import StreamSettings
from stream.sources import PacketSource
from stream.stats import StreamState


class StreamBusy(Exception):
    """Another source already publishes to this stream (the endpoint answers 409)."""


class Publication:
    """A source's right to publish into one stream; ``close`` gives it up.

    The hub hands one out per attach, so a source that was replaced or detached cannot
    keep writing into the stream by accident.
    """

    __slots__ = ("_hub", "_open", "source", "stream")

    def __init__(self, hub: StreamHub, stream: LiveStream, source: PacketSource) -> None:
        self._hub = hub
        self.stream = stream
        self.source = source
        self._open = True

    @property
    def open(self) -> bool:
        return self._open

    def publish(self, pkt: MediaPacket) -> None:
        if self._open:
            self.stream.publish(pkt)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._hub._detach(self)


class StreamHub:
    def __init__(self, settings: StreamSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._streams: dict[str, LiveStream] = {}
        self._publications: dict[str, Publication] = {}

    @property
    def settings(self) -> StreamSettings:
        return self._settings

    def get(self, slug: str) -> LiveStream | None:
        return self._streams.get(slug)

    def ensure(self, slug: str) -> LiveStream:
        """The stream for ``slug``, created offline if it is not here yet."""
        stream = self._streams.get(slug)
        if stream is None:
            stream = self._streams[slug] = LiveStream(slug, self._settings, clock=self._clock)
        return stream

    def attach(self, slug: str, source: PacketSource) -> Publication:
        """Make ``source`` the publisher of ``slug``. One publisher per stream: a second
        one gets ``StreamBusy`` until the first closes its Publication."""
        current = self._publications.get(slug)
        if current is not None:
            raise StreamBusy(f"stream {slug!r} already has a publisher ({current.source.kind})")
        stream = self.ensure(slug)
        stream._attach(source)
        pub = self._publications[slug] = Publication(self, stream, source)
        return pub

    def _detach(self, pub: Publication) -> None:
        if self._publications.get(pub.stream.slug) is pub:
            del self._publications[pub.stream.slug]
            pub.stream._detach()

    def publisher(self, slug: str) -> PacketSource | None:
        pub = self._publications.get(slug)
        return pub.source if pub is not None else None

    def remove(self, slug: str) -> None:
        """Forget a stream (the registry deleted it): its publisher is cut off and every
        viewer's feed ends."""
        pub = self._publications.get(slug)
        if pub is not None:
            pub.close()
        stream = self._streams.pop(slug, None)
        if stream is not None:
            stream.close()

    def streams(self) -> list[LiveStream]:
        return list(self._streams.values())

    def states(self) -> list[StreamState]:
        return [s.state() for s in self._streams.values()]

    @property
    def viewers(self) -> int:
        return sum(s.viewers for s in self._streams.values())

    def close(self) -> None:
        for slug in list(self._streams):
            self.remove(slug)
