"""Typed settings for the relay; built by web.config, never read from files here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class IceServer:
    urls: tuple[str, ...]  # "stun:host:port", "turn:host:port?transport=udp"
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    # Host addresses ICE may offer; empty: every address of the machine. Tests: ("127.0.0.1",).
    ice_host_addresses: tuple[str, ...] = ()
    # An address to announce in addition (the public one behind NAT, as MediaMTX's
    # webrtcAdditionalHosts); None: none.
    ice_public_address: str | None = None
    # STUN/TURN servers given to our peer connections and to clients (Link headers).
    ice_servers: tuple[IceServer, ...] = ()
    # A viewer's keyframe requests reach the source at most this often.
    keyframe_min_interval_s: float = 0.5
    # Sources that cannot make keyframes on request send one at least this often.
    keyframe_interval_s: float = 2.0
    # Per-viewer queue bound (packets); a viewer that falls this far behind skips to
    # the next keyframe instead of holding back anyone.
    viewer_queue_packets: int = 300
    # Encoder settings for sources we encode (WHIP decode-once/encode-once, test pattern).
    video_bitrate_bps: int = 1_500_000
    test_pattern_width: int = 1280
    test_pattern_height: int = 720
    test_pattern_fps: int = 30
    # RTSP pull: reconnect backoff.
    rtsp_reconnect_min_s: float = 1.0
    rtsp_reconnect_max_s: float = 30.0
    # WHEP senders: True packetizes once per stream and sends through a thin per-viewer
    # path (stream.rtp.sender, UDP GSO on Linux); False uses aiortc's own RTCRtpSender loop.
    fast_sender: bool = True
