"""MQTT wire primitives (3.1.1 and 5.0): variable byte integers, strings, binary data,
v5 properties, the error tree. Pure functions over bytes; no I/O, no state.

    MqttError(reason_code)            a v5 reason code says what went wrong
    ├── MalformedPacket   0x81        bytes that do not parse as the packet they claim
    ├── ProtocolError     0x82        parses, but breaks a rule of the protocol
    └── (others)                      0x93 receive maximum, 0x94 topic alias, 0x95 too
                                      large, 0x9A retain, 0x9B QoS, 0xA1 sub ids

Every decoder raises `MalformedPacket` on truncated or trailing bytes, a variable byte
integer longer than 4 bytes or not minimally encoded, a string that is not UTF-8 or
holds U+0000, and an unknown, misplaced or truncated property; a property given twice
(other than User Property) is a `ProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
VARINT_MAX = 268_435_455  # four bytes of 7 bits

# v5 reason codes used by the node (MQTT 5.0 §2.4).
SUCCESS = 0x00
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
PACKET_ID_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class MqttError(Exception):
    """A packet the node refuses; `reason_code` is the v5 code that says why."""

    reason_code = UNSPECIFIED_ERROR

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MqttError):
    reason_code = MALFORMED_PACKET


class ProtocolError(MqttError):
    reason_code = PROTOCOL_ERROR


# ------------------------------------------------------------------ integers
def decode_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when `data` ends inside the integer."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise MalformedPacket("variable byte integer not minimally encoded")
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= VARINT_MAX:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


class Reader:
    """Sequential decoding of one packet's body; every read checks the bounds."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, what: str) -> int:
        pos = self.pos
        if pos + n > self.end:
            raise MalformedPacket(f"packet ends inside {what}")
        self.pos = pos + n
        return pos

    def u8(self, what: str = "a byte") -> int:
        return self.data[self._need(1, what)]

    def u16(self, what: str = "a two byte integer") -> int:
        return int(U16.unpack_from(self.data, self._need(2, what))[0])

    def u32(self, what: str = "a four byte integer") -> int:
        return int(U32.unpack_from(self.data, self._need(4, what))[0])

    def varint(self, what: str = "a variable byte integer") -> int:
        found = decode_varint(self.data[: self.end], self.pos)
        if found is None:
            raise MalformedPacket(f"packet ends inside {what}")
        value, self.pos = found
        return value

    def binary(self, what: str = "binary data") -> bytes:
        n = self.u16(what)
        start = self._need(n, what)
        return self.data[start : start + n]

    def string(self, what: str = "a string") -> str:
        return decode_string(self.binary(what), what)

    def rest(self) -> bytes:
        start, self.pos = self.pos, self.end
        return self.data[start : self.end]

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise MalformedPacket(f"{self.end - self.pos} unexpected bytes after {what}")


def decode_string(raw: bytes, what: str = "a string") -> str:
    """MQTT UTF-8 string: well-formed UTF-8 (no surrogates) without U+0000."""
    if b"\x00" in raw:
        raise MalformedPacket(f"{what} contains U+0000")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedPacket(f"{what} is not valid UTF-8") from err


def encode_binary(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT strings and binary data hold at most 65535 bytes")
    return U16.pack(len(raw)) + raw


def encode_string(text: str) -> bytes:
    return encode_binary(text.encode("utf-8"))


# ---------------------------------------------------------------- properties
BYTE, U16_T, U32_T, VARINT_T, STRING, BINARY, PAIR = range(7)
PROPERTY_TYPES: dict[int, int] = {
    0x01: BYTE,  # Payload Format Indicator
    0x02: U32_T,  # Message Expiry Interval
    0x03: STRING,  # Content Type
    0x08: STRING,  # Response Topic
    0x09: BINARY,  # Correlation Data
    0x0B: VARINT_T,  # Subscription Identifier
    0x11: U32_T,  # Session Expiry Interval
    0x12: STRING,  # Assigned Client Identifier
    0x13: U16_T,  # Server Keep Alive
    0x15: STRING,  # Authentication Method
    0x16: BINARY,  # Authentication Data
    0x17: BYTE,  # Request Problem Information
    0x18: U32_T,  # Will Delay Interval
    0x19: BYTE,  # Request Response Information
    0x1A: STRING,  # Response Information
    0x1C: STRING,  # Server Reference
    0x1F: STRING,  # Reason String
    0x21: U16_T,  # Receive Maximum
    0x22: U16_T,  # Topic Alias Maximum
    0x23: U16_T,  # Topic Alias
    0x24: BYTE,  # Maximum QoS
    0x25: BYTE,  # Retain Available
    0x26: PAIR,  # User Property
    0x27: U32_T,  # Maximum Packet Size
    0x28: BYTE,  # Wildcard Subscription Available
    0x29: BYTE,  # Subscription Identifier Available
    0x2A: BYTE,  # Shared Subscription Available
}
USER_PROPERTY = 0x26
SUBSCRIPTION_IDENTIFIER = 0x0B

# Which properties a client may send in which place (MQTT 5.0 §2.2.2.2).
CONNECT_PROPS = frozenset({0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27})
WILL_PROPS = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26})
PUBLISH_PROPS = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26})
ACK_PROPS = frozenset({0x1F, 0x26})
SUBSCRIBE_PROPS = frozenset({0x0B, 0x26})
UNSUBSCRIBE_PROPS = frozenset({0x26})
DISCONNECT_PROPS = frozenset({0x11, 0x1C, 0x1F, 0x26})

PropertyValue = int | str | bytes | tuple[str, str]


def read_properties(
    reader: Reader, allowed: frozenset[int], where: str
) -> dict[int, PropertyValue]:
    """The property block at the reader's position. User Properties are checked and
    dropped (the node has no use for them); every other property at most once."""
    length = reader.varint(f"the {where} property length")
    if length > reader.remaining:
        raise MalformedPacket(f"the {where} properties run past the packet")
    block = Reader(reader.data, reader.pos, reader.pos + length)
    reader.pos += length
    found: dict[int, PropertyValue] = {}
    while block.remaining:
        ident = block.varint("a property identifier")
        kind = PROPERTY_TYPES.get(ident)
        if kind is None or ident not in allowed:
            raise MalformedPacket(f"property 0x{ident:02X} is not allowed in {where}")
        value: PropertyValue
        if kind == BYTE:
            value = block.u8()
        elif kind == U16_T:
            value = block.u16()
        elif kind == U32_T:
            value = block.u32()
        elif kind == VARINT_T:
            value = block.varint()
        elif kind == STRING:
            value = block.string(f"property 0x{ident:02X}")
        elif kind == BINARY:
            value = block.binary(f"property 0x{ident:02X}")
        else:
            value = (block.string("a user property name"), block.string("a user property"))
        if ident == USER_PROPERTY:
            continue
        if ident in found:
            raise ProtocolError(f"property 0x{ident:02X} given twice in {where}")
        found[ident] = value
    return found


def encode_properties(props: Iterable[tuple[int, PropertyValue]]) -> bytes:
    """A v5 property block (length prefix included)."""
    out = bytearray()
    for ident, value in props:
        kind = PROPERTY_TYPES[ident]
        out += encode_varint(ident)
        if kind == BYTE:
            assert isinstance(value, int)
            out.append(value)
        elif kind == U16_T:
            assert isinstance(value, int)
            out += U16.pack(value)
        elif kind == U32_T:
            assert isinstance(value, int)
            out += U32.pack(value)
        elif kind == VARINT_T:
            assert isinstance(value, int)
            out += encode_varint(value)
        elif kind == STRING:
            assert isinstance(value, str)
            out += encode_string(value)
        elif kind == BINARY:
            assert isinstance(value, bytes)
            out += encode_binary(value)
        else:
            assert isinstance(value, tuple)
            out += encode_string(value[0]) + encode_string(value[1])
    return encode_varint(len(out)) + bytes(out)


def fixed_header(first_byte: int, body_len: int) -> bytes:
    return bytes((first_byte,)) + encode_varint(body_len)
