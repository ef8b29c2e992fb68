"""DUR-02 for MQTT: QoS 1 publishers keep publishing while the node (`python -m edgemq
node`, a child process) is SIGKILLed three times at seeded random moments and
restarted; publishers resend what was not acknowledged after each reconnect. After a
SIGTERM drain, every PUBACKed message is in the raw Parquet output (lost 0);
duplicates are allowed (at least once) and reported.

kill -9 tests recovery, not fsync (the page cache survives); ack-after-fsync is
audited in test_protocol.py. Seed: EDGEMQ_TEST_SEED, else random (printed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import signal
from pathlib import Path

import aiohttp

from ingest.mqtt import client_codec as cc
from tests.support.postgres import free_port
from tests.support.processes import NodeChild
from tests.support.stack import control_plane

from .support import MQTT_ON, raw_rows

PUBLISHERS = 4
WINDOW = 64
KILLS = 3


class Publisher:
    """A pipelined QoS 1 publisher that resends unacknowledged messages on reconnect."""

    def __init__(self, number: int, port: int, key: str, endpoint_id: str) -> None:
        self.number, self.port, self.key, self.endpoint_id = number, port, key, endpoint_id
        self.next_id = 0
        self.unacked: dict[int, int] = {}  # packet id -> message id
        self.acked: set[int] = set()
        self.connects = 0

    def _packet(self, message_id: int, *, dup: bool) -> bytes:
        payload = json.dumps({"p": self.number, "m": message_id}).encode()
        pid = message_id % 0xFFFF + 1
        return cc.publish(f"kill/{self.number}", payload, qos=1, packet_id=pid, dup=dup)

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self.unacked):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)  # the node is restarting: reconnect backoff
                continue
            try:
                await self._session(reader, writer, stop)
            except (ConnectionError, asyncio.IncompleteReadError, EOFError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        user = f"pub-{self.number}@{self.endpoint_id}"
        writer.write(cc.connect(f"pub-{self.number}", username=user, password=self.key))
        buffer = bytearray()
        packets = await self._read(reader, buffer)
        if not packets or packets[0].type != 2 or cc.decode_connack(packets[0].body, False).code:
            raise EOFError("refused")
        self.connects += 1
        # Resend everything not acknowledged (the node kept no session for us).
        writer.write(b"".join(self._packet(m, dup=True) for m in self.unacked.values()))
        while True:
            if not stop.is_set():
                fresh = []
                while len(self.unacked) < WINDOW:
                    message_id, self.next_id = self.next_id, self.next_id + 1
                    self.unacked[message_id % 0xFFFF + 1] = message_id
                    fresh.append(self._packet(message_id, dup=False))
                writer.write(b"".join(fresh))
            elif not self.unacked:
                writer.write(cc.disconnect())
                await writer.drain()
                return
            await writer.drain()
            for packet in await self._read(reader, buffer):
                assert packet.type == 4, packet
                pid, reason = cc.decode_ack(packet.body)
                assert reason == 0
                message_id = self.unacked.pop(pid, None)
                if message_id is not None:
                    self.acked.add(message_id)

    async def _read(self, reader: asyncio.StreamReader, buffer: bytearray) -> list[cc.Packet]:
        while True:
            packets = cc.split_packets(buffer)
            if packets:
                return packets
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                raise EOFError("closed")
            buffer += chunk


async def test_pubacked_messages_survive_repeated_sigkill_of_the_node(tmp_path: Path) -> None:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED", random.randrange(2**32)))
    print(f"seed={seed}")
    rng = random.Random(seed)
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp, aiohttp.ClientSession() as http:
        dest = await cp.local_destination(str(out))
        endpoint = await cp.endpoint(dest["id"], mqtt_config={**MQTT_ON, "qos_max": 1})
        node = NodeChild(
            data_dir=tmp_path / "node",
            control_url=cp.url,
            node_key=cp.node_key,
            http_port=free_port(),
            mqtt_port=free_port(),
            drain_deadline_s=30,
        )
        node.start()
        try:
            await node.wait_ready(http)
            stop = asyncio.Event()
            publishers = [
                Publisher(n, node.mqtt_port, cp.api_key, endpoint["id"]) for n in range(PUBLISHERS)
            ]
            tasks = [asyncio.create_task(p.run(stop)) for p in publishers]
            try:
                for cycle in range(KILLS):
                    acked_before = sum(len(p.acked) for p in publishers)
                    await asyncio.sleep(rng.uniform(0.3, 1.2))  # the fault's timing is the input
                    assert await node.kill() == -signal.SIGKILL
                    acked = sum(len(p.acked) for p in publishers)
                    print(f"cycle {cycle}: killed with {acked} acked (+{acked - acked_before})")
                    node.start()
                    await node.wait_ready(http)
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                stop.set()
                async with asyncio.timeout(60):
                    await asyncio.gather(*tasks)
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            code = await node.terminate(timeout_s=60)
            assert code == 0, f"drain left data behind (exit {code}):\n{node.log_tail()}"
        finally:
            await node.close()
    rows = raw_rows(out, endpoint["id"])
    seen = collections.Counter(
        (json.loads(payload)["p"], json.loads(payload)["m"]) for _, payload in rows
    )
    acked = {(p.number, m) for p in publishers for m in p.acked}
    lost = acked - set(seen)
    duplicates = sum(seen.values()) - len(seen)
    phantoms = {key for key in seen if key[1] >= publishers[key[0]].next_id}
    print(
        f"acked {len(acked)} across {KILLS} kills; lost {len(lost)}; duplicates {duplicates}; "
        f"reconnects {sum(p.connects for p in publishers)}"
    )
    assert all(topic == f"kill/{p}" for topic, payload in rows for p in [json.loads(payload)["p"]])
    assert not phantoms
    assert not lost, sorted(lost)[:20]
    assert len(acked) > 1000, "too little load to mean anything"
