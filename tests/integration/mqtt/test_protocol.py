"""The MQTT protocol layer over raw sockets against one node: CONNACK terms, acks only
after fsync and in order, QoS 2 exactly once per connection, refusals with their v5
reason codes, topic aliases, limits, and config changes applied without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ingest.mqtt import client_codec as cc
from ingest.settings import MqttSettings

from .support import RawClient, Stack, mqtt_stack
from .walwatch import Gate, frames_of, recording

pytestmark = pytest.mark.asyncio(loop_scope="module")
SETTINGS = MqttSettings(
    max_packet_bytes=4096,
    receive_maximum=4,
    topic_alias_max=4,
    connect_timeout_s=0.5,
    drain_ack_wait_s=1.0,
    tick_s=0.05,
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with mqtt_stack(tmp_path_factory.mktemp("protocol"), mqtt=SETTINGS) as s:
        yield s


async def _closed_with(client: RawClient, reason: int | None) -> None:
    """The server closes the connection; v5: right after DISCONNECT `reason`."""
    packets = await client.until_closed()
    if reason is None:
        assert all(p.type != 14 for p in packets), packets
    else:
        assert packets, "closed without a DISCONNECT"
        assert packets[-1].type == 14, packets
        assert cc.decode_disconnect_reason(packets[-1].body) == reason, packets
    await client.close()


async def _connect(stack: Stack, *, v5: bool, **kwargs: object) -> cc.ConnAck:
    client = await RawClient.open("127.0.0.1", stack.port, v5=v5)
    kwargs.setdefault("password", stack.cp.api_key)
    try:
        return await client.connect(**kwargs)
    finally:
        await client.close()


# --------------------------------------------------------------- CONNECT
async def test_a_v5_connack_states_the_servers_terms(stack: Stack) -> None:
    endpoint = await stack.new_endpoint(qos_max=1, keepalive_max_s=120)
    ack = await _connect(
        stack,
        v5=True,
        client_id="",
        username=f"dev@{endpoint}",
        clean_start=False,
        keepalive_s=0,
        props=[(0x11, 3600)],
    )
    assert (ack.code, ack.session_present) == (0, False)
    props = dict(ack.props)
    assert str(props.pop(0x12)).startswith("auto-")  # assigned client identifier
    assert props == {
        0x21: 4,  # Receive Maximum
        0x22: 4,  # Topic Alias Maximum
        0x25: 0,  # Retain Available
        0x27: 4096,  # Maximum Packet Size
        0x28: 0,  # Wildcard Subscription Available
        0x29: 0,  # Subscription Identifiers Available
        0x2A: 0,  # Shared Subscription Available
        0x13: 120,  # Server Keep Alive: the client asked for none, the endpoint caps it
        0x24: 1,  # Maximum QoS
        0x11: 0,  # Session Expiry: sessions are not kept
    }


@pytest.mark.parametrize(
    ("v5", "kwargs", "code"),
    [
        (False, {"password": "emq_live_" + "x" * 32}, 4),
        (True, {"password": "emq_live_" + "x" * 32}, 0x86),
        (True, {"password": None}, 0x86),
        (True, {"password": "not-a-jwt"}, 0x86),
        (False, {"client_id": "", "clean_start": False}, 2),
        (True, {"props": [(0x15, "SCRAM-SHA-1")]}, 0x8C),
        (True, {"will": ("status/x", b"gone", 0, True)}, 0x9A),
        (False, {"username": "dev@no-such-endpoint"}, 5),
        (True, {"username": "dev@no-such-endpoint"}, 0x87),
        (False, {"level": 3}, 1),
    ],
    ids=[
        "3.1.1 unknown key",
        "5.0 unknown key",
        "no password",
        "garbage token",
        "empty client id without clean session",
        "enhanced auth",
        "retained will",
        "3.1.1 unknown endpoint",
        "5.0 unknown endpoint",
        "MQTT 3.1",
    ],
)
async def test_refused_connects_get_the_documented_code(
    stack: Stack, v5: bool, kwargs: dict[str, object], code: int
) -> None:
    kwargs.setdefault("username", f"dev@{stack.endpoint_id}")
    ack = await _connect(stack, v5=v5, **kwargs)
    assert ack.code == code


async def test_an_ingest_jwt_is_a_password_and_other_scopes_are_not_authorized(
    stack: Stack,
) -> None:
    user = f"dev@{stack.endpoint_id}"
    ingest = await stack.cp.token("ingest")
    assert (await _connect(stack, v5=True, username=user, password=ingest)).code == 0
    admin = await stack.cp.token("admin")
    assert (await _connect(stack, v5=True, username=user, password=admin)).code == 0x87


async def test_without_an_endpoint_name_several_mqtt_endpoints_are_ambiguous(
    stack: Stack,
) -> None:
    assert (await _connect(stack, v5=True, username="plain-device")).code == 0x87


# --------------------------------------------------------------- PUBLISH
@pytest.mark.parametrize("v5", [False, True])
async def test_acks_leave_only_after_the_fsync_and_in_arrival_order(stack: Stack, v5: bool) -> None:
    wal = await stack.wal()
    client = await stack.raw(v5=v5, username=f"dev@{stack.endpoint_id}")
    with Gate(wal) as gate:
        await client.send(
            cc.publish("sensors/o", b"1", qos=1, packet_id=11, v5=v5)
            + cc.publish("sensors/o", b"2", qos=2, packet_id=12, v5=v5)
            + cc.publish("sensors/o", b"3", qos=1, packet_id=13, v5=v5)
            + cc.PINGREQ
        )
        first = await client.packet()
        assert first is not None
        assert first.type == 13, "the PINGRESP overtakes acks whose fsync is held back"
        assert gate.appends >= 1
        gate.open()
        acks = [await client.packet() for _ in range(3)]
    assert [(p.type, cc.decode_ack(p.body)) for p in acks if p] == [
        (4, (11, 0)),
        (5, (12, 0)),
        (4, (13, 0)),
    ]
    await client.send(cc.pubrel(12))
    comp = await client.packet()
    assert comp is not None
    assert (comp.type, cc.decode_ack(comp.body)) == (7, (12, 0))
    await client.close()


async def test_a_qos2_resend_before_pubrel_is_appended_once(stack: Stack) -> None:
    wal = await stack.wal()
    client = await stack.raw(v5=True, username=f"dev@{stack.endpoint_id}")
    with recording(wal) as chunks:
        message = cc.publish("sensors/q2", b"once", qos=2, packet_id=7, v5=True)
        resend = cc.publish("sensors/q2", b"once", qos=2, packet_id=7, dup=True, v5=True)
        for packet in (message, resend):
            await client.send(packet)
            rec = await client.packet()
            assert rec is not None
            assert (rec.type, cc.decode_ack(rec.body)) == (5, (7, 0))
        await client.send(cc.pubrel(7) + cc.pubrel(8))
        comps = [await client.packet(), await client.packet()]
        assert [cc.decode_ack(p.body) for p in comps if p] == [(7, 0), (8, 0x92)]
    assert frames_of(chunks) == [("sensors/q2", b"once")]
    await client.close()


async def test_a_dup_qos1_resend_of_a_message_still_owed_is_acked_but_not_appended(
    stack: Stack,
) -> None:
    wal = await stack.wal()
    client = await stack.raw(username=f"dev@{stack.endpoint_id}")
    with recording(wal) as chunks, Gate(wal) as gate:
        await client.send(cc.publish("sensors/d", b"m", qos=1, packet_id=5))
        await client.send(cc.publish("sensors/d", b"m", qos=1, packet_id=5, dup=True))
        await client.send(cc.PINGREQ)
        assert (await client.packet()) == cc.Packet(13, 0, b"")
        gate.open()
        acks = [await client.packet(), await client.packet()]
    assert [cc.decode_ack(p.body) for p in acks if p] == [(5, 0), (5, 0)]
    assert frames_of(chunks) == [("sensors/d", b"m")]
    await client.close()


async def test_topic_aliases_map_an_empty_topic_to_the_aliased_one(stack: Stack) -> None:
    wal = await stack.wal()
    client = await stack.raw(v5=True, username=f"dev@{stack.endpoint_id}")
    with recording(wal) as chunks:
        await client.send(
            cc.publish("sensors/alias", b"a", qos=1, packet_id=1, v5=True, props=[(0x23, 2)])
            + cc.publish("", b"b", qos=1, packet_id=2, v5=True, props=[(0x23, 2)])
        )
        acks = [await client.packet(), await client.packet()]
        assert [cc.decode_ack(p.body) for p in acks if p] == [(1, 0), (2, 0)]
        await client.send(cc.publish("", b"c", v5=True, props=[(0x23, 3)]))
        await _closed_with(client, 0x82)  # alias 3 was never set
    assert frames_of(chunks) == [("sensors/alias", b"a"), ("sensors/alias", b"b")]


@pytest.mark.parametrize(
    ("v5", "packet", "reason"),
    [
        (True, cc.publish("t", b"x", v5=True, props=[(0x23, 5)]), 0x94),
        (True, cc.publish("t", b"x" * 5000, v5=True), 0x95),
        (False, cc.publish("t", b"x" * 5000), None),
        (True, cc.publish("t", b"x", v5=True, retain=True), 0x9A),
        (True, cc.publish("t", b"x", qos=3, packet_id=1, v5=True), 0x81),
        (False, cc.publish("t/+", b"x"), None),
        (True, cc.subscribe(1, [("a", 0)], v5=True, props=[(0x0B, 1)]), 0xA1),
        (True, cc.connect("again", level=5), 0x82),
        (True, b"\x40\x02\x00\x01", 0x82),  # PUBACK: the server never sent a PUBLISH
        (True, b"\xf0\x00", 0x82),  # AUTH without an authentication method
    ],
    ids=[
        "topic alias above the maximum",
        "5.0 packet too large",
        "3.1.1 packet too large",
        "5.0 retain",
        "QoS 3",
        "wildcard topic",
        "subscription identifier",
        "second CONNECT",
        "PUBACK from a client",
        "AUTH",
    ],
)
async def test_a_refused_packet_disconnects_with_its_reason_and_writes_nothing(
    stack: Stack, v5: bool, packet: bytes, reason: int | None
) -> None:
    wal = await stack.wal()
    client = await stack.raw(v5=v5, username=f"dev@{stack.endpoint_id}")
    with recording(wal) as chunks:
        await client.send(packet)
        await _closed_with(client, reason)
    assert chunks == []


@pytest.mark.parametrize("v5", [False, True])
async def test_a_publish_above_the_endpoints_qos_max_is_refused(stack: Stack, v5: bool) -> None:
    endpoint = await stack.new_endpoint(qos_max=0)
    wal = await stack.wal(endpoint)
    client = await stack.raw(v5=v5, username=f"dev@{endpoint}")
    with recording(wal) as chunks:
        await client.send(cc.publish("t", b"q1", qos=1, packet_id=1, v5=v5))
        await _closed_with(client, 0x9B if v5 else None)
    assert chunks == []


async def test_a_v5_client_exceeding_the_receive_maximum_is_disconnected(stack: Stack) -> None:
    wal = await stack.wal()
    client = await stack.raw(v5=True, username=f"dev@{stack.endpoint_id}")
    with Gate(wal):
        await client.send(
            b"".join(cc.publish("t", b"m", qos=1, packet_id=i, v5=True) for i in range(1, 6))
        )
        await _closed_with(client, 0x93)


async def test_a_311_pipeliner_beyond_the_inflight_bound_is_paused_then_served_in_order(
    stack: Stack,
) -> None:
    wal = await stack.wal()
    client = await stack.raw(username=f"dev@{stack.endpoint_id}")
    ids = list(range(1, 41))
    with recording(wal) as chunks, Gate(wal) as gate:
        await client.send(b"".join(cc.publish("t/p", b"%d" % i, qos=1, packet_id=i) for i in ids))
        await client.send(cc.PINGREQ)
        first = await client.packet()
        assert first is not None
        assert first.type == 4 or first.type == 13
        gate.open()
        acked = [] if first.type == 13 else [cc.decode_ack(first.body)[0]]
        while len(acked) < len(ids):
            packet = await client.packet()
            assert packet is not None
            if packet.type == 4:
                acked.append(cc.decode_ack(packet.body)[0])
    assert acked == ids
    assert [m for _, m in frames_of(chunks)] == [b"%d" % i for i in ids]
    await client.close()


async def test_subscribe_is_refused_and_unsubscribe_answered(stack: Stack) -> None:
    for v5, codes in ((False, [0x80, 0x80, 0x80]), (True, [0x87, 0xA2, 0x9E])):
        client = await stack.raw(v5=v5, username=f"dev@{stack.endpoint_id}")
        filters = [("a/b", 1), ("a/#", 0), ("$share/g/a", 0)]
        await client.send(cc.subscribe(9, filters, v5=v5) + cc.unsubscribe(10, ["a", "b"], v5=v5))
        suback, unsuback = await client.packet(), await client.packet()
        assert suback is not None
        assert unsuback is not None
        assert cc.decode_suback(suback.body, v5) == (9, codes)
        assert unsuback.type == 11
        assert unsuback.body == (b"\x00\x0a\x00\x11\x11" if v5 else b"\x00\x0a")
        await client.send(cc.PINGREQ)
        assert (await client.packet()) == cc.Packet(13, 0, b"")
        await client.close()


async def test_qos0_messages_before_a_disconnect_and_a_will_that_is_never_published(
    stack: Stack,
) -> None:
    wal = await stack.wal()
    client = await RawClient.open("127.0.0.1", stack.port)
    with recording(wal) as chunks:
        await client.send(
            cc.connect(
                "willing",
                username=f"dev@{stack.endpoint_id}",
                password=stack.cp.api_key,
                will=("status/willing", b"offline", 1, False),
            )
            + cc.publish("sensors/q0", b"a")
            + cc.publish("sensors/q0", b"b")
            + cc.disconnect()
        )
        packets = await client.until_closed()
        assert [p.type for p in packets] == [2]
        client2 = await stack.raw(
            client_id="w2",
            username=f"dev@{stack.endpoint_id}",
            will=("status/w2", b"offline", 0, False),
        )
        client2.writer.transport.abort()  # vanish without DISCONNECT: the will is dropped
    assert frames_of(chunks) == [("sensors/q0", b"a"), ("sensors/q0", b"b")]
    await client.close()


# ------------------------------------------------------- limits and config
async def test_max_connections_counts_per_node_and_a_same_client_id_takes_over(
    stack: Stack,
) -> None:
    endpoint = await stack.new_endpoint(max_connections=1)
    user = f"dev@{endpoint}"
    first = await stack.raw(v5=True, client_id="c1", username=user)
    assert (await _connect(stack, v5=True, client_id="c2", username=user)).code == 0x97
    assert (await _connect(stack, v5=False, client_id="c2", username=user)).code == 3
    second = await stack.raw(v5=True, client_id="c1", username=user)
    await _closed_with(first, 0x8E)
    await second.send(cc.PINGREQ)
    assert (await second.packet()) == cc.Packet(13, 0, b"")
    await second.close()


async def test_config_changes_reach_live_sessions_without_a_restart(stack: Stack) -> None:
    endpoint = await stack.new_endpoint(off=True)
    user = f"dev@{endpoint}"
    assert (await _connect(stack, v5=True, username=user)).code == 0x87  # MQTT off
    await stack.patch_endpoint(endpoint, {"qos_max": 1})
    client = await stack.raw(v5=True, username=user)
    assert await client.publish_acked("t", [b"1"]) == [1]
    await stack.patch_endpoint(endpoint, {"qos_max": 0})
    for pid in range(2, 1000):  # the session applies the change at its next tick
        await client.send(cc.publish("t", b"%d" % pid, qos=1, packet_id=pid, v5=True))
        packet = await client.packet()
        assert packet is not None
        if packet.type == 14:
            assert cc.decode_disconnect_reason(packet.body) == 0x9B
            break
        assert packet.type == 4
    else:
        raise AssertionError("QoS 1 still accepted after qos_max became 0")
    await client.close()
    other = await stack.raw(v5=True, client_id="o", username=user)
    await stack.patch_endpoint(endpoint, None)  # MQTT disabled: live sessions end
    await _closed_with(other, 0x87)


async def test_an_idle_client_is_dropped_after_one_and_a_half_keep_alives(stack: Stack) -> None:
    endpoint = await stack.new_endpoint(keepalive_max_s=1)
    client = await stack.raw(v5=True, username=f"dev@{endpoint}", keepalive_s=0)
    started = time.monotonic()
    await _closed_with(client, 0x8D)
    assert 1.4 < time.monotonic() - started < 5


async def test_a_socket_that_does_not_connect_in_time_is_closed(stack: Stack) -> None:
    client = await RawClient.open("127.0.0.1", stack.port)
    await client.send(cc.connect("slow", username="u", password="p")[:5])
    assert await client.until_closed() == []
    await client.close()


async def test_a_session_on_an_expiring_token_ends_at_expiry_with_not_authorized(
    stack: Stack,
) -> None:
    answer = await stack.cp.call(
        "POST",
        "/v1/token/exchange",
        {"api_key": stack.cp.api_key, "scope": "ingest", "ttl": "2s"},
        auth=False,
    )
    client = await stack.raw(
        v5=True, username=f"dev@{stack.endpoint_id}", password=answer["access_token"]
    )
    assert await client.publish_acked("t", [b"before expiry"]) == [1]
    await _closed_with(client, 0x87)
    late = await asyncio.wait_for(
        _connect(
            stack, v5=True, username=f"dev@{stack.endpoint_id}", password=answer["access_token"]
        ),
        10,
    )
    assert late.code == 0x86


@pytest.mark.parametrize("v5", [False, True])
async def test_packets_trickling_in_a_byte_at_a_time_are_parsed_once_whole(
    stack: Stack, v5: bool
) -> None:
    wal = await stack.wal()
    client = await stack.raw(v5=v5, username=f"dev@{stack.endpoint_id}")
    stream = cc.publish("sensors/slow", b"s" * 300, qos=1, packet_id=1, v5=v5) + cc.publish(
        "sensors/slow", b"t", qos=2, packet_id=2, v5=v5
    )
    with recording(wal) as chunks:
        for i in range(len(stream)):
            await client.send(stream[i : i + 1])
        first, second = await client.packet(), await client.packet()
        assert first is not None
        assert second is not None
        assert [
            (first.type, cc.decode_ack(first.body)),
            (second.type, cc.decode_ack(second.body)),
        ] == [
            (4, (1, 0)),
            (5, (2, 0)),
        ]
    assert frames_of(chunks) == [("sensors/slow", b"s" * 300), ("sensors/slow", b"t")]
    await client.close()
