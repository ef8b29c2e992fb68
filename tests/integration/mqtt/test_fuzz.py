"""Malformed MQTT over raw sockets (Hypothesis): bad remaining lengths, QoS 3, wildcard
topics, packet id 0, invalid UTF-8, PUBLISH before CONNECT, a second CONNECT, bad v5
property lengths. Each offender is disconnected (never acknowledged), writes nothing to
its endpoint's WAL, and a bystander connected all along keeps publishing.

The node runs on its own event loop in a thread so the Hypothesis test can drive
blocking sockets. Examples are derandomized: a failure reproduces on every run.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest.mqtt import client_codec as cc
from ingest.mqtt.codec import U16, encode_varint
from ingest.settings import MqttSettings

from .support import Stack, mqtt_stack
from .walwatch import recording

MAX_PACKET = 4096
VICTIM_TIMEOUT_S = 3.0


@dataclass
class Case:
    name: str
    v5: bool
    connect_first: bool
    data: bytes
    split: int


@dataclass
class Background:
    stack: Stack
    victim_appends: list[bytes]
    bystander: socket.socket
    bystander_buffer: bytearray
    next_id: list[int]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """A node on a loop in a thread; the victims' endpoint WAL is recorded."""
    ready, done = threading.Event(), threading.Event()
    shared: dict[str, Any] = {}

    async def main() -> None:
        settings = MqttSettings(max_packet_bytes=MAX_PACKET, tick_s=0.1, connect_timeout_s=5)
        tmp = tmp_path_factory.mktemp("fuzz")
        async with mqtt_stack(Path(tmp), mqtt=settings, endpoints=2) as stack:
            stop = asyncio.Event()
            wal = await stack.wal()
            with recording(wal) as chunks:
                shared.update(
                    stack=stack, chunks=chunks, stop=stop, loop=asyncio.get_running_loop()
                )
                ready.set()
                await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as err:  # surfaced by the fixture below
            shared["error"] = err
        finally:
            ready.set()
            done.set()

    thread = threading.Thread(target=run, name="fuzz-node", daemon=True)
    thread.start()
    assert ready.wait(60), "node did not start"
    if "error" in shared:
        raise shared["error"]
    stack: Stack = shared["stack"]
    bystander = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    buffer = bytearray()
    bystander.sendall(
        cc.connect("bystander", username=f"b@{stack.extra[0]['id']}", password=stack.cp.api_key)
    )
    assert _read_packet(bystander, buffer).type == 2
    try:
        yield Background(stack, shared["chunks"], bystander, buffer, [1])
    finally:
        bystander.close()
        shared["loop"].call_soon_threadsafe(shared["stop"].set)
        assert done.wait(60), "node did not stop"
        thread.join(10)
        if "error" in shared:
            raise shared["error"]


def _read_packet(sock: socket.socket, buffer: bytearray) -> cc.Packet:
    while True:
        packets = cc.split_packets(buffer)
        if packets:
            assert len(packets) == 1, packets
            return packets[0]
        chunk = sock.recv(65536)
        assert chunk, "the bystander was disconnected"
        buffer += chunk


def _until_closed(sock: socket.socket) -> tuple[list[cc.Packet], bool]:
    """What the server sent, and whether it closed the connection (within the timeout)."""
    buffer = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            return cc.split_packets(buffer), False
        if not chunk:
            return cc.split_packets(buffer), True
        buffer += chunk


# ------------------------------------------------------------- strategies
TOPIC = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="+#\x00"),
    min_size=1,
    max_size=24,
)
PACKET_ID = st.integers(1, 0xFFFF)
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]


@st.composite
def bad_remaining_length(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["5 bytes", "not minimal", "too large", "short", "trailing"]))
    first = draw(st.sampled_from([0x30, 0x32, 0x62, 0xC0, 0xE0]))
    if kind == "5 bytes":
        more = draw(st.lists(st.integers(0x80, 0xFF), min_size=4, max_size=4))
        return kind, bytes([first, *more, 0x01]) + b"\x00" * 8
    if kind == "not minimal":
        value = draw(st.integers(0, 127))
        return kind, bytes([first, value | 0x80, 0x00]) + b"\x00" * value
    if kind == "too large":
        return kind, bytes([first]) + encode_varint(draw(st.integers(MAX_PACKET + 1, 1 << 27)))
    if kind == "short":  # the topic length runs past the remaining length
        topic = draw(TOPIC).encode()
        cut = draw(st.integers(0, len(topic) - 1))
        body = U16.pack(len(topic)) + topic[:cut]
        return kind, bytes([0x30]) + encode_varint(len(body)) + body
    junk = draw(st.binary(min_size=1, max_size=8))  # a PINGREQ with a body
    return kind, b"\xc0" + encode_varint(len(junk)) + junk


@st.composite
def bad_publish(draw: st.DrawFn, v5: bool) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["qos 3", "wildcard", "packet id 0", "utf-8"]))
    topic, message = draw(TOPIC), draw(st.binary(max_size=32))
    if kind == "qos 3":
        return kind, cc.publish(topic, message, qos=3, packet_id=draw(PACKET_ID), v5=v5)
    if kind == "packet id 0":
        return kind, cc.publish(topic, message, qos=draw(st.sampled_from([1, 2])), v5=v5)
    qos = draw(st.integers(0, 2))
    pid = draw(PACKET_ID) if qos else 0
    at = draw(st.integers(0, len(topic)))
    if kind == "wildcard":
        bad = topic[:at] + draw(st.sampled_from(["+", "#", "/#", "+/"])) + topic[at:]
        return kind, cc.publish(bad, message, qos=qos, packet_id=pid, v5=v5)
    raw = topic.encode()
    bad_raw = raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    return kind, cc.publish(bad_raw, message, qos=qos, packet_id=pid, v5=v5)


@st.composite
def bad_properties(draw: st.DrawFn) -> tuple[str, bytes]:
    topic = draw(TOPIC).encode()
    qos = draw(st.integers(0, 2))
    head = U16.pack(len(topic)) + topic + (U16.pack(draw(PACKET_ID)) if qos else b"")
    kind = draw(st.sampled_from(["past the end", "unknown id", "cut value", "twice", "sub id"]))
    message = draw(st.binary(max_size=16))
    if kind == "past the end":
        props = encode_varint(len(message) + draw(st.integers(1, 300))) + message
    elif kind == "unknown id":
        ident = draw(st.sampled_from([0x00, 0x04, 0x7F, 0x11, 0x27, 0x21]))
        props = b"\x02" + bytes([ident, 0x01])
    elif kind == "cut value":
        props = b"\x02\x23\x00" + message  # a u16 Topic Alias with one byte
    elif kind == "twice":
        props = b"\x06\x23\x00\x01\x23\x00\x01" + message
    else:
        props = b"\x02\x0b\x01" + message
    body = head + props
    return kind, bytes([0x30 | qos << 1]) + encode_varint(len(body)) + body


@st.composite
def cases(draw: st.DrawFn) -> Case:
    v5 = draw(st.booleans())
    which = draw(st.sampled_from(["length", "publish", "properties", "early", "second"]))
    connect_first = True
    if which == "length":
        name, data = draw(bad_remaining_length())
    elif which == "publish":
        name, data = draw(bad_publish(v5))
    elif which == "properties":
        v5, (name, data) = True, draw(bad_properties())
    elif which == "early":  # a perfectly good PUBLISH, but before CONNECT
        connect_first, name = False, "publish before connect"
        data = cc.publish(draw(TOPIC), b"x", qos=1, packet_id=draw(PACKET_ID), v5=v5)
    else:
        name, data = "second connect", cc.connect("again", level=5 if v5 else 4)
    return Case(f"{which}: {name}", v5, connect_first, data, draw(st.integers(0, len(data))))


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_a_malformed_packet_disconnects_only_its_sender_and_writes_nothing(
    node: Background, case: Case
) -> None:
    event(case.name)
    stack = node.stack
    appends_before = len(node.victim_appends)
    victim = socket.create_connection(("127.0.0.1", stack.port), timeout=VICTIM_TIMEOUT_S)
    try:
        stream, split = case.data, case.split
        if case.connect_first:
            connect = cc.connect(
                "victim",
                level=5 if case.v5 else 4,
                username=f"v@{stack.endpoint_id}",
                password=stack.cp.api_key,
            )
            stream, split = connect + stream, split + len(connect)
        victim.sendall(stream[:split])
        if split < len(stream):
            victim.sendall(stream[split:])
        packets, closed = _until_closed(victim)
    finally:
        victim.close()
    assert closed, f"{case.name}: the offender was not disconnected"
    types = [p.type for p in packets]
    assert types in ([], [2], [2, 14]), (case.name, packets)
    assert len(node.victim_appends) == appends_before, f"{case.name} wrote to the WAL"
    # The bystander, connected all along, is served as before.
    pid = node.next_id[0] = node.next_id[0] % 0xFFFF + 1
    node.bystander.sendall(cc.publish("bystander", b"ok", qos=1, packet_id=pid))
    ack = _read_packet(node.bystander, node.bystander_buffer)
    assert (ack.type, cc.decode_ack(ack.body)) == (4, (pid, 0)), case.name
