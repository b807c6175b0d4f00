"""WHEP playback: one viewer's WebRTC session, fed from the stream's shared packets.

A session answers the viewer's SDP offer with an aiortc ``RTCPeerConnection`` whose
tracks return the stream's own ``av.Packet``s from ``recv()``; aiortc's RTP sender then
only packetizes them (``H264Encoder.pack``), it never encodes. The codec is forced to
H.264 constrained baseline, packetization-mode 1 (what the stream's encoder makes), and
Opus when the stream has audio.

aiortc handles a viewer's PLI/FIR by setting a flag for the sender's own encoder,
which a packet track does not have; the session points the sender's keyframe hook at
the viewer's feed instead, so the request reaches the stream's one encoder, through
the stream's rate limiter.

With ``StreamSettings.fast_sender`` the sessions' senders are ``stream.rtp.sender``'s
``FastRtpSender``: the stream's packets are packetized once for all its viewers
(``stream.rtp.packetizer``, kept in the stream's ``payloads`` cache) and each sender
only stamps its own RTP headers, protects and sends; RTCP, NACK/RTX and the keyframe
hook stay as described above.

``WhepService`` keeps the sessions of this process by id; the web layer maps its
exceptions to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

from stream.fanout import FeedClosed, LiveStream, Sink, ViewerFeed
from stream.hub import StreamHub
from stream.ice import IcePolicy
from stream.packets import MediaPacket
from stream.rtp.sender import use_fast_sender

log = logging.getLogger(__name__)

# Constrained baseline first (what we send), plain baseline accepted: a baseline decoder
# decodes constrained baseline.
_H264_PROFILES = ("42e01f", "42001f")


class UnknownStream(LookupError):
    """No stream with this slug (HTTP 404)."""


class StreamOffline(Exception):
    """The stream exists but nobody publishes to it now (HTTP 409 + Retry-After)."""

    def __init__(self, slug: str, retry_after_s: int) -> None:
        super().__init__(f"stream {slug!r} is offline; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class BadOffer(ValueError):
    """The offer cannot be read or asks for nothing we can send (HTTP 400)."""


def check_offer(sdp: str) -> SessionDescription:
    """Parse and vet a viewer's offer before any peer connection is made."""
    if not sdp.strip():
        raise BadOffer("empty offer: expected an SDP offer in the request body")
    if not sdp.lstrip().startswith("v=0"):
        raise BadOffer("the body is not SDP (it must start with v=0)")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line trips over
        raise BadOffer(f"unparseable SDP offer: {exc or type(exc).__name__}") from None
    videos = [m for m in desc.media if m.kind == "video" and m.port != 0]
    if not videos:
        raise BadOffer("the offer has no video m-line: WHEP here sends H.264 video (and Opus audio)")
    video = videos[0]
    if video.direction not in (None, "recvonly", "sendrecv"):
        raise BadOffer(f"the offer's video is {video.direction}: a viewer must be able to receive")
    if not any(
        c.mimeType.lower() == "video/h264" and str(c.parameters.get("packetization-mode", "0")) == "1"
        for c in video.rtp.codecs
    ):
        raise BadOffer("the offer's video has no H.264 with packetization-mode=1")
    return desc


def _video_preferences() -> list[RTCRtpCodecCapability]:
    caps = RTCRtpSender.getCapabilities("video").codecs
    chosen = [
        c
        for profile in _H264_PROFILES
        for c in caps
        if c.mimeType.lower() == "video/h264"
        and str(c.parameters.get("packetization-mode")) == "1"
        and str(c.parameters.get("profile-level-id", "")).lower() == profile
    ]
    # RTX keeps NACK retransmissions on their own SSRC, as browsers expect.
    return chosen + [c for c in caps if c.mimeType.lower() == "video/rtx"]


def _audio_preferences() -> list[RTCRtpCodecCapability]:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


class _FeedTrack(MediaStreamTrack):
    """Hands the stream's shared packets to one RTP sender, untouched."""

    def __init__(self, feed: ViewerFeed, on_ended: Callable[[], None]) -> None:
        super().__init__()
        self._feed = feed
        self._on_ended = on_ended

    def _ended(self) -> MediaStreamError:
        self.stop()
        self._on_ended()
        return MediaStreamError("the stream's feed ended")

    def set_sink(self, sink: Sink | None) -> None:
        """A synchronous sender for this track's packets (``ViewerFeed.set_sink``)."""
        self._feed.set_sink(self.kind, sink)


class VideoFeedTrack(_FeedTrack):
    kind = "video"

    async def recv(self) -> av.Packet:
        return (await self.recv_media()).packet

    async def recv_media(self) -> MediaPacket:
        """The shared packet itself (the fast sender packetizes it once per stream)."""
        try:
            return await self._feed.next_video()
        except FeedClosed:
            raise self._ended() from None


class AudioFeedTrack(_FeedTrack):
    kind = "audio"

    async def recv(self) -> av.Packet:
        return (await self.recv_media()).packet

    async def recv_media(self) -> MediaPacket:
        try:
            return await self._feed.next_audio()
        except FeedClosed:
            raise self._ended() from None


class WhepSession:
    """One viewer: a peer connection and a feed of the stream. ``close`` releases both."""

    def __init__(
        self,
        session_id: str,
        stream: LiveStream,
        ice: IcePolicy,
        *,
        connect_timeout_s: float = 30.0,
        on_closed: Callable[[WhepSession], None] | None = None,
        fast_sender: bool = False,
    ) -> None:
        self.id = session_id
        self.fast_sender = fast_sender
        self.stream = stream
        self.created_at = time.time()
        self._ice = ice
        self._connect_timeout_s = connect_timeout_s
        self._on_closed = on_closed
        self._pc: RTCPeerConnection | None = None
        self._feed: ViewerFeed | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.answer_sdp = ""

    @property
    def slug(self) -> str:
        return self.stream.slug

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        return self._pc

    @property
    def feed(self) -> ViewerFeed | None:
        return self._feed

    @property
    def closed(self) -> bool:
        return self._closing is not None

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "closed"

    async def answer(self, offer_sdp: str) -> str:
        """Negotiate: the SDP answer, with every candidate in it (no trickle)."""
        desc = check_offer(offer_sdp)
        offers_audio = any(m.kind == "audio" and m.port != 0 for m in desc.media)
        pc = self._pc = RTCPeerConnection(self._ice.rtc_configuration())
        feed = self._feed = self.stream.add_viewer()
        pc.on("connectionstatechange", self._on_state)
        try:
            # Transceivers made before setRemoteDescription are the ones the offer's
            # m-lines bind to, so their codec preferences decide the answer.
            video = pc.addTransceiver(VideoFeedTrack(feed, self._feed_ended), direction="sendonly")
            video.setCodecPreferences(_video_preferences())
            if self.fast_sender:
                use_fast_sender(video.sender, self.stream.payloads)
            if offers_audio and self.stream.has_audio:
                audio = pc.addTransceiver(AudioFeedTrack(feed, self._feed_ended), direction="sendonly")
                audio.setCodecPreferences(_audio_preferences())
                if self.fast_sender:
                    use_fast_sender(audio.sender, self.stream.payloads)
            with self._ice.scope():
                try:
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                except Exception as exc:
                    raise BadOffer(f"cannot use this offer: {exc or type(exc).__name__}") from None
                await pc.setLocalDescription(await pc.createAnswer())
            # The viewer's PLI/FIR: to the stream's encoder, not to the sender's own
            # (aiortc's RTCRtpSender._handle_rtcp_packet calls self._send_keyframe()).
            video.sender._send_keyframe = feed.request_keyframe  # type: ignore[method-assign]
        except BaseException:
            await self.close()
            raise
        self._timer = asyncio.get_running_loop().call_later(self._connect_timeout_s, self._check_connected)
        self.answer_sdp = self._ice.announce(pc.localDescription.sdp)
        return self.answer_sdp

    def _on_state(self) -> None:
        if self._pc is not None and self._pc.connectionState in ("failed", "closed"):
            self._close_soon()

    def _check_connected(self) -> None:
        self._timer = None
        if self._pc is not None and self._pc.connectionState != "connected":
            log.info(
                "whep %s/%s: no connection after %.0f s, closing", self.slug, self.id, self._connect_timeout_s
            )
            self._close_soon()

    def _feed_ended(self) -> None:
        self._close_soon()

    def _close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._do_close())

    async def close(self) -> None:
        """Release the feed and the peer connection (idempotent; waits until done)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._do_close())
        await asyncio.shield(self._closing)

    async def _do_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._feed is not None:
            self._feed.close()  # first: the senders stop waiting for packets
        if self._pc is not None:
            try:
                await self._pc.close()
            except Exception:
                log.exception("whep %s/%s: closing the peer connection failed", self.slug, self.id)
        if self._on_closed is not None:
            self._on_closed(self)


class WhepService:
    """The WHEP sessions of this process."""

    RETRY_AFTER_S = 2

    def __init__(
        self,
        hub: StreamHub,
        ice: IcePolicy,
        *,
        is_known: Callable[[str], Awaitable[bool]] | None = None,
        connect_timeout_s: float = 30.0,
        fast_sender: bool | None = None,
    ) -> None:
        self._hub = hub
        # None: as the hub's settings say (ORIGINCAST_STREAM_FAST_SENDER).
        self.fast_sender = hub.settings.fast_sender if fast_sender is None else fast_sender
        self._ice = ice
        # Hook for the stream registry: a slug it knows but the hub has never seen is
        # "offline" (409), not "unknown" (404). Without it, "known" means "in the hub".
        self._is_known = is_known
        self._connect_timeout_s = connect_timeout_s
        self._sessions: dict[str, WhepSession] = {}

    @property
    def ice(self) -> IcePolicy:
        return self._ice

    @property
    def hub(self) -> StreamHub:
        return self._hub

    def set_stream_lookup(self, is_known: Callable[[str], Awaitable[bool]] | None) -> None:
        self._is_known = is_known

    async def open(self, slug: str, offer_sdp: str) -> WhepSession:
        """A new session for a viewer of ``slug``; raises UnknownStream, BadOffer or
        StreamOffline (in that order: an offer that could never work is not worth a retry)."""
        stream = self._hub.get(slug)
        if stream is None and not (self._is_known is not None and await self._is_known(slug)):
            raise UnknownStream(f"no stream named {slug!r}")
        check_offer(offer_sdp)
        if stream is None or not stream.live:
            raise StreamOffline(slug, self.RETRY_AFTER_S)
        session = WhepSession(
            secrets.token_urlsafe(18),  # the DELETE URL is the only credential: unguessable
            stream,
            self._ice,
            connect_timeout_s=self._connect_timeout_s,
            on_closed=self._forget,
            fast_sender=self.fast_sender,
        )
        self._sessions[session.id] = session
        try:
            await session.answer(offer_sdp)
        except BaseException:
            self._sessions.pop(session.id, None)
            raise
        return session

    def get(self, slug: str, session_id: str) -> WhepSession | None:
        session = self._sessions.get(session_id)
        return session if session is not None and session.slug == slug else None

    async def end(self, slug: str, session_id: str) -> bool:
        session = self.get(slug, session_id)
        if session is None:
            return False
        await session.close()
        return True

    def _forget(self, session: WhepSession) -> None:
        self._sessions.pop(session.id, None)

    def sessions(self, slug: str | None = None) -> list[WhepSession]:
        return [s for s in self._sessions.values() if slug is None or s.slug == slug]

    async def close(self) -> None:
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        self._sessions.clear()
