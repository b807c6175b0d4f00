"""BatchAckClient's own packet reading: whatever way the stream is cut, the same messages."""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from telemetry.mqtt_client import BatchAckClient


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: bytes, payload: bytes, mid: int, qos: int, props: bytes, v5: bool) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


class FakeSocket:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


message = st.tuples(
    st.binary(min_size=1, max_size=40).filter(lambda t: b"\x00" not in t),
    st.binary(max_size=3000),
    st.integers(1, 65535),
    st.sampled_from([0, 1]),
    # User Property (0x26) pairs: properties we must skip without understanding.
    st.sampled_from([b"", b"\x26\x00\x01k\x00\x01v", b"\x01\x01"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(message, min_size=1, max_size=30), st.data(), st.booleans())
def test_any_cut_of_the_stream_gives_the_same_messages(msgs, data, v5):
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = BatchAckClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    got: list[tuple[bytes, bytes, int, int]] = []
    client.on_raw_message = lambda t, p, m, q: got.append((t, p, m, q))
    stream = b"".join(publish_packet(t, p, m, q, pr, v5) for t, p, m, q, pr in msgs)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=20))))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if stream[a:b]]
    sock = FakeSocket(chunks)
    client._sock = sock  # type: ignore[assignment]
    for _ in range(len(chunks) + 1):
        assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert got == [(t, p, m if q else 0, q) for t, p, m, q, _ in msgs]


def test_pingresp_between_publishes_goes_to_paho():
    client = BatchAckClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    got: list[bytes] = []
    client.on_raw_message = lambda t, p, m, q: got.append(p)
    client._ping_t = 123.0  # a ping is outstanding
    stream = (
        publish_packet(b"a/b", b"1", 7, 1, b"", True)
        + b"\xd0\x00"
        + publish_packet(b"a/b", b"2", 8, 1, b"", True)
    )
    client._sock = FakeSocket([stream])  # type: ignore[assignment]
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert got == [b"1", b"2"]
    assert client._ping_t == 0  # paho handled the PINGRESP


def test_ack_many_sends_one_write_in_order():
    client = BatchAckClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    client.ack_many([5, 1, 65535])
    packet = client._out_packet.popleft()
    assert packet["packet"] == b"\x40\x02\x00\x05\x40\x02\x00\x01\x40\x02\xff\xff"
    assert not client._out_packet
