"""MQTT fault scenarios (docs/RELIABILITY.md): DUR-02, the kill -9 loop under QoS 1
load, and INP-04, a table of malformed MQTT packets. The node runs as `python -m
edgemq node` (tests/support/processes.py) with its MQTT listener on a free port
(EDGEMQ_MQTT_PORT, the same port on every restart); the control plane runs in this
process (tests/support/stack.py) with a local destination, so the committed output is
raw Parquet plus commit manifests in a directory.

DUR-02: 2–4 pipelined QoS 1 publishers over raw sockets (ingest/mqtt/client_codec.py;
odd-numbered ones speak MQTT 5, the others 3.1.1) each keep a window of messages in
flight and, after every reconnect, resend (DUP) whatever was not PUBACKed. Every message
is one JSON record with a unique id in a ledger (tests/support/ledger.py); a PUBACK is
its "ok". The node is SIGKILLed at seeded random instants (0.3–1.5 s after it was
seen acknowledging again) and restarted on the same data directory and ports; recovery
time is restart → the first PUBACK on a connection made after the restart. Then the
publishers stop, wait for every outstanding PUBACK, disconnect; the node drains on
SIGTERM (exit 0, nothing left in its WAL or outbox), and the reconciler compares the
ledger with the committed raw Parquet: lost_acked, phantoms, corrupt (a payload or a
topic changed), seq_gaps per (node, endpoint, epoch) from segment 1, orphans — all 0;
duplicates (resends) counted. 20 cycles in every run, 200 in the long tier
(EDGEMQ_LONG_TESTS=1). kill -9 tests recovery, not fsync: the page cache survives
(power cuts are the PWR scenarios; ack-after-fsync is audited in PWR-03).

INP-04: one node, two MQTT endpoints. A bystander (MQTT 5, QoS 1) stays connected to the
first and publishes all along; each malformed case is sent on its own connection — when
the case needs a session, after a valid CONNECT to the second endpoint and its CONNACK
0 — and must end that connection with the reaction docs/mqtt.md names (v5 DISCONNECT
with a reason code, a CONNACK refusal, or the connection closed), while the bystander
receives a PUBACK after every reaction and the offenders' endpoint WAL stays at 0
bytes. At the end a valid QoS 1 PUBLISH to the offenders' endpoint is PUBACKed and does
grow that WAL (the positive control: the byte check sees writes), the node drains on
SIGTERM, and the raw output holds every acknowledged bystander message and, for the
offenders' endpoint, only the positive control's.

Seeds: EDGEMQ_TEST_SEED replays the kill instants and the number of publishers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ingest.mqtt import client_codec as cc
from ingest.mqtt.codec import U16, encode_properties, encode_string, fixed_header
from tests.fault.harness import REPORTS, long_tier, percentile
from tests.integration.mqtt.support import MQTT_ON, raw_rows
from tests.support.ledger import (
    INDETERMINATE,
    OK,
    Ledger,
    LocalReader,
    Reconciliation,
    Record,
    Request,
    reconcile,
)
from tests.support.postgres import free_port
from tests.support.processes import NodeChild
from tests.support.report import report
from tests.support.stack import ControlPlane, control_plane

READ_TIMEOUT_S = 10.0
"""A live node answers a publisher within this (a stall is a bug, not a fault)."""
RECONNECT_S = 0.02
"""A publisher's pause before connecting again (the node is restarting)."""


def report_line(scenario: str, **figures: Any) -> dict[str, Any]:
    """The scenario's REPORT line, also repeated in the session's terminal summary."""
    line = report(scenario, **figures)
    REPORTS.append(line)
    return line


# --------------------------------------------------------------------- the stack
@dataclass
class MqttNode:
    cp: ControlPlane
    node: NodeChild
    mqtt_port: int
    out: Path
    endpoints: list[str]

    def wal_bytes(self, endpoint_id: str) -> int:
        """Bytes of the endpoint's WAL segment files on disk (blocking; the EPOCH file
        beside them is not data)."""
        directory = self.node.data_dir / "wal" / endpoint_id
        if not directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in directory.iterdir() if ".wal" in p.name)

    def held(self) -> list[str]:
        """What the node still holds (blocking): sealed segments, open segments with
        data, queued commit reports."""
        data_dir = self.node.data_dir
        held = []
        wal_root = data_dir / "wal"
        for wal_dir in sorted(wal_root.iterdir()) if wal_root.is_dir() else []:
            for path in sorted(wal_dir.iterdir()):
                if path.name.endswith(".wal") or (
                    path.name.endswith(".wal.open") and path.stat().st_size > 0
                ):
                    held.append(str(path.relative_to(data_dir)))
        outbox = data_dir / "outbox"
        for path in sorted(outbox.iterdir()) if outbox.is_dir() else []:
            held.append(str(path.relative_to(data_dir)))
        return held

    def work_dirs(self) -> list[str]:
        """Delivery scratch directories (`work/<endpoint>/<epoch>-<seq>`) still on disk
        (blocking). After a drain there should be none; a kill -9 between a delivery's
        commit report and its cleanup leaves one behind (see DUR-02's report)."""
        work = self.node.data_dir / "work"
        return sorted(
            str(path.relative_to(self.node.data_dir))
            for endpoint in (work.iterdir() if work.is_dir() else [])
            for path in endpoint.iterdir()
        )


@asynccontextmanager
async def mqtt_node(tmp: Path, *, endpoints: int, qos_max: int) -> AsyncIterator[MqttNode]:
    """Control plane (in process), a local destination, `endpoints` MQTT endpoints and
    one `edgemq node` child with its MQTT listener on a fixed free port."""
    out = tmp / "objects"
    async with control_plane(str(tmp)) as cp:
        dest = await cp.local_destination(str(out))
        made = [
            await cp.endpoint(dest["id"], mqtt_config={**MQTT_ON, "qos_max": qos_max})
            for _ in range(endpoints)
        ]
        mqtt_port = free_port()
        node = NodeChild(
            data_dir=tmp / "node",
            control_url=cp.url,
            node_key=cp.node_key,
            http_port=free_port(),
            drain_deadline_s=30.0,
            env={"EDGEMQ_MQTT_PORT": str(mqtt_port)},
        )
        try:
            node.start()
            await node.wait_ready(cp.session)
            yield MqttNode(cp, node, mqtt_port, out, [str(e["id"]) for e in made])
        finally:
            await node.close()


async def read_packet(
    reader: asyncio.StreamReader, buffer: bytearray, pending: list[cc.Packet], timeout_s: float
) -> cc.Packet:
    """The next whole packet from the server (EOFError at end of stream)."""
    async with asyncio.timeout(timeout_s):
        while not pending:
            chunk = await reader.read(65536)
            if not chunk:
                raise EOFError("closed by the server")
            buffer += chunk
            pending += cc.split_packets(buffer)
    return pending.pop(0)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(5):
            await writer.wait_closed()


class Refused(Exception):
    """CONNACK with a non-zero code (the node is starting and lacks its config, ...)."""


# ------------------------------------------------------------------------ DUR-02
DUR02_CYCLES = 20
DUR02_LONG_CYCLES = 200
KILL_AFTER_S = (0.3, 1.5)
"""The kill instant: this long after the node was seen acknowledging again (seeded)."""
PUBLISHERS = (2, 4)


@dataclass(frozen=True)
class Load:
    window: int
    """QoS 1 messages a publisher keeps unacknowledged (pipelined)."""
    pace_s: float
    """A publisher's pause after writing its window, before it reads the acks (a shared
    2-vCPU machine; the ledger holds every message until the reconciliation)."""


EVERY_RUN_LOAD = Load(window=32, pace_s=0.005)
LONG_LOAD = Load(window=16, pace_s=0.05)
RECOVERY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


@dataclass
class Session:
    connected_at: float  # loop time of the CONNACK 0
    first_ack_at: float | None = None


class Publisher:
    """A pipelined QoS 1 publisher over a raw socket, writing its messages in a ledger;
    after every reconnect it resends (DUP) what was not acknowledged."""

    def __init__(
        self, number: int, port: int, api_key: str, endpoint_id: str, ledger: Ledger, load: Load
    ) -> None:
        self.number = number
        self.load = load
        self.port = port
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.ledger = ledger
        self.v5 = number % 2 == 1
        self.topic = f"dur02/{number}"
        self.unacked: dict[int, Record] = {}  # packet id -> record, in send order
        self.next_pid = 0
        self.acked = 0
        self.resent = 0
        self.stray_acks = 0  # a PUBACK for an id not outstanding (re-acked DUP)
        self.sessions: list[Session] = []
        self.refused: collections.Counter[int] = collections.Counter()
        self.disconnects: collections.Counter[int] = collections.Counter()

    def _make(self, _n: int) -> dict[str, Any]:
        return {"p": self.number}

    def _packet(self, pid: int, record: Record, *, dup: bool) -> bytes:
        return cc.publish(self.topic, record.payload, qos=1, packet_id=pid, dup=dup, v5=self.v5)

    def _fresh(self) -> bytes:
        self.next_pid = self.next_pid % 0xFFFF + 1
        pid = self.next_pid
        assert pid not in self.unacked, f"packet id {pid} still outstanding"
        record = self.ledger.records(1, self._make)[0]
        self.ledger.sent[record.id] = record
        self.unacked[pid] = record
        return self._packet(pid, record, dup=False)

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self.unacked):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(RECONNECT_S)  # the node is restarting
                continue
            try:
                await self._session(reader, writer, stop)
            except Refused:
                await asyncio.sleep(RECONNECT_S)
            except (ConnectionError, EOFError):
                pass  # killed under us: reconnect and resend
            finally:
                await close_writer(writer)

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        buffer, pending = bytearray(), list[cc.Packet]()
        writer.write(
            cc.connect(
                f"dur02-{self.number}",
                level=5 if self.v5 else 4,
                username=f"pub-{self.number}@{self.endpoint_id}",
                password=self.api_key,
            )
        )
        packet = await read_packet(reader, buffer, pending, READ_TIMEOUT_S)
        assert packet.type == 2, packet
        connack = cc.decode_connack(packet.body, self.v5)
        if connack.code:
            self.refused[connack.code] += 1
            raise Refused(connack.code)
        session = Session(loop.time())
        self.sessions.append(session)
        # The node keeps no session: resend everything not acknowledged, in order.
        if self.unacked:
            self.resent += len(self.unacked)
            writer.write(
                b"".join(self._packet(pid, r, dup=True) for pid, r in self.unacked.items())
            )
        while True:
            if not stop.is_set():
                fresh = [self._fresh() for _ in range(self.load.window - len(self.unacked))]
                writer.write(b"".join(fresh))
            elif not self.unacked:
                writer.write(cc.disconnect())
                await writer.drain()
                return
            await writer.drain()
            if self.load.pace_s and session.first_ack_at is not None and not stop.is_set():
                await asyncio.sleep(self.load.pace_s)  # the window stays in flight meanwhile
            packet = await read_packet(reader, buffer, pending, READ_TIMEOUT_S)
            acked: list[str] = []
            try:
                while True:
                    self._answer(packet, session, loop.time(), acked)
                    if not pending:
                        break
                    packet = pending.pop(0)
            finally:
                if acked:  # one ledger entry per round of acks (memory, long tier)
                    self.ledger.requests.append(Request(tuple(acked), OK, None, None))

    def _answer(self, packet: cc.Packet, session: Session, now: float, acked: list[str]) -> None:
        if packet.type == 14:  # a v5 server DISCONNECT
            code = cc.decode_disconnect_reason(packet.body)
            self.disconnects[code] += 1
            raise EOFError(f"DISCONNECT 0x{code:02X}")
        assert packet.type == 4, f"publisher {self.number}: unexpected {packet}"
        pid, reason = cc.decode_ack(packet.body)
        assert reason == 0, f"publisher {self.number}: PUBACK {pid} with reason 0x{reason:02X}"
        record = self.unacked.pop(pid, None)
        if record is None:
            self.stray_acks += 1
            return
        acked.append(record.id)
        self.acked += 1
        if session.first_ack_at is None:
            session.first_ack_at = now

    def give_up(self) -> None:
        """What is still outstanding is indeterminate (a failed run's reconciliation)."""
        for record in self.unacked.values():
            self.ledger.requests.append(Request((record.id,), INDETERMINATE, None, "no PUBACK"))


def _first_ack_after(publishers: list[Publisher], t0: float) -> float | None:
    """Loop time of the first PUBACK on a connection made after `t0`."""
    times = [
        s.first_ack_at
        for p in publishers
        for s in p.sessions
        if s.connected_at > t0 and s.first_ack_at is not None
    ]
    return min(times) if times else None


async def _watch(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Sleep, surfacing a publisher's own failure at once."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()
        raise AssertionError("a publisher returned before it was stopped")


async def _recovered(
    publishers: list[Publisher], tasks: list[asyncio.Task[None]], t0: float, node: NodeChild
) -> float:
    """Seconds from `t0` (the restart) to the first PUBACK on a new connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECOVERY_TIMEOUT_S
    while (first := _first_ack_after(publishers, t0)) is None:
        if loop.time() > deadline:
            raise AssertionError(
                f"no PUBACK {RECOVERY_TIMEOUT_S}s after the restart:\n{node.log_tail()}"
            )
        await _watch(tasks, 0.01)
    return first - t0


@dataclass
class KillLoop:
    cycles: int = 0
    codes: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    instants: list[float] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    """Messages not yet PUBACKed, as the publishers saw it at each kill."""

    recoveries: list[float] = field(default_factory=list)


def _topic_mismatches(out: Path, endpoint_id: str) -> tuple[int, int]:
    """(rows, rows whose topic is not their publisher's) in the raw Parquet (blocking)."""
    rows = raw_rows(out, endpoint_id)
    bad = 0
    for topic, payload in rows:
        try:
            number = json.loads(payload)["p"]
        except (ValueError, KeyError, TypeError):
            continue  # a phantom: the reconciler counts it
        bad += topic != f"dur02/{number}"
    return len(rows), bad


async def _dur02(tmp_path: Path, seed: int, cycles: int, load: Load) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    ledger = Ledger()
    kills = KillLoop()
    count = rng.randint(*PUBLISHERS)
    async with mqtt_node(tmp_path, endpoints=1, qos_max=1) as st:
        endpoint_id = st.endpoints[0]
        node = st.node
        publishers = [
            Publisher(n, st.mqtt_port, st.cp.api_key, endpoint_id, ledger, load)
            for n in range(count)
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop), name=f"publisher-{p.number}") for p in publishers]
        try:
            await _recovered(publishers, tasks, float("-inf"), node)  # load is flowing
            for cycle in range(cycles):
                instant = rng.uniform(*KILL_AFTER_S)
                await _watch(tasks, instant)  # the seeded kill instant, mid-stream
                kills.pids.append(node.pid)
                in_flight = sum(len(p.unacked) for p in publishers)
                acked = sum(p.acked for p in publishers)
                kills.codes.append(await node.kill())
                kills.instants.append(round(instant, 3))
                kills.in_flight.append(in_flight)
                restarted = loop.time()
                node.start()
                kills.recoveries.append(await _recovered(publishers, tasks, restarted, node))
                kills.cycles += 1
                print(
                    f"cycle {cycle}: kill -9 after {instant:.2f}s with {acked} acked, "
                    f"{in_flight} in flight; first PUBACK {kills.recoveries[-1]:.2f}s "
                    "after the restart"
                )
            await _watch(tasks, rng.uniform(*KILL_AFTER_S))
            stop.set()
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*tasks)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for p in publishers:
                p.give_up()
        sigterm_at = loop.time()
        code = await node.terminate(timeout_s=90)
        exit_s = loop.time() - sigterm_at
        held = await asyncio.to_thread(st.held)
        leaked = await asyncio.to_thread(st.work_dirs)
        commits = await st.cp.commits(endpoint_id)
        log_tail = node.log_tail()
        torn = node.log_count("WAL recovery:")
    lake = LocalReader(st.out / "lake")
    result: Reconciliation = await asyncio.to_thread(
        reconcile, ledger, lake, commits={endpoint_id: commits}
    )
    rows, bad_topics = await asyncio.to_thread(_topic_mismatches, st.out, endpoint_id)
    print(result.line())
    report_line(
        "DUR-02",
        seed=seed,
        cycles=kills.cycles,
        publishers=count,
        window=load.window,
        acked=result.ok,
        sent=result.sent,
        lost_acked=result.lost_acked,
        duplicates=result.duplicates,
        phantoms=result.phantoms,
        corrupt=result.corrupt + bad_topics,
        seq_gaps=result.seq_gaps,
        orphans=result.orphans,
        bad_objects=result.bad_objects,
        unlisted=result.unlisted,
        unreported=result.unreported,
        indeterminate=result.indeterminate,
        segments=result.manifests,
        rows=result.rows,
        recovery_p50_s=percentile(kills.recoveries, 50),
        recovery_p95_s=percentile(kills.recoveries, 95),
        recovery_max_s=round(max(kills.recoveries, default=0.0), 3),
        kills_with_messages_in_flight=sum(1 for n in kills.in_flight if n),
        resent=sum(p.resent for p in publishers),
        reconnects=sum(len(p.sessions) for p in publishers),
        refused_connacks=dict(sum((p.refused for p in publishers), collections.Counter())),
        recoveries_cutting_a_torn_tail=torn,
        # Delivery scratch directories a kill left are swept at the next start (asserted
        # below); the local store's temporary files are only counted
        # (ingest/objectstore/local.py: "nothing sweeps it").
        leaked_work_dirs=len(leaked),
        store_temp_files=lake.temp_files,
        exit_code=code,
        exit_s=round(exit_s, 2),
        elapsed_s=round(time.monotonic() - started, 1),
    )
    assert code == 0, f"the SIGTERM drain failed (exit {code}):\n{log_tail}"
    assert held == [], f"left behind after the drain: {held[:20]}"
    assert leaked == [], f"delivery scratch left behind: {leaked[:5]}"
    # The faults happened: every cycle killed a different, live process with SIGKILL,
    # mostly with messages in flight, and the node came back each time.
    assert kills.cycles == cycles
    assert kills.codes == [-9] * cycles, kills.codes
    assert len(set(kills.pids)) == cycles, kills.pids
    assert node.starts == cycles + 1
    assert sum(1 for n in kills.in_flight if n) >= cycles // 2, kills.in_flight
    # The promise.
    assert result.must_be_zero() == {}, result.line()
    assert bad_topics == 0, f"{bad_topics} rows with another publisher's topic"
    assert (result.unlisted, result.unreported) == (0, 0), result.line()
    assert result.indeterminate == 0, "every publisher got all its PUBACKs before stopping"
    assert result.rows == rows, (result.rows, rows)
    assert result.ok >= cycles * load.window, f"too little load to mean anything: {result.line()}"


async def test_dur02_twenty_kill_nine_cycles_under_mqtt_qos1_lose_no_acknowledged_message(
    tmp_path: Path, seed: int
) -> None:
    await _dur02(tmp_path, seed, DUR02_CYCLES, EVERY_RUN_LOAD)


@pytest.mark.slow
@long_tier
@pytest.mark.timeout(3600)
async def test_dur02_long_two_hundred_kill_nine_cycles_lose_no_acknowledged_message(
    tmp_path: Path, seed: int
) -> None:
    await _dur02(tmp_path, seed, DUR02_LONG_CYCLES, LONG_LOAD)


# ------------------------------------------------------------------------ INP-04
REACTION_TIMEOUT_S = 5.0
"""The offender's connection must be closed within this."""
BYSTANDER_PAUSE_S = 0.01
MAX_PACKET_DEFAULT = 256 * 1024
"""ingest.settings.MqttSettings.max_packet_bytes (the CLI does not change it)."""
TOPIC = "inp04/offender"


@dataclass(frozen=True)
class Malformed:
    name: str
    v5: bool
    session: bool
    """Send a valid CONNECT (to the offenders' endpoint) first and expect CONNACK 0."""
    build: Callable[[int], bytes]
    """The offending bytes, given the server's Maximum Packet Size."""
    expect: str
    """The reaction docs/mqtt.md names: "DISCONNECT 0x..", "CONNACK 0x.." or "closed"."""


def _v5_publish_with_properties(props: bytes) -> bytes:
    body = encode_string(TOPIC) + U16.pack(21) + props + b"offender"
    return fixed_header(0x32, len(body)) + body


def _connect_named(name: bytes, level: int) -> bytes:
    variable = U16.pack(len(name)) + name + bytes((level, 0x02)) + U16.pack(60)
    variable += encode_properties([]) if level == 5 else b""
    body = variable + encode_string("inp04-bad-name")
    return fixed_header(0x10, len(body)) + body


def _offender(qos: int = 1, pid: int = 11, **kwargs: Any) -> Callable[[int], bytes]:
    topic = kwargs.pop("topic", TOPIC)
    return lambda _max: cc.publish(topic, b"offender", qos=qos, packet_id=pid, **kwargs)


FIVE_BYTE_LENGTH = b"\x32\xff\xff\xff\xff\x01" + bytes(16)
"""A PUBLISH whose remaining length has 5 bytes (4 continuation bits set)."""

CASES = [
    Malformed(
        "remaining length of 5 bytes", True, True, lambda _m: FIVE_BYTE_LENGTH, "DISCONNECT 0x81"
    ),
    Malformed(
        "remaining length of 5 bytes (3.1.1)", False, True, lambda _m: FIVE_BYTE_LENGTH, "closed"
    ),
    Malformed("PUBLISH with QoS 3", True, True, _offender(qos=3, v5=True), "DISCONNECT 0x81"),
    Malformed("PUBLISH with QoS 3 (3.1.1)", False, True, _offender(qos=3), "closed"),
    Malformed(
        "wildcard '+' in a PUBLISH topic",
        True,
        True,
        _offender(topic="inp04/+/x", v5=True),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "wildcard '#' in a PUBLISH topic",
        True,
        True,
        _offender(topic="inp04/#", v5=True),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "wildcard '#' in a PUBLISH topic (3.1.1)", False, True, _offender(topic="inp04/#"), "closed"
    ),
    Malformed("packet id 0 on QoS 1", True, True, _offender(pid=0, v5=True), "DISCONNECT 0x81"),
    Malformed("packet id 0 on QoS 1 (3.1.1)", False, True, _offender(pid=0), "closed"),
    Malformed(
        "invalid UTF-8 topic",
        True,
        True,
        _offender(topic=b"inp04/\xff\xfe", v5=True),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "UTF-16 surrogate in the topic",
        True,
        True,
        _offender(topic=b"inp04/\xed\xa0\x80", v5=True),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "NUL in the topic", True, True, _offender(topic=b"inp04/\x00x", v5=True), "DISCONNECT 0x81"
    ),
    Malformed(
        "DUP on a QoS 0 PUBLISH",
        True,
        True,
        _offender(qos=0, pid=0, dup=True, v5=True),
        "DISCONNECT 0x81",
    ),
    Malformed("PUBLISH before CONNECT", True, False, _offender(v5=True), "closed"),
    Malformed("PUBLISH before CONNECT (3.1.1)", False, False, _offender(), "closed"),
    Malformed(
        "a second CONNECT",
        True,
        True,
        lambda _m: cc.connect("inp04-again", level=5),
        "DISCONNECT 0x82",
    ),
    Malformed(
        "a second CONNECT (3.1.1)", False, True, lambda _m: cc.connect("inp04-again"), "closed"
    ),
    Malformed(
        "v5 property length past the end of the PUBLISH",
        True,
        True,
        lambda _m: _v5_publish_with_properties(b"\x40\x01\x01"),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "v5 property length of 5 bytes",
        True,
        True,
        lambda _m: _v5_publish_with_properties(b"\xff\xff\xff\xff\x01"),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "v5 property not allowed in PUBLISH (0x27)",
        True,
        True,
        lambda _m: _v5_publish_with_properties(b"\x05\x27\x00\x00\x00\x01"),
        "DISCONNECT 0x81",
    ),
    Malformed(
        "v5 packet above the Maximum Packet Size",
        True,
        True,
        lambda m: fixed_header(0x32, m + 1) + bytes(1024),
        "DISCONNECT 0x95",
    ),
    Malformed("unknown packet type 0", True, True, lambda _m: b"\x00\x00", "DISCONNECT 0x81"),
    Malformed("unknown packet type 0 (3.1.1)", False, True, lambda _m: b"\x00\x00", "closed"),
    Malformed(
        "PUBREL with flags 0000", True, True, lambda _m: b"\x60\x02\x00\x01", "DISCONNECT 0x81"
    ),
    Malformed(
        "PUBREL with flags 0000 (3.1.1)", False, True, lambda _m: b"\x60\x02\x00\x01", "closed"
    ),
    Malformed(
        "PUBACK from the client", True, True, lambda _m: b"\x40\x02\x00\x01", "DISCONNECT 0x82"
    ),
    Malformed("PINGREQ with a body", True, True, lambda _m: b"\xc0\x01\x00", "DISCONNECT 0x81"),
    Malformed(
        "CONNECT with protocol name MQTX",
        True,
        False,
        lambda _m: _connect_named(b"MQTX", 5),
        "closed",
    ),
    Malformed(
        "CONNECT with protocol name MQTX (3.1.1)",
        False,
        False,
        lambda _m: _connect_named(b"MQTX", 4),
        "closed",
    ),
    Malformed(
        "v5 CONNECT with the reserved flag set",
        True,
        False,
        lambda _m: cc.connect("inp04-reserved", level=5, flags_extra=0x01),
        "CONNACK 0x81",
    ),
]


class Bystander:
    """An MQTT 5 QoS 1 publisher on its own endpoint, connected throughout: it publishes,
    waits for the PUBACK, pauses briefly, and so on; its connection must never end."""

    def __init__(self, port: int, api_key: str, endpoint_id: str) -> None:
        self.port, self.api_key, self.endpoint_id = port, api_key, endpoint_id
        self.acked: list[bytes] = []
        self.last_ack_at = float("-inf")
        self.refused: collections.Counter[int] = collections.Counter()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buffer = bytearray()
        self._pending: list[cc.Packet] = []

    async def connect(self, timeout_s: float = 30.0) -> None:
        """CONNECT until CONNACK 0 (the node may not have its endpoints yet)."""
        async with asyncio.timeout(timeout_s):
            while True:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(
                    cc.connect(
                        "inp04-bystander",
                        level=5,
                        username=f"bystander@{self.endpoint_id}",
                        password=self.api_key,
                    )
                )
                self._buffer, self._pending = bytearray(), []
                packet = await read_packet(reader, self._buffer, self._pending, READ_TIMEOUT_S)
                assert packet.type == 2, packet
                code = cc.decode_connack(packet.body, True).code
                if code == 0:
                    self._reader, self._writer = reader, writer
                    return
                self.refused[code] += 1
                await close_writer(writer)
                await asyncio.sleep(0.1)

    async def run(self, stop: asyncio.Event) -> None:
        assert self._reader is not None
        assert self._writer is not None
        loop = asyncio.get_running_loop()
        pid = 0
        while not stop.is_set():
            pid = pid % 0xFFFF + 1
            message = f"bystander {len(self.acked)}".encode()
            self._writer.write(
                cc.publish("inp04/bystander", message, qos=1, packet_id=pid, v5=True)
            )
            await self._writer.drain()
            packet = await read_packet(self._reader, self._buffer, self._pending, READ_TIMEOUT_S)
            assert packet.type == 4, f"the bystander got {packet}"
            assert cc.decode_ack(packet.body) == (pid, 0), packet
            self.acked.append(message)
            self.last_ack_at = loop.time()
            await asyncio.sleep(BYSTANDER_PAUSE_S)
        self._writer.write(cc.disconnect())
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            await close_writer(self._writer)


@dataclass
class Outcome:
    case: Malformed
    reaction: str
    connack: str | None = None  # the CONNACK of the session the case needed
    elapsed_s: float = 0.0
    wal_bytes: int = 0  # the offenders' endpoint WAL after the case
    bystander_acks: int = 0  # the bystander's PUBACKs while the case ran


def describe(packets: list[cc.Packet], closed: str, v5: bool) -> str:
    """How the server reacted: its packets, then how the connection ended."""
    parts = []
    for p in packets:
        if p.type == 14:
            parts.append(f"DISCONNECT 0x{cc.decode_disconnect_reason(p.body):02X}")
        elif p.type == 2:
            code = cc.decode_connack(p.body, v5).code
            parts.append(f"CONNACK 0x{code:02X}" if v5 else f"CONNACK {code}")
        else:
            parts.append(f"packet type {p.type} {p.body[:16].hex()}")
    return " ".join(parts) if parts and closed == "closed" else " ".join([*parts, closed])


async def run_case(st: MqttNode, case: Malformed, index: int, max_packet: int) -> Outcome:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", st.mqtt_port)
    buffer, pending = bytearray(), list[cc.Packet]()
    connack = None
    try:
        if case.session:
            writer.write(
                cc.connect(
                    f"inp04-{index}",
                    level=5 if case.v5 else 4,
                    username=f"offender-{index}@{st.endpoints[1]}",
                    password=st.cp.api_key,
                )
            )
            packet = await read_packet(reader, buffer, pending, READ_TIMEOUT_S)
            connack = describe([packet], "closed", case.v5)
            if packet.type != 2 or cc.decode_connack(packet.body, case.v5).code:
                return Outcome(case, "no session", connack)
        started = loop.time()
        writer.write(case.build(max_packet))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        packets: list[cc.Packet] = []
        closed = "closed"
        try:
            while True:
                packets.append(await read_packet(reader, buffer, pending, REACTION_TIMEOUT_S))
        except EOFError:
            pass
        except ConnectionResetError:
            closed = "reset"
        except TimeoutError:
            closed = f"still open after {REACTION_TIMEOUT_S}s"
        return Outcome(case, describe(packets, closed, case.v5), connack, loop.time() - started)
    finally:
        await close_writer(writer)


def violation(outcome: Outcome) -> str | None:
    case = outcome.case
    if outcome.reaction == "no session":
        return f"{case.name}: the valid CONNECT before it got {outcome.connack}"
    if outcome.reaction != case.expect:
        return f"{case.name}: reacted {outcome.reaction!r}, expected {case.expect!r}"
    if outcome.wal_bytes:
        return f"{case.name}: the offenders' WAL holds {outcome.wal_bytes} bytes"
    if not outcome.bystander_acks:
        return f"{case.name}: the bystander got no PUBACK meanwhile"
    return None


async def _max_packet(st: MqttNode) -> int:
    """The Maximum Packet Size a v5 CONNACK on the offenders' endpoint advertises."""
    reader, writer = await asyncio.open_connection("127.0.0.1", st.mqtt_port)
    try:
        writer.write(
            cc.connect(
                "inp04-probe",
                level=5,
                username=f"probe@{st.endpoints[1]}",
                password=st.cp.api_key,
            )
        )
        packet = await read_packet(reader, bytearray(), [], READ_TIMEOUT_S)
        connack = cc.decode_connack(packet.body, True)
        assert connack.code == 0, connack
        writer.write(cc.disconnect())
        await writer.drain()
        value = connack.props.get(0x27, MAX_PACKET_DEFAULT)
        assert isinstance(value, int)
        return value
    finally:
        await close_writer(writer)


async def _positive_control(st: MqttNode) -> tuple[int, int]:
    """A valid QoS 1 PUBLISH to the offenders' endpoint: (PUBACK reason, WAL bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", st.mqtt_port)
    buffer: bytearray = bytearray()
    pending: list[cc.Packet] = []
    try:
        writer.write(
            cc.connect(
                "inp04-control", level=5, username=f"ok@{st.endpoints[1]}", password=st.cp.api_key
            )
        )
        packet = await read_packet(reader, buffer, pending, READ_TIMEOUT_S)
        assert cc.decode_connack(packet.body, True).code == 0, packet
        writer.write(cc.publish("inp04/control", b"positive control", qos=1, packet_id=1, v5=True))
        packet = await read_packet(reader, buffer, pending, READ_TIMEOUT_S)
        assert packet.type == 4, packet
        pid, reason = cc.decode_ack(packet.body)
        assert pid == 1
        written = await asyncio.to_thread(st.wal_bytes, st.endpoints[1])
        writer.write(cc.disconnect())
        await writer.drain()
        return reason, written
    finally:
        await close_writer(writer)


async def _bystander_acks_after(
    bystander: Bystander, task: asyncio.Task[None], t0: float, timeout_s: float = 10.0
) -> None:
    loop = asyncio.get_running_loop()
    while bystander.last_ack_at <= t0:
        if task.done():
            task.result()
            raise AssertionError("the bystander stopped")
        if loop.time() - t0 > timeout_s:
            raise AssertionError(f"the bystander got no PUBACK within {timeout_s}s")
        await asyncio.sleep(0.005)


async def test_inp04_malformed_mqtt_disconnects_only_the_offender_and_writes_nothing(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    async with mqtt_node(tmp_path, endpoints=2, qos_max=2) as st:
        bystander = Bystander(st.mqtt_port, st.cp.api_key, st.endpoints[0])
        await bystander.connect()
        max_packet = await _max_packet(st)
        baseline = await asyncio.to_thread(st.wal_bytes, st.endpoints[1])
        stop = asyncio.Event()
        task = asyncio.create_task(bystander.run(stop), name="bystander")
        outcomes: list[Outcome] = []
        try:
            for index, case in enumerate(CASES):
                acks_before = len(bystander.acked)
                outcome = await run_case(st, case, index, max_packet)
                await _bystander_acks_after(bystander, task, asyncio.get_running_loop().time())
                outcome.bystander_acks = len(bystander.acked) - acks_before
                outcome.wal_bytes = await asyncio.to_thread(st.wal_bytes, st.endpoints[1])
                outcomes.append(outcome)
            stop.set()
            await asyncio.wait_for(task, READ_TIMEOUT_S)
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await bystander.close()
        # Anything an offender got appended would be on disk by now.
        written_by_offenders = await asyncio.to_thread(st.wal_bytes, st.endpoints[1])
        control_reason, control_written = await _positive_control(st)
        alive = st.node.running
        code = await st.node.terminate(timeout_s=90)
        held = await asyncio.to_thread(st.held)
        log_tail = st.node.log_tail()
    bystander_rows = await asyncio.to_thread(raw_rows, st.out, st.endpoints[0])
    offender_rows = await asyncio.to_thread(raw_rows, st.out, st.endpoints[1])
    violations = [v for v in map(violation, outcomes) if v is not None]
    missing = set(bystander.acked) - {payload.encode() for _, payload in bystander_rows}
    report_line(
        "INP-04",
        cases=len(outcomes),
        violations=len(violations),
        reactions={o.case.name: o.reaction for o in outcomes},
        offender_wal_bytes=written_by_offenders - baseline,
        bystander_acked=len(bystander.acked),
        bystander_lost_acked=len(missing),
        bystander_refused_connacks=dict(bystander.refused),
        max_packet_bytes=max_packet,
        slowest_reaction_s=round(max(o.elapsed_s for o in outcomes), 3),
        positive_control={"puback_reason": control_reason, "wal_bytes": control_written},
        offender_endpoint_rows=len(offender_rows),
        exit_code=code,
        elapsed_s=round(time.monotonic() - started, 1),
    )
    assert violations == [], violations
    assert len(outcomes) == len(CASES) >= 12
    assert (baseline, written_by_offenders) == (0, 0), (baseline, written_by_offenders)
    # The byte check sees writes: a valid PUBLISH to the same endpoint grows its WAL.
    assert (control_reason, control_written > 0) == (0, True), (control_reason, control_written)
    assert alive, log_tail
    assert code == 0, f"the SIGTERM drain failed (exit {code}):\n{log_tail}"
    assert held == [], held
    assert not missing, sorted(missing)[:10]
    assert offender_rows == [("inp04/control", "positive control")], offender_rows[:10]
