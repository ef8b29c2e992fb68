"""MQTT control packets as the node sees them: decoders for what a client sends,
encoders for what the server answers. Pure; the session owns the state.

Decoders take the packet body (the bytes after the fixed header) and the fixed
header's flag nibble, check every rule the spec states for the packet's own bytes
(reserved flags, lengths, QoS 3, packet id 0, topic rules, property placement) and
raise `codec.MalformedPacket` / `codec.ProtocolError` (or another `MqttError` with the
v5 reason code) when one is broken. Rules that need session state (topic alias
mapping, receive maximum, QoS maximum) are the session's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from .codec import (
    ACK_PROPS,
    CONNECT_PROPS,
    DISCONNECT_PROPS,
    NOT_AUTHORIZED,
    PACKET_ID_NOT_FOUND,
    PUBLISH_PROPS,
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
    SUBSCRIBE_PROPS,
    SUBSCRIPTION_IDENTIFIER,
    SUCCESS,
    TOPIC_FILTER_INVALID,
    U16,
    UNSUBSCRIBE_PROPS,
    UNSUPPORTED_PROTOCOL_VERSION,
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    WILL_PROPS,
    MalformedPacket,
    MqttError,
    PropertyValue,
    ProtocolError,
    Reader,
    decode_string,
    encode_properties,
    fixed_header,
    read_properties,
)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
PACKET_NAMES = {
    1: "connect",
    2: "connack",
    3: "publish",
    4: "puback",
    5: "pubrec",
    6: "pubrel",
    7: "pubcomp",
    8: "subscribe",
    9: "suback",
    10: "unsubscribe",
    11: "unsuback",
    12: "pingreq",
    13: "pingresp",
    14: "disconnect",
    15: "auth",
}
MQTT_311, MQTT_5 = 4, 5
TOPIC_ALIAS = 0x23
RESPONSE_TOPIC = 0x08

_ACK = struct.Struct(">BBH")
PINGRESP_BYTES = b"\xd0\x00"


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    level: int
    clean_start: bool
    keepalive_s: int
    client_id: str
    username: str | None
    password: bytes | None
    will: Will | None
    properties: dict[int, PropertyValue]

    @property
    def v5(self) -> bool:
        return self.level == MQTT_5


class UnsupportedVersion(MqttError):
    reason_code = UNSUPPORTED_PROTOCOL_VERSION


def decode_connect(flags: int, body: bytes) -> Connect:
    if flags:
        raise MalformedPacket("CONNECT fixed header flags must be 0")
    r = Reader(body)
    name = r.binary("the protocol name")
    level = r.u8("the protocol level")
    if name not in (b"MQTT", b"MQIsdp"):
        raise MalformedPacket(f"unknown protocol name {name[:16]!r}")
    if name != b"MQTT" or level not in (MQTT_311, MQTT_5):
        raise UnsupportedVersion(f"protocol level {level} is not supported (4 or 5)")
    v5 = level == MQTT_5
    connect_flags = r.u8("the connect flags")
    keepalive_s = r.u16("the keep alive")
    if connect_flags & 0x01:
        raise MalformedPacket("the reserved CONNECT flag is set")
    has_will = bool(connect_flags & 0x04)
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    has_password = bool(connect_flags & 0x40)
    has_username = bool(connect_flags & 0x80)
    if not has_will and (will_qos or will_retain):
        raise MalformedPacket("will QoS/retain set without a will")
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if has_password and not has_username and not v5:
        raise MalformedPacket("a password without a user name (MQTT 3.1.1)")
    props = read_properties(r, CONNECT_PROPS, "CONNECT") if v5 else {}
    if props.get(0x21) == 0 or props.get(0x27) == 0:
        raise ProtocolError("Receive Maximum and Maximum Packet Size must not be 0")
    if props.get(0x17, 0) not in (0, 1) or props.get(0x19, 0) not in (0, 1):
        raise ProtocolError("request problem/response information must be 0 or 1")
    client_id = r.string("the client identifier")
    will = None
    if has_will:
        if v5:
            read_properties(r, WILL_PROPS, "the will")
        topic = r.string("the will topic")
        check_topic_name(topic.encode("utf-8"))
        will = Will(topic, r.binary("the will payload"), will_qos, will_retain)
    username = r.string("the user name") if has_username else None
    password = r.binary("the password") if has_password else None
    r.done("CONNECT")
    return Connect(
        level, bool(connect_flags & 0x02), keepalive_s, client_id, username, password, will, props
    )


_VALID_TOPICS: dict[bytes, None] = {}
"""Memo of topic names already found valid (devices repeat theirs); bounded below."""
VALID_TOPICS_MAX = 4096
VALID_TOPIC_BYTES_MAX = 256


def check_topic_name(raw: bytes) -> None:
    """A topic name a client may publish to: UTF-8, no U+0000, no wildcards."""
    if raw in _VALID_TOPICS:
        return
    if b"+" in raw or b"#" in raw:
        raise MalformedPacket("wildcards are not allowed in a topic name")
    decode_string(raw, "the topic name")
    if len(raw) <= VALID_TOPIC_BYTES_MAX:
        if len(_VALID_TOPICS) >= VALID_TOPICS_MAX:
            _VALID_TOPICS.clear()
        _VALID_TOPICS[raw] = None


class Publish(NamedTuple):
    """A decoded PUBLISH (a tuple: built once per message on the hot path)."""

    qos: int
    dup: bool
    retain: bool
    topic_field: bytes
    """The topic as on the wire: u16 length + UTF-8 (the FMT 1 payload prefix)."""
    packet_id: int
    alias: int
    """v5 Topic Alias, 0 when none."""
    message: bytes


def decode_publish(flags: int, body: bytes, v5: bool) -> Publish:
    qos = (flags >> 1) & 0x03
    dup = flags & 0x08 != 0
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if dup and qos == 0:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")
    size = len(body)
    if size < 2:
        raise MalformedPacket("packet ends inside the topic name")
    end = 2 + ((body[0] << 8) | body[1])
    if end > size:
        raise MalformedPacket("packet ends inside the topic name")
    topic_field = body[:end]
    pos = end
    packet_id = 0
    if qos:
        if pos + 2 > size:
            raise MalformedPacket("packet ends inside the packet identifier")
        packet_id = (body[pos] << 8) | body[pos + 1]
        if packet_id == 0:
            raise MalformedPacket("packet identifier 0")
        pos += 2
    alias = 0
    if v5:
        if pos < size and body[pos] == 0:
            pos += 1
        else:
            r = Reader(body, pos)
            props = read_properties(r, PUBLISH_PROPS, "PUBLISH")
            pos = r.pos
            if SUBSCRIPTION_IDENTIFIER in props:
                raise ProtocolError("a client must not send a Subscription Identifier")
            response = props.get(RESPONSE_TOPIC)
            if isinstance(response, str):
                check_topic_name(response.encode("utf-8"))
            found = props.get(TOPIC_ALIAS, 0)
            assert isinstance(found, int)
            alias = found
    if end == 2:
        if not v5:
            raise MalformedPacket("empty topic name")
        if not alias:
            raise ProtocolError("empty topic name without a topic alias")
    else:
        check_topic_name(topic_field[2:])
    return Publish(qos, dup, flags & 0x01 != 0, topic_field, packet_id, alias, body[pos:])


def decode_pubrel(flags: int, body: bytes, v5: bool) -> int:
    """The packet id of a PUBREL."""
    if flags != 0x02:
        raise MalformedPacket("PUBREL fixed header flags must be 0010")
    return _decode_ack(body, v5, "PUBREL", (SUCCESS, PACKET_ID_NOT_FOUND))


def _decode_ack(body: bytes, v5: bool, what: str, codes: tuple[int, ...]) -> int:
    r = Reader(body)
    packet_id = r.u16("the packet identifier")
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    if v5 and r.remaining:
        if r.u8("the reason code") not in codes:
            raise MalformedPacket(f"invalid {what} reason code")
        if r.remaining:
            read_properties(r, ACK_PROPS, what)
    r.done(what)
    return packet_id


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: tuple[str, ...]
    has_subscription_id: bool


def decode_subscribe(flags: int, body: bytes, v5: bool) -> Subscribe:
    if flags != 0x02:
        raise MalformedPacket("SUBSCRIBE fixed header flags must be 0010")
    r = Reader(body)
    packet_id = r.u16("the packet identifier")
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    props = read_properties(r, SUBSCRIBE_PROPS, "SUBSCRIBE") if v5 else {}
    filters = []
    while r.remaining:
        filters.append(r.string("a topic filter"))
        options = r.u8("the subscription options")
        if options & (0xC0 if v5 else 0xFC) or options & 0x03 == 3:
            raise MalformedPacket("invalid subscription options")
        if v5 and (options >> 4) & 0x03 == 3:
            raise MalformedPacket("retain handling 3")
    if not filters:
        raise ProtocolError("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, tuple(filters), SUBSCRIPTION_IDENTIFIER in props)


def decode_unsubscribe(flags: int, body: bytes, v5: bool) -> tuple[int, int]:
    """(packet id, number of topic filters) of an UNSUBSCRIBE."""
    if flags != 0x02:
        raise MalformedPacket("UNSUBSCRIBE fixed header flags must be 0010")
    r = Reader(body)
    packet_id = r.u16("the packet identifier")
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    if v5:
        read_properties(r, UNSUBSCRIBE_PROPS, "UNSUBSCRIBE")
    count = 0
    while r.remaining:
        r.string("a topic filter")
        count += 1
    if not count:
        raise ProtocolError("UNSUBSCRIBE without a topic filter")
    return packet_id, count


def decode_disconnect(flags: int, body: bytes, v5: bool) -> int:
    """The client's reason code (0 for v3.1.1 and a bare v5 DISCONNECT)."""
    if flags:
        raise MalformedPacket("DISCONNECT fixed header flags must be 0")
    if not v5:
        if body:
            raise MalformedPacket("a v3.1.1 DISCONNECT has no body")
        return SUCCESS
    r = Reader(body)
    reason = r.u8() if r.remaining else SUCCESS
    if r.remaining:
        read_properties(r, DISCONNECT_PROPS, "DISCONNECT")
    r.done("DISCONNECT")
    return reason


def check_pingreq(flags: int, body: bytes) -> None:
    if flags or body:
        raise MalformedPacket("PINGREQ has flags 0 and no body")


def subscribe_reason(topic_filter: str) -> int:
    """The v5 SUBACK code refusing one filter (the node takes no subscriptions)."""
    if not topic_filter:
        return TOPIC_FILTER_INVALID
    if topic_filter.startswith("$share/"):
        return SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
    if "+" in topic_filter or "#" in topic_filter:
        return WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
    return NOT_AUTHORIZED


# ------------------------------------------------------------------ encoders
def encode_connack(
    v5: bool,
    code: int,
    props: list[tuple[int, PropertyValue]] | None = None,
    *,
    session_present: bool = False,
) -> bytes:
    """CONNACK; `code` is the v3.1.1 return code or the v5 reason code."""
    body = bytes((1 if session_present else 0, code))
    if v5:
        body += encode_properties(props or [])
    return fixed_header(0x20, len(body)) + body


def encode_puback(packet_id: int) -> bytes:
    return _ACK.pack(0x40, 2, packet_id)


def encode_pubrec(packet_id: int) -> bytes:
    return _ACK.pack(0x50, 2, packet_id)


def encode_pubcomp(packet_id: int, reason: int = SUCCESS) -> bytes:
    if reason == SUCCESS:
        return _ACK.pack(0x70, 2, packet_id)
    return _ACK.pack(0x70, 3, packet_id) + bytes((reason,))


def encode_suback(packet_id: int, codes: list[int], v5: bool) -> bytes:
    body = U16.pack(packet_id) + (b"\x00" if v5 else b"") + bytes(codes)
    return fixed_header(0x90, len(body)) + body


def encode_unsuback(packet_id: int, count: int, v5: bool, reason: int = 0x11) -> bytes:
    """v5: one reason code per filter (0x11 no subscription existed)."""
    body = U16.pack(packet_id) + (b"\x00" + bytes((reason,)) * count if v5 else b"")
    return fixed_header(0xB0, len(body)) + body


def encode_disconnect(reason: int) -> bytes:
    """A v5 server DISCONNECT (there is none in 3.1.1)."""
    if reason == SUCCESS:
        return b"\xe0\x00"
    return b"\xe0\x01" + bytes((reason,))
