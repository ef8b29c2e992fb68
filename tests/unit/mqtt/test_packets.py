"""Client packets decoded (every malformed case), server packets encoded; round trips
through the client-side codec."""

from __future__ import annotations

import pytest

from ingest.mqtt import client_codec as cc
from ingest.mqtt.codec import MalformedPacket, MqttError, ProtocolError
from ingest.mqtt.packets import (
    MQTT_5,
    MQTT_311,
    Publish,
    UnsupportedVersion,
    check_pingreq,
    decode_connect,
    decode_disconnect,
    decode_publish,
    decode_pubrel,
    decode_subscribe,
    decode_unsubscribe,
    encode_connack,
    encode_disconnect,
    encode_puback,
    encode_pubcomp,
    encode_pubrec,
    encode_suback,
    encode_unsuback,
    subscribe_reason,
)


def _split(packet: bytes) -> tuple[int, int, bytes]:
    (found,) = cc.split_packets(bytearray(packet))
    return found.type, found.flags, found.body


def _publish(packet: bytes, v5: bool = False) -> Publish:
    kind, flags, body = _split(packet)
    assert kind == 3
    return decode_publish(flags, body, v5)


# ------------------------------------------------------------------ CONNECT
@pytest.mark.parametrize("level", [MQTT_311, MQTT_5])
def test_a_connect_round_trips_with_will_credentials_and_properties(level: int) -> None:
    packet = cc.connect(
        "dev-1",
        level=level,
        username="dev-1@ep",
        password="emq_live_x",
        keepalive_s=30,
        clean_start=False,
        props=[(0x11, 60), (0x21, 5)] if level == MQTT_5 else None,
        will=("status/dev-1", b"gone", 1, False),
    )
    kind, flags, body = _split(packet)
    connect = decode_connect(flags, body)
    assert kind == 1
    assert (connect.level, connect.client_id, connect.keepalive_s) == (level, "dev-1", 30)
    assert (connect.username, connect.password, connect.clean_start) == (
        "dev-1@ep",
        b"emq_live_x",
        False,
    )
    assert connect.will is not None
    assert (connect.will.topic, connect.will.payload, connect.will.qos) == (
        "status/dev-1",
        b"gone",
        1,
    )
    assert connect.properties == ({0x11: 60, 0x21: 5} if level == MQTT_5 else {})


def _connect_body(**kwargs: object) -> tuple[int, bytes]:
    _, flags, body = _split(cc.connect("c", **kwargs))  # type: ignore[arg-type]
    return flags, body


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"flags_extra": 0x01}, MalformedPacket),  # reserved flag
        ({"flags_extra": 0x18}, MalformedPacket),  # will QoS 3 without a will
        ({"flags_extra": 0x20}, MalformedPacket),  # will retain without a will
        ({"flags_extra": 0x40}, MalformedPacket),  # 3.1.1 password without user name
        ({"level": 3}, UnsupportedVersion),
        ({"level": 6}, UnsupportedVersion),
        ({"level": MQTT_5, "props": [(0x21, 0)]}, ProtocolError),  # receive maximum 0
        ({"level": MQTT_5, "props": [(0x27, 0)]}, ProtocolError),  # max packet size 0
        ({"level": MQTT_5, "props": [(0x17, 2)]}, ProtocolError),
        ({"level": MQTT_5, "props": [(0x23, 1)]}, MalformedPacket),  # not a CONNECT prop
        ({"will": ("a/+", b"x", 0, False)}, MalformedPacket),  # wildcard will topic
    ],
)
def test_connects_breaking_a_rule_are_refused(kwargs: dict[str, object], error: type) -> None:
    flags, body = _connect_body(**kwargs)
    with pytest.raises(error):
        decode_connect(flags, body)


def test_a_connect_with_will_qos_3_is_malformed() -> None:
    flags, body = _connect_body(will=("t", b"x", 3, False))
    with pytest.raises(MalformedPacket, match="QoS 3"):
        decode_connect(flags, body)


def test_a_connect_with_an_unknown_protocol_name_or_trailing_bytes_is_malformed() -> None:
    flags, body = _connect_body()
    with pytest.raises(MalformedPacket, match="protocol name"):
        decode_connect(flags, b"\x00\x04MQTX" + body[6:])
    with pytest.raises(MalformedPacket, match="unexpected bytes"):
        decode_connect(flags, body + b"\x00")
    with pytest.raises(MalformedPacket, match="flags"):
        decode_connect(0x02, body)


@pytest.mark.parametrize("level", [MQTT_311, MQTT_5])
def test_every_truncation_of_a_connect_is_malformed(level: int) -> None:
    flags, body = _connect_body(level=level, username="u", password="p", will=("w", b"x", 1, False))
    for cut in range(len(body)):
        with pytest.raises(MalformedPacket):
            decode_connect(flags, body[:cut])


# ------------------------------------------------------------------ PUBLISH
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("v5", [False, True])
def test_a_publish_round_trips_and_keeps_the_wire_topic_as_the_frame_prefix(
    qos: int, v5: bool
) -> None:
    p = _publish(
        cc.publish("sensors/t1", b"{}", qos=qos, packet_id=9 if qos else 0, v5=v5, dup=qos > 0),
        v5,
    )
    assert (p.qos, p.dup, p.retain, p.packet_id, p.alias) == (qos, qos > 0, False, 9 * bool(qos), 0)
    assert p.topic_field == b"\x00\x0asensors/t1"
    assert p.message == b"{}"


def test_a_v5_publish_carries_its_topic_alias() -> None:
    p = _publish(cc.publish("", b"m", qos=1, packet_id=1, v5=True, props=[(0x23, 3)]), True)
    assert (p.topic_field, p.alias, p.message) == (b"\x00\x00", 3, b"m")


@pytest.mark.parametrize(
    ("packet", "v5", "error"),
    [
        (cc.publish("t", b"m", qos=3, packet_id=1), False, MalformedPacket),
        (cc.publish("t", b"m", qos=0, dup=True), False, MalformedPacket),
        (cc.publish("t", b"m", qos=1, packet_id=0), False, MalformedPacket),
        (cc.publish("a/+/c", b"m"), False, MalformedPacket),
        (cc.publish("a/#", b"m"), False, MalformedPacket),
        (cc.publish("a\x00b", b"m"), False, MalformedPacket),
        (cc.publish(b"a\xffb", b"m"), False, MalformedPacket),
        (cc.publish("", b"m"), False, MalformedPacket),
        (cc.publish("", b"m", v5=True), True, ProtocolError),
        (cc.publish("t", b"m", v5=True, props=[(0x0B, 1)]), True, ProtocolError),
        (cc.publish("t", b"m", v5=True, props=[(0x08, "r/#")]), True, MalformedPacket),
        (cc.publish("t", b"m", v5=True, props=[(0x11, 1)]), True, MalformedPacket),
    ],
    ids=[
        "QoS 3",
        "DUP on QoS 0",
        "packet id 0",
        "single-level wildcard",
        "multi-level wildcard",
        "NUL in topic",
        "invalid UTF-8 topic",
        "empty topic 3.1.1",
        "empty topic without alias",
        "subscription identifier",
        "wildcard response topic",
        "CONNECT property in PUBLISH",
    ],
)
def test_publishes_breaking_a_rule_are_refused(packet: bytes, v5: bool, error: type) -> None:
    _, flags, body = _split(packet)
    with pytest.raises(error):
        decode_publish(flags, body, v5)


@pytest.mark.parametrize("v5", [False, True])
def test_every_truncation_of_a_publish_header_is_malformed(v5: bool) -> None:
    _, flags, body = _split(cc.publish("sensors/a", b"", qos=1, packet_id=5, v5=v5))
    for cut in range(len(body)):
        with pytest.raises(MalformedPacket):
            decode_publish(flags, body[:cut], v5)


# ------------------------------------------------------ other client packets
def test_pubrel_is_decoded_and_its_rules_checked() -> None:
    _, flags, body = _split(cc.pubrel(77))
    assert decode_pubrel(flags, body, False) == 77
    assert decode_pubrel(flags, body + b"\x92\x00", True) == 77
    for bad_flags, bad_body, v5 in [
        (0, body, False),
        (flags, b"\x00\x00", False),
        (flags, body + b"\x00", False),
        (flags, body + b"\x10", True),
        (flags, body[:1], False),
    ]:
        with pytest.raises(MalformedPacket):
            decode_pubrel(bad_flags, bad_body, v5)


@pytest.mark.parametrize("v5", [False, True])
def test_subscribe_is_decoded_and_its_rules_checked(v5: bool) -> None:
    _, flags, body = _split(cc.subscribe(3, [("a/b", 1), ("c/#", 0)], v5=v5))
    sub = decode_subscribe(flags, body, v5)
    assert (sub.packet_id, sub.filters, sub.has_subscription_id) == (3, ("a/b", "c/#"), False)
    with pytest.raises(MalformedPacket):
        decode_subscribe(0, body, v5)
    with pytest.raises(ProtocolError):
        decode_subscribe(flags, body[: 3 if v5 else 2], v5)  # no topic filter
    _, flags, body = _split(cc.subscribe(3, [("a", 3)], v5=v5))
    with pytest.raises(MalformedPacket):
        decode_subscribe(flags, body, v5)  # QoS 3


def test_subscribe_reasons_name_what_is_not_supported() -> None:
    assert [subscribe_reason(f) for f in ("a/b", "a/+", "$share/g/a", "")] == [
        0x87,
        0xA2,
        0x9E,
        0x8F,
    ]


def test_unsubscribe_counts_its_filters_and_refuses_none() -> None:
    _, flags, body = _split(cc.unsubscribe(4, ["a", "b/#"], v5=True))
    assert decode_unsubscribe(flags, body, True) == (4, 2)
    with pytest.raises(ProtocolError):
        decode_unsubscribe(flags, body[:3], True)


def test_disconnect_and_pingreq_bodies_are_checked() -> None:
    assert decode_disconnect(0, b"", False) == 0
    assert decode_disconnect(0, b"\x04", True) == 4
    with pytest.raises(MalformedPacket):
        decode_disconnect(0, b"\x00", False)
    with pytest.raises(MalformedPacket):
        decode_disconnect(1, b"", True)
    check_pingreq(0, b"")
    with pytest.raises(MalformedPacket):
        check_pingreq(0, b"\x00")


# ------------------------------------------------------------- encoders
def test_server_packets_decode_with_the_client_codec() -> None:
    buffer = bytearray(
        encode_connack(True, 0, [(0x21, 10), (0x24, 1), (0x12, "auto-1")])
        + encode_connack(False, 5)
        + encode_puback(1)
        + encode_pubrec(2)
        + encode_pubcomp(3, 0x92)
        + encode_suback(4, [0x87, 0xA2], True)
        + encode_unsuback(5, 2, True)
        + encode_unsuback(6, 1, False)
        + encode_disconnect(0x8B)
    )
    packets = cc.split_packets(buffer)
    assert not buffer
    assert [p.type for p in packets] == [2, 2, 4, 5, 7, 9, 11, 11, 14]
    ack = cc.decode_connack(packets[0].body, True)
    assert (ack.code, ack.props) == (0, {0x21: 10, 0x24: 1, 0x12: "auto-1"})
    assert cc.decode_connack(packets[1].body, False).code == 5
    assert [cc.decode_ack(p.body) for p in packets[2:5]] == [(1, 0), (2, 0), (3, 0x92)]
    assert cc.decode_suback(packets[5].body, True) == (4, [0x87, 0xA2])
    assert packets[6].body == b"\x00\x05\x00\x11\x11"
    assert packets[7].body == b"\x00\x06"
    assert cc.decode_disconnect_reason(packets[8].body) == 0x8B


def test_mqtt_errors_carry_their_reason_codes() -> None:
    assert MalformedPacket("x").reason_code == 0x81
    assert ProtocolError("x").reason_code == 0x82
    assert MqttError("x", 0x95).reason_code == 0x95
