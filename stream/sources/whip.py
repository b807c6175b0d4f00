"""A WHIP publisher (RFC 9725): an aiortc answerer whose video is decoded once and encoded
once per stream.

Why decode and re-encode instead of passing the publisher's packets through: a phone's
browser picks its own H.264 profile (or VP8), its own keyframe interval (often none
until asked) and changes resolution when it rotates; viewers need constrained baseline
with SPS/PPS in front of frequent keyframes, and one publisher cannot be asked for a
keyframe per joining viewer. aiortc's receiver already decodes every frame (in its own
thread); one ``EncoderWorker`` per stream turns the frames into the shared
``MediaPacket``s, and viewers' keyframe requests (rate-limited by the LiveStream) go to
that encoder, which can make a keyframe from any frame. So a PLI is never forwarded
upstream for a viewer: the publisher's keyframes do not reach viewers anyway. aiortc's
receiver still sends the publisher a PLI itself when it loses a picture (a decode error
or a gap the jitter buffer cannot fill), which is the only time we need one.

Audio: aiortc decodes it too (it has no switch to hand out encoded packets), so it is
encoded to Opus once here (libopus through PyAV, 20 ms frames, on the event loop: a few
tens of microseconds a frame).

DTLS role: the answer says ``a=setup:passive`` when the offer leaves the choice to us
(``actpass``), making aiortc the DTLS server. aiortc's DTLS offers only ECDHE-ECDSA
cipher suites; as a client it cannot complete a handshake with a publisher whose
certificate is RSA (GStreamer's webrtcbin, which many camera boxes and GStreamer's WHIP
elements use: "no shared cipher"). As the server, the suite is chosen from our ECDSA
certificate and both kinds of publisher work. RFC 8842 lets the answerer choose either.

Lifetime: the source ends (and the stream goes offline) when the publisher DELETEs the
session, ICE or DTLS fails, the connection closes, ICE does not connect within
``connect_timeout_s``, or no video arrives for ``media_timeout_s``; ``close`` releases
the peer connection, the encoder thread and the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.encoder import EncoderSettings, EncoderWorker
from stream.hub import Publication
from stream.ice import IcePolicy
from stream.packets import AUDIO_TIME_BASE, MediaPacket, make_packet
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

# Codecs aiortc decodes; anything else in an offer cannot become a picture here.
VIDEO_CODECS = frozenset({"h264", "vp8"})
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma", "g722"})
# An SDP offer is a few kilobytes; a browser's with many codecs stays under 16 KB.
MAX_OFFER_BYTES = 64 * 1024

_OPUS_RATE = 48_000
_OPUS_FRAME = 960  # 20 ms: what WebRTC endpoints send and expect


class OfferError(ValueError):
    """The offer cannot be used; ``status`` is the HTTP status the endpoint answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What an offer brings, read before any peer connection is made."""

    video_codecs: tuple[str, ...]  # usable ones (sent by the publisher, decodable here)
    audio_codecs: tuple[str, ...]
    other_video_codecs: tuple[str, ...]  # offered but not decodable here, for the 422 message
    dtls_setup: tuple[str, ...]  # every a=setup value, session and media level

    @property
    def has_audio(self) -> bool:
        return bool(self.audio_codecs)


def inspect_offer(sdp: str) -> OfferSummary:
    """Check an SDP offer's shape. Raises OfferError(400) when it is not SDP at all,
    OfferError(422) when it is SDP but carries no video we can decode."""
    if not sdp.strip():
        raise OfferError(400, "empty body: expected an SDP offer")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_OFFER_BYTES:
        raise OfferError(400, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
    lines = [ln.strip() for ln in re.split(r"\r?\n", sdp) if ln.strip()]
    if lines[0] != "v=0":
        raise OfferError(400, "not an SDP offer: it must start with v=0")
    bad = next((ln for ln in lines if len(ln) < 2 or ln[1] != "=" or not ln[0].isalpha()), None)
    if bad is not None:
        raise OfferError(400, f"not an SDP offer: bad line {bad[:60]!r}")
    sections: list[tuple[str, int, list[str]]] = []  # (media, port, attribute lines)
    session: list[str] = []
    for ln in lines:
        if ln.startswith("m="):
            parts = ln[2:].split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise OfferError(400, f"not an SDP offer: bad media line {ln[:60]!r}")
            sections.append((parts[0], int(parts[1].split("/")[0]), []))
        elif sections:
            sections[-1][2].append(ln)
        else:
            session.append(ln)
    if not sections:
        raise OfferError(422, "the offer has no media sections (m=); WHIP needs a video track")

    video: list[str] = []
    audio: list[str] = []
    other_video: list[str] = []
    setup = [ln.split(":", 1)[1] for ln in session if ln.startswith("a=setup:")]
    session_direction = _direction(session) or "sendrecv"
    for media, port, attrs in sections:
        setup += [ln.split(":", 1)[1] for ln in attrs if ln.startswith("a=setup:")]
        direction = _direction(attrs) or session_direction
        # Port 0 is a rejected or disabled section; recvonly/inactive ones send us nothing.
        if port == 0 or direction in ("recvonly", "inactive"):
            continue
        names = [m.group(1).lower() for ln in attrs if (m := re.match(r"a=rtpmap:\d+ ([^/\s]+)/", ln))]
        if media == "video":
            # dict.fromkeys: one entry per codec, in the offer's order (H.264 comes once
            # per profile and packetization mode).
            video = list(dict.fromkeys([*video, *(n for n in names if n in VIDEO_CODECS)]))
            other_video = list(
                dict.fromkeys([*other_video, *(n for n in names if n not in VIDEO_CODECS | _AUX_CODECS)])
            )
        elif media == "audio":
            audio = list(dict.fromkeys([*audio, *(n for n in names if n in AUDIO_CODECS)]))
    if not video:
        found = f" (it offers {', '.join(other_video)})" if other_video else ""
        raise OfferError(422, f"the offer has no H.264 or VP8 video the publisher sends{found}")
    return OfferSummary(tuple(video), tuple(audio), tuple(other_video), tuple(setup))


# Payload formats that ride along with a video codec rather than being one.
_AUX_CODECS = frozenset({"rtx", "red", "ulpfec", "flexfec-03"})


def _direction(attrs: list[str]) -> str | None:
    for ln in attrs:
        if ln in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return ln[2:]
    return None


def answer_as_dtls_server(answer_sdp: str, offer: OfferSummary) -> str:
    """Make the answer ``a=setup:passive`` when the offer let us choose (see module doc).

    An offer that says ``active`` already makes aiortc the server; one that says
    ``passive`` insists on being the server, and then aiortc must stay the client.
    """
    if not offer.dtls_setup or any(s != "actpass" for s in offer.dtls_setup):
        return answer_sdp
    return re.sub(r"(?m)^a=setup:active(\r?)$", r"a=setup:passive\1", answer_sdp)


class WhipSource:
    """One publisher's peer connection, feeding one stream through its Publication.

    Use: ``WhipSource(...)`` → ``hub.attach(slug, source)`` → ``await source.start(offer,
    publication)`` → answer SDP. ``close`` (idempotent) ends it from any side.
    """

    kind = "whip"

    def __init__(
        self,
        slug: str,
        settings: StreamSettings,
        offer: OfferSummary,
        *,
        ice: IcePolicy | None = None,
        connect_timeout_s: float = 20.0,
        media_timeout_s: float = 10.0,
        on_closed: Callable[[WhipSource], None] | None = None,
    ) -> None:
        self.slug = slug
        self._settings = settings
        self._offer = offer
        self._ice = ice or IcePolicy(settings)
        self._connect_timeout_s = connect_timeout_s
        self._media_timeout_s = media_timeout_s
        self._on_closed = on_closed
        self._pc: RTCPeerConnection | None = None
        self._publication: Publication | None = None
        self._encoder: EncoderWorker | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.close_reason: str | None = None
        self.started_at = time.monotonic()
        self.connected_at: float | None = None
        self.video_frames = 0
        self.audio_frames = 0
        self.video_size: tuple[int, int] | None = None

    # -- PacketSource ----------------------------------------------------------------

    @property
    def has_audio(self) -> bool:
        return self._offer.has_audio

    def request_keyframe(self) -> None:
        if self._encoder is not None:
            self._encoder.request_keyframe()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def connection_state(self) -> str:
        if self._pc is None:
            return "closed" if self._close_task is not None else "new"
        return self._pc.connectionState

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        """For tests and stats; None once closed."""
        return self._pc

    async def start(self, offer_sdp: str, publication: Publication) -> str:
        """Negotiate; returns the SDP answer (all candidates included: aiortc gathers them
        before ``setLocalDescription`` returns, so no trickle ICE is needed). Raises
        OfferError(400) when aiortc refuses the offer; the source is then closed."""
        self._publication = publication
        encoder = EncoderWorker(
            EncoderSettings.from_stream(self._settings), self._publish, name=f"whip-encoder-{self.slug}"
        )
        self._encoder = encoder
        pc = RTCPeerConnection(self._ice.rtc_configuration())
        self._pc = pc
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await encoder.start()
            with self._ice.scope():
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                answer = await pc.createAnswer()
                assert answer is not None
                sdp = answer_as_dtls_server(answer.sdp, self._offer)
                await pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            await self.close(f"negotiation failed: {exc}")
            if isinstance(exc, ValueError | RuntimeError | KeyError | AttributeError):
                # aiortc's parser and validator raise these for offers it cannot use.
                raise OfferError(400, f"the offer could not be negotiated: {exc}") from None
            raise
        self._spawn(self._watch_connect(), "connect-timeout")
        local = pc.localDescription
        assert local is not None
        return self._ice.announce(local.sdp)

    async def close(self, reason: str = "closed") -> None:
        """End the session: the stream goes offline at once, then the peer connection and
        the encoder thread are released. Safe to call more than once and from any task."""
        if self._close_task is None:
            self.close_reason = reason
            self._close_task = asyncio.create_task(self._close(), name=f"whip-close-{self.slug}")
        # shield: a caller cancelled while waiting must not abort the release half-way.
        await asyncio.shield(self._close_task)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _close(self) -> None:
        log.info("whip %s: publisher gone (%s)", self.slug, self.close_reason)
        if self._publication is not None:
            self._publication.close()  # offline first: viewers stop waiting for us now
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._pc is not None:
            with contextlib.suppress(Exception):
                await self._pc.close()
        if self._encoder is not None:
            await self._encoder.stop()
        self._pc = None
        self._closed.set()
        if self._on_closed is not None:
            try:
                self._on_closed(self)
            except Exception:
                log.exception("whip %s: on_closed callback failed", self.slug)

    def _close_soon(self, reason: str) -> None:
        """Close from a callback or a pump task without waiting (or cancelling oneself)."""
        if self._close_task is None:
            self.close_reason = reason
            self._close_task = asyncio.create_task(self._close(), name=f"whip-close-{self.slug}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"whip-{name}-{self.slug}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events ------------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        pc = self._pc
        if pc is None:
            return
        state = pc.connectionState
        log.debug("whip %s: connection %s", self.slug, state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
        elif state in ("failed", "closed"):
            self._close_soon(f"connection {state}")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._pump_video(track), "video")
        elif track.kind == "audio":
            self._spawn(self._pump_audio(track), "audio")

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self._connect_timeout_s)
        if self.connected_at is None:
            self._close_soon(f"ICE/DTLS did not connect within {self._connect_timeout_s:g} s")

    async def _pump_video(self, track: MediaStreamTrack) -> None:
        encoder = self._encoder
        assert encoder is not None
        # The first frame may take the whole connect time plus the media timeout (the
        # publisher's camera starting); after that, a gap of media_timeout_s ends it.
        timeout = self._connect_timeout_s + self._media_timeout_s
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), timeout)
            except MediaStreamError:
                self._close_soon("the publisher's video ended")
                return
            except TimeoutError:
                self._close_soon(f"no video for {timeout:g} s")
                return
            timeout = self._media_timeout_s
            if self._publication is None or not self._publication.open:
                # The hub cut us off (the stream was removed or taken over).
                self._close_soon("the stream no longer accepts this publisher")
                return
            assert isinstance(frame, av.VideoFrame)
            self.video_frames += 1
            self.video_size = (frame.width, frame.height)
            # aiortc's pts is the RTP timestamp (90 kHz) re-based to start at 0: the
            # encoder's timeline as is. The LiveStream re-bases across publishers.
            encoder.submit(frame, int(frame.pts or 0), time.time())

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        # Reading is not optional: aiortc queues decoded frames without bound, so an
        # unread track would grow memory for as long as the publisher talks.
        opus = _OpusEncoder()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            self.audio_frames += 1
            try:
                packets = opus.encode(frame)
            except (av.FFmpegError, ValueError) as exc:
                log.warning("whip %s: audio frame not encoded: %s", self.slug, exc)
                continue
            for pkt in packets:
                self._publish(pkt)

    def _publish(self, pkt: MediaPacket) -> None:
        pub = self._publication
        if pub is not None and pub.open and not self._closed.is_set():
            pub.publish(pkt)


class _OpusEncoder:
    """Decoded audio (any rate, any layout aiortc's decoders give) → 20 ms Opus packets on
    a 48 kHz timeline that starts at the first frame's pts."""

    def __init__(self) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = _OPUS_RATE
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = 64_000
        ctx.time_base = Fraction(1, _OPUS_RATE)
        ctx.options = {"application": "audio"}
        self._ctx = ctx
        # The resampler also cuts 20 ms frames, whatever size the decoder handed over.
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=_OPUS_RATE, frame_size=_OPUS_FRAME
        )
        self._next_pts: int | None = None

    def encode(self, frame: av.AudioFrame) -> list[MediaPacket]:
        now = time.time()
        out: list[MediaPacket] = []
        if self._next_pts is None:
            self._next_pts = int(frame.pts or 0) * _OPUS_RATE // max(1, frame.sample_rate)
        for chunk in self._resampler.resample(frame):
            # Our own sample count is the timeline: the encoder's pts start negative
            # (its pre-skip) and gaps in the input are the publisher's, not ours to show.
            chunk.pts = None
            for p in self._ctx.encode(chunk):
                out.append(make_packet("audio", bytes(p), self._next_pts, AUDIO_TIME_BASE, False, now))
                self._next_pts += _OPUS_FRAME
        return out
