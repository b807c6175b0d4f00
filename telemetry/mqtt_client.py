"""A paho-mqtt client tuned for a high-rate QoS 1 consumer that acknowledges in batches.

paho 2.x reads one packet per ``select()`` and each packet with three or more
``recv()`` calls (command byte, length bytes, body), and queues every PUBACK as its own
packet with its own wake-up write. At tens of thousands of messages a second those
system calls, not our work, are the cost. This subclass changes only that plumbing:

- ``_sock_recv`` serves paho's small reads from one large ``recv()`` into a buffer, and
  ``loop_read`` keeps handling packets while the buffer holds data (otherwise paho would
  wait in ``select()`` for bytes it has already read);
- ``ack_many`` sends the PUBACKs of a whole batch as one write, in arrival order as
  MQTT requires.

It overrides private methods of paho, so the dependency is pinned below 3 and the
ingest tests (which count every message through restarts) guard the behaviour.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_PUBACK = 0x40
_PUBACK_FRAME = struct.Struct("!BBH")
_READ_SIZE = 256 * 1024


class BatchAckClient(mqtt.Client):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rbuf: bytes = b""
        self._rpos = 0
        self._rsock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._rsock:
            # A new connection: bytes buffered from the old one belong to nobody.
            self._rsock = self._sock
            self._rbuf, self._rpos = b"", 0
        avail = len(self._rbuf) - self._rpos
        if avail <= 0:
            data = super()._sock_recv(max(bufsize, _READ_SIZE))
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos, avail = data, 0, len(data)
        n = bufsize if bufsize < avail else avail
        start = self._rpos
        self._rpos = start + n
        return self._rbuf[start : start + n]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._sock is not None
            and self._sock is self._rsock
            and self._rpos < len(self._rbuf)
        ):
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages, in the given (arrival) order, with one write."""
        blob = b"".join([_PUBACK_FRAME.pack(_PUBACK, 2, mid) for mid in mids])
        if blob:
            self._packet_queue(_PUBACK, blob, 0, 0)
