"""Where a stream's packets come from: WHIP publishers, RTSP cameras, the test pattern.

Every source publishes ``MediaPacket``s into the ``Publication`` the hub gave it when it
attached (``StreamHub.attach``), and lets the stream ask it for a keyframe. That is all
the fan-out needs to know about a source, so the contract is this small protocol.
"""

from __future__ import annotations

from typing import Protocol


class PacketSource(Protocol):
    """What a LiveStream needs from whatever publishes into it."""

    @property
    def kind(self) -> str:
        """Shown in the stream's state: "whip", "rtsp", "test-pattern"."""
        ...

    @property
    def has_audio(self) -> bool:
        """Whether Opus packets will come, so a viewer's answer can offer audio before the
        first audio packet has arrived."""
        ...

    def request_keyframe(self) -> None:
        """Make the next video packet a keyframe, soon. Called on the event loop, already
        rate-limited by the stream; a source that cannot make keyframes on request (an
        RTSP camera passed through) may ignore it and rely on its own interval."""
        ...
