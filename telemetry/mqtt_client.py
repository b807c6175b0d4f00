"""A paho-mqtt client tuned for a high-rate QoS 1 consumer that acknowledges in batches.

paho 2.x reads one packet per ``select()``, each with three or more ``recv()`` calls
(command byte, length bytes, body), builds an MQTT 5 ``Properties`` object, an
``MQTTMessage`` and a topic match for every PUBLISH, and queues every PUBACK as its own
packet with its own wake-up write. Profiled at 20,000 messages/s, that per-message
Python, not our parsing or the database, was most of the ingester's CPU. This subclass
changes only that plumbing:

- ``loop_read`` takes everything the socket has in one ``recv()`` and handles every
  complete packet in it; a PUBLISH of QoS 0 or 1 goes straight to ``on_raw_message``
  as (topic bytes, payload, packet id, qos); every other packet goes through paho's own
  handler, exactly as paho would;
- ``ack_many`` sends the PUBACKs of a whole batch as one write, in arrival order as
  MQTT requires.

Incoming PUBLISH properties are skipped: we announce no Topic Alias Maximum, so the
broker may not use aliases, and nothing else in them changes how a reading is stored.
This overrides private methods of paho, so the dependency is pinned below 3; the ingest
tests (which count every message through restarts of every part) guard the behaviour.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

if TYPE_CHECKING:  # paho declares its packet state's type for type checkers only
    from paho.mqtt.client import _InPacket

log = logging.getLogger(__name__)

_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_FRAME = struct.Struct("!BBH")
_READ_SIZE = 256 * 1024

# (topic, payload, packet id, qos)
RawMessageCallback = Callable[[bytes, bytes, int, int], None]


class MalformedPacketError(ValueError):
    pass


def _empty_in_packet() -> _InPacket:
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


class BatchAckClient(mqtt.Client):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.on_raw_message: RawMessageCallback | None = None
        self._rbuf = b""
        self._rsock: object = None

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._sock is not self._rsock:
            # A new connection: bytes left from the old one belong to nobody.
            self._rsock = self._sock
            self._rbuf = b""
        try:
            data = self._sock_recv(_READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            log.info("MQTT socket read failed: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        buf = self._rbuf + data if self._rbuf else data
        try:
            rc, used = self._handle_buffer(buf)
        except (MalformedPacketError, IndexError, struct.error) as err:
            log.error("malformed packet from the broker: %s", err)
            rc, used = MQTTErrorCode.MQTT_ERR_PROTOCOL, len(buf)
        self._rbuf = buf[used:]
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return self._loop_rc_handle(rc)
        return rc

    def _handle_buffer(self, buf: bytes) -> tuple[MQTTErrorCode, int]:
        """Handle every complete packet in buf; return (rc, bytes consumed)."""
        n = len(buf)
        pos = 0
        raw = self.on_raw_message
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        while pos + 2 <= n:
            cmd = buf[pos]
            # Remaining length: 1 to 4 bytes, 7 bits each.
            length = 0
            shift = 0
            i = pos + 1
            while True:
                if i >= n:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS, pos
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacketError("remaining length longer than 4 bytes")
            end = i + length
            if end > n:
                return MQTTErrorCode.MQTT_ERR_SUCCESS, pos  # incomplete; wait for more
            pos = end
            qos = (cmd & 0x06) >> 1
            if (cmd & 0xF0) == _PUBLISH and qos < 2 and raw is not None:
                tlen = (buf[i] << 8) | buf[i + 1]
                p = i + 2 + tlen
                topic = buf[i + 2 : p]
                mid = 0
                if qos:
                    mid = (buf[p] << 8) | buf[p + 1]
                    p += 2
                if v5:
                    plen = 0
                    shift = 0
                    while True:
                        b = buf[p]
                        p += 1
                        plen |= (b & 0x7F) << shift
                        if not b & 0x80:
                            break
                        shift += 7
                    p += plen
                if p > end or (qos and mid == 0):
                    raise MalformedPacketError("PUBLISH shorter than its headers")
                try:
                    raw(topic, buf[p:end], mid, qos)
                except Exception:
                    log.exception("on_raw_message failed; message not acknowledged")
                continue
            # Anything else: paho's own handling, as its _packet_read would do it.
            self._in_packet = _empty_in_packet()
            self._in_packet["command"] = cmd
            self._in_packet["packet"] = bytearray(buf[i:end])
            self._in_packet["remaining_length"] = length
            rc = self._packet_handle()
            self._in_packet = _empty_in_packet()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc, pos
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS, pos
        return MQTTErrorCode.MQTT_ERR_SUCCESS, pos

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages, in the given (arrival) order, with one write."""
        blob = b"".join([_PUBACK_FRAME.pack(_PUBACK, 2, mid) for mid in mids])
        if blob:
            self._packet_queue(_PUBACK, blob, 0, 0)
