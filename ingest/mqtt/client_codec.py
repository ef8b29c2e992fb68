"""The client side of the wire: encoders for what a publisher sends and decoders for
what the node answers. Used by the codec's round-trip tests, the raw-socket test
clients and the benchmark's pipelined publishers; the node itself never imports it.

Encoders write exactly what they are told (including QoS 3, packet id 0 or wildcard
topics when asked), so tests can build malformed packets with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import (
    PROPERTY_TYPES,
    U16,
    PropertyValue,
    Reader,
    decode_varint,
    encode_binary,
    encode_properties,
    encode_string,
    fixed_header,
    read_properties,
)
from .packets import MQTT_5, MQTT_311

Props = list[tuple[int, PropertyValue]]
ANY_PROPERTY = frozenset(PROPERTY_TYPES)


def connect(
    client_id: str = "",
    *,
    level: int = MQTT_311,
    username: str | None = None,
    password: str | bytes | None = None,
    keepalive_s: int = 60,
    clean_start: bool = True,
    props: Props | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
    flags_extra: int = 0,
) -> bytes:
    """CONNECT. `will` = (topic, payload, qos, retain)."""
    flags = flags_extra | (0x02 if clean_start else 0)
    payload = encode_string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += (encode_properties([]) if level == MQTT_5 else b"") + encode_string(topic)
        payload += encode_binary(message)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
    if password is not None:
        flags |= 0x40
        payload += encode_binary(password.encode() if isinstance(password, str) else password)
    variable = encode_string("MQTT") + bytes((level, flags)) + U16.pack(keepalive_s)
    if level == MQTT_5:
        variable += encode_properties(props or [])
    body = variable + payload
    return fixed_header(0x10, len(body)) + body


def publish(
    topic: str | bytes,
    message: bytes,
    *,
    qos: int = 0,
    packet_id: int = 0,
    dup: bool = False,
    retain: bool = False,
    v5: bool = False,
    props: Props | None = None,
) -> bytes:
    raw = topic.encode("utf-8") if isinstance(topic, str) else topic
    body = U16.pack(len(raw)) + raw
    if qos:
        body += U16.pack(packet_id)
    if v5:
        body += encode_properties(props or [])
    body += message
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    return fixed_header(first, len(body)) + body


def pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + U16.pack(packet_id)


def subscribe(
    packet_id: int, filters: list[tuple[str, int]], *, v5: bool = False, props: Props | None = None
) -> bytes:
    body = U16.pack(packet_id) + (encode_properties(props or []) if v5 else b"")
    for topic_filter, options in filters:
        body += encode_string(topic_filter) + bytes((options,))
    return fixed_header(0x82, len(body)) + body


def unsubscribe(packet_id: int, filters: list[str], *, v5: bool = False) -> bytes:
    body = U16.pack(packet_id) + (encode_properties([]) if v5 else b"")
    for topic_filter in filters:
        body += encode_string(topic_filter)
    return fixed_header(0xA2, len(body)) + body


PINGREQ = b"\xc0\x00"


def disconnect(reason: int | None = None) -> bytes:
    return b"\xe0\x00" if reason is None else b"\xe0\x01" + bytes((reason,))


# ----------------------------------------------------------- server packets
@dataclass(frozen=True, slots=True)
class Packet:
    type: int
    flags: int
    body: bytes


def split_packets(buffer: bytearray) -> list[Packet]:
    """Whole packets at the front of `buffer`, removed from it."""
    out: list[Packet] = []
    pos = 0
    while True:
        if len(buffer) - pos < 2:
            break
        found = decode_varint(buffer, pos + 1)
        if found is None:
            break
        length, start = found
        if start + length > len(buffer):
            break
        first = buffer[pos]
        out.append(Packet(first >> 4, first & 0x0F, bytes(buffer[start : start + length])))
        pos = start + length
    del buffer[:pos]
    return out


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    code: int
    props: dict[int, PropertyValue]


def decode_connack(body: bytes, v5: bool) -> ConnAck:
    r = Reader(body)
    present, code = r.u8(), r.u8()
    props: dict[int, PropertyValue] = {}
    if v5 and r.remaining:
        props = _any_properties(r)
    return ConnAck(bool(present & 1), code, props)


def _any_properties(r: Reader) -> dict[int, PropertyValue]:
    return read_properties(r, ANY_PROPERTY, "a server packet")


def decode_ack(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK/PUBREC/PUBCOMP."""
    packet_id = (body[0] << 8) | body[1]
    return packet_id, body[2] if len(body) > 2 else 0


def decode_suback(body: bytes, v5: bool) -> tuple[int, list[int]]:
    r = Reader(body)
    packet_id = r.u16()
    if v5:
        _any_properties(r)
    return packet_id, list(r.rest())


def decode_disconnect_reason(body: bytes) -> int:
    return body[0] if body else 0
