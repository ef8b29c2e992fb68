"""Fuzz target: the MQTT packet parser (ingest.mqtt.codec and ingest.mqtt.packets) on
a byte stream, split into packets the way `MqttSession._parse` does (fixed header,
variable byte integer length) and each packet given to the decoder of its type, as
MQTT 3.1.1 or 5.0 (the first input byte decides).

Only `ingest.mqtt.codec.MqttError` (MalformedPacket, ProtocolError, UnsupportedVersion
and the other reason-code errors) may escape. A variable byte integer that decodes
re-encodes to the same bytes (the decoder refuses non-minimal forms), and a PUBLISH
that decodes has a topic that is UTF-8 without wildcards or U+0000.

    mkdir -p /tmp/mqtt   # new inputs go to the first corpus directory
    python tests/fuzz/fuzz_mqtt.py -runs=100000 /tmp/mqtt tests/fuzz/corpus/mqtt
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import fuzz, instrumented

with instrumented(__name__, "ingest.mqtt.codec", "ingest.mqtt.packets"):
    from ingest.mqtt import codec, packets
    from ingest.mqtt.codec import MqttError, Reader, decode_varint, encode_varint

PROPERTY_PLACES = [
    (codec.CONNECT_PROPS, "CONNECT"),
    (codec.WILL_PROPS, "the will"),
    (codec.PUBLISH_PROPS, "PUBLISH"),
    (codec.ACK_PROPS, "ack"),
    (codec.SUBSCRIBE_PROPS, "SUBSCRIBE"),
    (codec.UNSUBSCRIBE_PROPS, "UNSUBSCRIBE"),
    (codec.DISCONNECT_PROPS, "DISCONNECT"),
]
MAX_PACKET_BYTES = 256 * 1024


def _packet(kind: int, flags: int, body: bytes, v5: bool) -> None:
    if kind == packets.CONNECT:
        packets.decode_connect(flags, body)
    elif kind == packets.PUBLISH:
        publish = packets.decode_publish(flags, body, v5)
        topic = publish.topic_field[2:]
        assert len(publish.topic_field) >= 2
        if topic:
            text = topic.decode("utf-8")
            assert "+" not in text, text
            assert "#" not in text, text
            assert "\x00" not in text, text
        assert publish.qos in (0, 1, 2)
        assert (publish.packet_id != 0) == (publish.qos != 0)
    elif kind == packets.PUBREL:
        assert 0 < packets.decode_pubrel(flags, body, v5) <= 0xFFFF
    elif kind == packets.SUBSCRIBE:
        for topic_filter in packets.decode_subscribe(flags, body, v5).filters:
            packets.subscribe_reason(topic_filter)
    elif kind == packets.UNSUBSCRIBE:
        packets.decode_unsubscribe(flags, body, v5)
    elif kind == packets.DISCONNECT:
        packets.decode_disconnect(flags, body, v5)
    elif kind == packets.PINGREQ:
        packets.check_pingreq(flags, body)


def _guarded(step: object, *args: object) -> None:
    with contextlib.suppress(MqttError):
        step(*args)  # type: ignore[operator]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    v5 = bool(data[0] & 1)
    stream = data[1:]
    # Property blocks on their own, in every place they may appear.
    allowed, where = PROPERTY_PLACES[data[0] % len(PROPERTY_PLACES)]
    _guarded(codec.read_properties, Reader(stream), allowed, where)
    # The stream, packet by packet.
    pos = 0
    while pos + 2 <= len(stream):
        first = stream[pos]
        try:
            found = decode_varint(stream, pos + 1)
        except MqttError:
            return
        if found is None:
            return
        length, start = found
        assert encode_varint(length) == stream[pos + 1 : start], "varint not re-encoded as read"
        if length > MAX_PACKET_BYTES or start + length > len(stream):
            return
        _guarded(_packet, first >> 4, first & 0x0F, stream[start : start + length], v5)
        pos = start + length


if __name__ == "__main__":
    fuzz(TestOneInput)
