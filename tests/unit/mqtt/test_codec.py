"""MQTT wire primitives: variable byte integers, strings, v5 properties."""

from __future__ import annotations

import pytest

from ingest.mqtt.codec import (
    CONNECT_PROPS,
    PUBLISH_PROPS,
    MalformedPacket,
    ProtocolError,
    Reader,
    decode_string,
    decode_varint,
    encode_properties,
    encode_varint,
    read_properties,
)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
        (268_435_455, 4),
    ],
)
def test_variable_byte_integers_round_trip_at_every_size_boundary(value: int, size: int) -> None:
    raw = encode_varint(value)
    assert len(raw) == size
    assert decode_varint(b"\xaa" + raw + b"\xbb", 1) == (value, 1 + size)


def test_a_variable_byte_integer_cut_short_asks_for_more_bytes() -> None:
    raw = encode_varint(2_097_152)
    for cut in range(len(raw)):
        assert decode_varint(raw[:cut], 0) is None


def test_a_fifth_continuation_byte_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="longer than 4"):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)


def test_a_variable_byte_integer_that_is_not_minimally_encoded_is_malformed() -> None:
    with pytest.raises(MalformedPacket, match="minimally"):
        decode_varint(b"\x80\x00", 0)


def test_values_beyond_four_bytes_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="variable byte integer"):
        encode_varint(268_435_456)


@pytest.mark.parametrize(
    "raw",
    [b"a\x00b", b"\xff", b"\xc3", b"\xed\xa0\x80"],
    ids=["NUL", "invalid byte", "truncated sequence", "encoded surrogate"],
)
def test_strings_that_are_not_mqtt_utf8_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode_string(raw)


def test_a_reader_refuses_to_read_past_the_end_of_its_packet() -> None:
    reader = Reader(b"\x00\x05abc")
    with pytest.raises(MalformedPacket, match="ends inside"):
        reader.binary()


def test_properties_round_trip_and_user_properties_are_dropped() -> None:
    block = encode_properties(
        [(0x11, 3600), (0x21, 10), (0x26, ("k", "v")), (0x26, ("k", "w")), (0x15, "m")]
    )
    props = read_properties(Reader(block), CONNECT_PROPS, "CONNECT")
    assert props == {0x11: 3600, 0x21: 10, 0x15: "m"}


def test_a_property_given_twice_is_a_protocol_error() -> None:
    block = encode_properties([(0x21, 10), (0x21, 11)])
    with pytest.raises(ProtocolError, match="twice"):
        read_properties(Reader(block), CONNECT_PROPS, "CONNECT")


@pytest.mark.parametrize(
    ("block", "where"),
    [
        (b"\x02\x7f\x00", "unknown identifier"),
        (encode_properties([(0x23, 1)]), "Topic Alias is not a CONNECT property"),
        (b"\x05\x11\x00\x00", "runs past the packet"),
        (b"\x03\x11\x00\x00", "value cut short"),
        (b"\x03\x26\x00\x01", "user property cut short"),
    ],
)
def test_misplaced_unknown_or_truncated_properties_are_malformed(block: bytes, where: str) -> None:
    with pytest.raises(MalformedPacket):
        read_properties(Reader(block), CONNECT_PROPS, "CONNECT")


def test_publish_properties_are_read_and_the_reader_moves_past_them() -> None:
    block = encode_properties([(0x23, 7), (0x03, "application/json")])
    reader = Reader(block + b"payload")
    assert read_properties(reader, PUBLISH_PROPS, "PUBLISH") == {0x23: 7, 0x03: "application/json"}
    assert reader.rest() == b"payload"
