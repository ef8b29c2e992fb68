"""The fused PUBLISH fast path against the reference path (`Publisher.publish` for every
PUBLISH): the same seeded packet streams, cut at random points into reads, go through a
session with the fast path and one without. The WAL appends (bytes and frame counts),
everything written to the client, reading paused/resumed, the metrics counts, how and
why the session ended and the publisher's ack state must be identical.

The session runs against small fakes (transport, listener, WAL): real sessions and
publishers, no sockets, so thousands of streams take seconds. Each stream mixes
fast-path packets (QoS 0/1, 3.1.1 and v5 without properties) with packets that must
fall back (QoS 2 + PUBREL, DUP, RETAIN, properties, topic aliases, long packets,
PINGREQ) and, at its end, sometimes one bad packet (every error the fast path could
misjudge) or a DISCONNECT; a second test overwrites a few random bytes of such streams.
Seed: EDGEMQ_TEST_SEED, else random (printed).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingest.mqtt import session as session_mod
from ingest.mqtt.publisher import Publisher
from ingest.mqtt.session import OPEN, MqttSession
from ingest.settings import MqttSettings
from wal import AppendAck

STREAMS = 600
U16 = struct.Struct(">H")


# ------------------------------------------------------------------- fakes
class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def time_ms(self) -> int:
        self.ms += 1
        return self.ms


class Admission:
    def __init__(self) -> None:
        self.inflight = 0

    def refuse_reason(self, wal: object, nbytes: int) -> str | None:
        return None

    def add_inflight(self, nbytes: int) -> None:
        self.inflight += nbytes

    def done_inflight(self, nbytes: int) -> None:
        self.inflight -= nbytes


@dataclass
class Listener:
    settings: MqttSettings
    clock: Clock = field(default_factory=Clock)
    admission: Admission = field(default_factory=Admission)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    publishes: int = 0

    def add(self, session: object) -> bool:
        return True

    def remove(self, session: object) -> None:
        self.events.append(("removed",))

    def count_packet(self, kind: int) -> None:
        self.events.append(("packet", kind))

    def count_publishes(self, n: int) -> None:
        self.publishes += n

    def refused(self, reason: str) -> None:
        self.events.append(("refused", reason))

    def disconnected(self, reason: str) -> None:
        self.events.append(("disconnected", reason))

    def held(self, reason: str) -> None:
        self.events.append(("held", reason))

    def durable(self, session: object, frames: int, nbytes: int, ack_s: float | None) -> None:
        self.events.append(("durable", frames, nbytes, ack_s is not None))


class Wal:
    def __init__(self) -> None:
        self.appends: list[tuple[bytes, int]] = []
        self.pending: list[asyncio.Future[AppendAck]] = []

    def append_encoded(self, data: bytes, frames: int) -> asyncio.Future[AppendAck]:
        assert data
        assert frames >= 1
        self.appends.append((data, frames))
        future: asyncio.Future[AppendAck] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future

    def make_durable(self, count: int) -> None:
        """The oldest `count` appends are fsynced (in order, as the WAL does)."""
        for future in self.pending[:count]:
            future.set_result(AppendAck(epoch=1, seq=1, offset=0, frames=1))
        del self.pending[:count]


@dataclass
class Runtime:
    wal: Wal


class Transport:
    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.log.append(("write", data))

    def close(self) -> None:
        self.closing = True
        self.log.append(("close", b""))

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.log.append(("pause", b""))

    def resume_reading(self) -> None:
        self.log.append(("resume", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


# ----------------------------------------------------------------- packets
def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def publish(
    topic: bytes,
    message: bytes,
    qos: int = 0,
    pid: int = 1,
    dup: bool = False,
    retain: bool = False,
    props: bytes | None = None,
) -> bytes:
    first = 0x30 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = U16.pack(len(topic)) + topic
    if qos:
        body += U16.pack(pid)
    if props is not None:
        body += varint(len(props)) + props
    return packet(first, body + message)


TOPICS = [b"sensors/bench/temp", b"a", b"sensors/\xc3\xa9t\xc3\xa9", b"x/y/z" * 20]
BAD: list[tuple[str, Callable[[bool, int], bytes]]] = [
    ("wildcard", lambda v5, pid: publish(b"a/+/b", b"m", 1, pid, props=b"" if v5 else None)),
    ("hash", lambda v5, pid: publish(b"a/#", b"m", 0, props=b"" if v5 else None)),
    ("utf8", lambda v5, pid: publish(b"bad\xff", b"m", 1, pid, props=b"" if v5 else None)),
    ("nul", lambda v5, pid: publish(b"a\x00b", b"m", 0, props=b"" if v5 else None)),
    ("empty topic", lambda v5, pid: publish(b"", b"m", 1, pid, props=b"" if v5 else None)),
    ("pid 0", lambda v5, pid: publish(b"a", b"m", 1, 0, props=b"" if v5 else None)),
    ("qos 3", lambda v5, pid: packet(0x36, U16.pack(1) + b"a" + U16.pack(pid) + b"m")),
    ("dup qos 0", lambda v5, pid: packet(0x38, U16.pack(1) + b"a" + b"m")),
    ("topic past end", lambda v5, pid: packet(0x30, U16.pack(9) + b"abc")),
    ("one byte body", lambda v5, pid: packet(0x30, b"\x00")),
    ("pid past end", lambda v5, pid: packet(0x32, U16.pack(1) + b"a" + b"\x01")),
    ("no property byte", lambda v5, pid: packet(0x30, U16.pack(1) + b"a")),
    ("bad property", lambda v5, pid: publish(b"a", b"m", 0, props=b"\x7f\x00")),
    ("subscription id", lambda v5, pid: publish(b"a", b"m", 0, props=b"\x0b\x01")),
    ("alias unknown", lambda v5, pid: publish(b"", b"m", 0, props=b"\x23\x00\x05")),
    ("alias too big", lambda v5, pid: publish(b"a", b"m", 0, props=b"\x23\x01\x00")),
    ("too large", lambda v5, pid: publish(b"a", b"m" * 700, 0, props=b"" if v5 else None)),
    ("puback", lambda v5, pid: packet(0x40, U16.pack(pid))),
    ("reserved type", lambda v5, pid: packet(0xF0, b"")),
    # A packet shorter than the topic field it starts with; the next bytes complete it.
    (
        "topic field cut",
        lambda v5, pid: (
            publish(b"a", b"m", 0, props=b"" if v5 else None) + packet(0x30, U16.pack(1)) + b"a\x00"
        ),
    ),
    ("qos 1 pid cut", lambda v5, pid: packet(0x32, U16.pack(1) + b"a" + b"\x01")),
]


def stream(rng: random.Random, v5: bool, qos_max: int) -> list[bytes]:
    """Packets of one connection (after CONNECT): mostly fast-path PUBLISHes. Packets
    the endpoint refuses (QoS above its maximum, unknown aliases) are rare, so most
    streams reach their end."""
    out: list[bytes] = []
    pid = rng.randrange(1, 0x10000)
    props = b"" if v5 else None
    topic = rng.choice(TOPICS)
    aliases: set[int] = set()

    def qos(top: int) -> int:
        return rng.randrange(top + 1) if rng.random() < 0.98 else rng.randrange(3)

    for _ in range(rng.randrange(1, 120)):
        pid = pid % 0xFFFF + 1
        if rng.random() < 0.1:
            topic = rng.choice(TOPICS)
        message = rng.randbytes(rng.choice((0, 1, 10, 200, 200, 200, 300)))
        roll = rng.random()
        if roll < 0.4:
            out.append(publish(topic, message, 0, props=props))
        elif roll < 0.75:
            out.append(publish(topic, message, qos(min(qos_max, 1)), pid, props=props))
        elif roll < 0.78:
            out.append(
                publish(topic, message, min(qos(qos_max), 1) or 1, pid, dup=True, props=props)
            )
        elif roll < 0.80 and not v5:
            out.append(publish(topic, message, qos(min(qos_max, 1)), pid, retain=True))
        elif roll < 0.84 and qos_max == 2:
            out.append(publish(topic, message, 2, pid, props=props))
            if rng.random() < 0.8:
                out.append(packet(0x62, U16.pack(pid)))  # PUBREL
        elif roll < 0.86:
            out.append(packet(0x62, U16.pack(pid)))  # PUBREL for an unknown id
        elif roll < 0.89 and v5:
            out.append(publish(topic, message, qos(qos_max), pid, props=b"\x01\x01"))
        elif roll < 0.92 and v5:
            alias = rng.randrange(1, 4)
            setting = alias not in aliases or rng.random() < 0.3
            if setting and rng.random() < 0.97:
                aliases.add(alias)
            prop = b"\x23" + U16.pack(alias)
            out.append(publish(topic if setting else b"", message, qos(qos_max), pid, props=prop))
        elif roll < 0.94:
            out.append(packet(0xC0, b""))  # PINGREQ
        elif roll < 0.96:
            big = rng.randbytes(rng.choice((16_400, 17_000)))  # a 3-byte length
            out.append(publish(topic, big, qos(qos_max), pid, props=props))
        else:
            out.append(publish(topic, message, qos(qos_max) or 1, pid, dup=True, props=props))
    ending = rng.random()
    if ending < 0.5:
        _name, make = rng.choice(BAD)
        out.append(make(v5, pid))
        if rng.random() < 0.5:
            out.append(publish(topic, b"after the error", 1, pid % 0xFFFF + 1, props=props))
    elif ending < 0.6:
        out.append(packet(0xE0, b"\x00\x00" if v5 else b""))  # DISCONNECT
    return out


def cuts(rng: random.Random, size: int) -> list[int]:
    count = rng.choice((0, 1, 3, 10, 40))
    return sorted({rng.randrange(1, size) for _ in range(count)} if size > 1 else set())


# ------------------------------------------------------------------- runner
@dataclass
class Outcome:
    appends: list[tuple[bytes, int]]
    transport: list[tuple[str, bytes]]
    events: list[tuple[Any, ...]]
    publishes: int
    state: int
    owed: int
    unacked: int
    qos1: set[int]
    qos2: set[int]


async def drive(
    fast: bool, v5: bool, qos_max: int, data: bytes, schedule: int, receive_maximum: int = 0
) -> Outcome:
    rng = random.Random(schedule)
    receive_maximum = receive_maximum or rng.choice((4, 64, 1024))
    settings = MqttSettings(max_packet_bytes=20_000, receive_maximum=receive_maximum)
    listener = Listener(settings)
    wal = Wal()
    session = MqttSession(listener, "tcp")  # type: ignore[arg-type]
    session.fast_publish = fast
    transport = Transport()
    session.attach(transport)
    session.v5 = v5
    publisher = Publisher(session, Runtime(wal), tenant=7)  # type: ignore[arg-type]
    publisher.qos_max = qos_max
    session.publisher, session.state = publisher, OPEN
    bounds = [0, *cuts(rng, len(data)), len(data)]
    for a, b in itertools.pairwise(bounds):
        session.data_received(data[a:b])
        wal.make_durable(rng.randrange(0, 3))
        await asyncio.sleep(0)
    for _ in range(50):
        if not wal.pending:
            break
        wal.make_durable(len(wal.pending))
        await asyncio.sleep(0)
    return Outcome(
        wal.appends,
        transport.log,
        listener.events,
        listener.publishes,
        session.state,
        publisher.owed,
        publisher.unacked,
        set(publisher.qos1),
        set(publisher.qos2),
    )


def seed_of(name: str) -> int:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED", random.randrange(2**32)))
    print(f"{name}: seed {seed} (EDGEMQ_TEST_SEED={seed} to repeat)")
    return seed


async def compare(rng: random.Random, check: Callable[[Outcome], None] | None = None) -> None:
    v5 = rng.random() < 0.5
    qos_max = rng.choice((0, 1, 1, 2, 2))
    data = b"".join(stream(rng, v5, qos_max))
    schedule = rng.randrange(2**32)
    fast = await drive(True, v5, qos_max, data, schedule)
    reference = await drive(False, v5, qos_max, data, schedule)
    context = f"v5={v5} qos_max={qos_max} schedule={schedule} stream={data[:64]!r}…"
    assert fast.appends == reference.appends, context
    assert fast == reference, context
    if check is not None:
        check(fast)


async def test_the_fast_path_writes_the_same_frames_acks_and_errors_as_the_reference() -> None:
    rng = random.Random(seed_of("fast path vs reference"))
    totals = {"appends": 0, "closed": 0, "disconnects": 0}

    def tally(outcome: Outcome) -> None:
        totals["appends"] += len(outcome.appends)
        totals["closed"] += outcome.state != OPEN
        totals["disconnects"] += any(e[0] == "disconnected" for e in outcome.events)

    for _ in range(STREAMS):
        await compare(rng, tally)
    # The streams did reach the WAL and the error paths (the comparison is not vacuous).
    assert totals["appends"] > STREAMS
    assert 0 < totals["closed"] < STREAMS
    assert totals["disconnects"] > STREAMS // 10
    print(f"fast path vs reference: {STREAMS} streams, {totals}")


async def test_the_fast_path_is_taken_for_common_publishes(monkeypatch: Any) -> None:
    """Common QoS 0/1 packets go through `take_publishes`, not `Publisher.publish`."""
    calls = {"publish": 0}
    original = Publisher.publish

    def counting(self: Publisher, flags: int, body: bytes) -> None:
        calls["publish"] += 1
        original(self, flags, body)

    monkeypatch.setattr(Publisher, "publish", counting)
    for v5 in (False, True):
        props = b"" if v5 else None
        data = b"".join(
            publish(b"sensors/bench/temp", b"{}" * 100, qos, pid, props=props)
            for pid in range(1, 201)
            for qos in (0, 1)
        )
        outcome = await drive(True, v5, 1, data, 1, receive_maximum=1024)
        assert calls["publish"] == 0
        assert outcome.publishes == 400
        assert sum(frames for _, frames in outcome.appends) == 400
        acks = b"".join(d for kind, d in outcome.transport if kind == "write")
        assert acks == b"".join(b"\x40\x02" + U16.pack(pid) for pid in range(1, 201))


def test_the_session_module_uses_the_fast_path_by_default() -> None:
    assert session_mod.MqttSession.fast_publish is True


async def test_mutated_streams_end_the_same_way_on_both_paths() -> None:
    """Generated streams with a few random bytes overwritten: whatever the bytes now
    say (another packet type, a cut topic, a bad length), both paths agree."""
    rng = random.Random(seed_of("mutated streams"))
    differing_ends = 0
    for _ in range(STREAMS):
        v5 = rng.random() < 0.5
        qos_max = rng.choice((0, 1, 2))
        data = bytearray(b"".join(stream(rng, v5, qos_max)))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        schedule = rng.randrange(2**32)
        fast = await drive(True, v5, qos_max, bytes(data), schedule)
        reference = await drive(False, v5, qos_max, bytes(data), schedule)
        assert fast == reference, f"v5={v5} qos_max={qos_max} schedule={schedule}"
        differing_ends += fast.state != OPEN
    assert differing_ends > STREAMS // 4  # the mutations did reach the error paths
