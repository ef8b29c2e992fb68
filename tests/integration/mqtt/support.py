"""Helpers for the MQTT integration tests: a control plane + node with MQTT-enabled
endpoints (and ways to add or change endpoints while it runs), a raw-socket MQTT client,
and readers of the raw Parquet the node delivered to the local store."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from ingest.mqtt import client_codec as cc
from ingest.node import Node
from ingest.settings import MqttSettings
from ingest.snapshot import Endpoint
from tests.support.stack import ControlPlane, control_plane, node_settings, running_node, wait_for
from wal import WriteAheadLog

MQTT_ON = {"enabled": True, "max_connections": 100, "keepalive_max_s": 300, "qos_max": 2}


@dataclass
class Stack:
    cp: ControlPlane
    node: Node
    endpoint: dict[str, Any]
    out: Path
    destination_id: str
    extra: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.node.mqtt.tcp_port

    @property
    def endpoint_id(self) -> str:
        return str(self.endpoint["id"])

    async def wal(self, endpoint_id: str | None = None) -> WriteAheadLog:
        runtime = await self.node.endpoints.open(endpoint_id or self.endpoint_id)
        return runtime.wal

    async def new_endpoint(self, **mqtt_config: Any) -> str:
        """A further endpoint with `mqtt_config` (None: MQTT off), once the node has it."""
        config = None if mqtt_config.get("off") else {**MQTT_ON, **mqtt_config}
        made = await self.cp.endpoint(self.destination_id, mqtt_config=config)
        await self.wait_config(made["id"], lambda e: e is not None)
        return str(made["id"])

    async def patch_endpoint(self, endpoint_id: str, mqtt_config: dict[str, Any] | None) -> None:
        body = {"mqtt_config": None if mqtt_config is None else {**MQTT_ON, **mqtt_config}}
        await self.cp.call("PATCH", f"/v1/endpoints/{endpoint_id}", body)
        await self.wait_config(
            endpoint_id, lambda e: e is not None and _mqtt(e) == body["mqtt_config"]
        )

    async def wait_config(self, endpoint_id: str, check: Callable[[Endpoint | None], bool]) -> None:
        await wait_for(
            lambda: check(self.node.endpoints.snapshot.endpoint(endpoint_id)),
            what=f"endpoint {endpoint_id} config in the node's snapshot",
        )

    async def raw(self, *, v5: bool = False, **connect: Any) -> RawClient:
        """A raw client, CONNECTed with the account's key (asserts success)."""
        client = await RawClient.open("127.0.0.1", self.port, v5=v5)
        ack = await client.connect(password=connect.pop("password", self.cp.api_key), **connect)
        assert ack.code == 0, ack
        return client


def _mqtt(endpoint: Endpoint) -> dict[str, Any] | None:
    config = endpoint.mqtt_config
    return None if config is None else msgspec.structs.asdict(config)


@asynccontextmanager
async def mqtt_stack(
    tmp_path: Path,
    *,
    mqtt_config: dict[str, Any] | None = None,
    mqtt: MqttSettings | None = None,
    endpoints: int = 1,
    view: dict[str, Any] | None = None,
    **node_overrides: Any,
) -> AsyncIterator[Stack]:
    """Control plane, a local destination, `endpoints` MQTT endpoints, one node."""
    out = tmp_path / "objects"
    async with control_plane(str(tmp_path)) as cp:
        dest = await cp.local_destination(str(out))
        made = [
            await cp.endpoint(dest["id"], mqtt_config=mqtt_config or MQTT_ON)
            for _ in range(endpoints)
        ]
        if view is not None:
            created = await cp.published_view("mqtt_view", view)
            await cp.bind(made[0]["id"], created["id"])
        settings = node_settings(cp, str(tmp_path / "node"), **node_overrides)
        if mqtt is not None:
            settings = replace(settings, mqtt=mqtt)
        async with running_node(settings) as node:
            await wait_for(
                lambda: all(node.endpoints.snapshot.endpoint(e["id"]) for e in made),
                what="the endpoints in the node's snapshot",
            )
            if view is not None:
                await wait_for(
                    lambda: node.endpoints.snapshot.endpoint(made[0]["id"]).bindings,
                    what="the binding in the node's snapshot",
                )
            yield Stack(cp, node, made[0], out, dest["id"], made[1:])
        # Idle keep-alive connections would hold the control plane's graceful shutdown
        # for its full 2 s grace.
        await cp.session.close()


class RawClient:
    """A byte-level MQTT client over asyncio streams (packets as the test writes them)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, v5: bool
    ) -> None:
        self.reader, self.writer, self.v5 = reader, writer, v5
        self.buffer = bytearray()
        self.pending: list[cc.Packet] = []

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        v5: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> RawClient:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname
        )
        return cls(reader, writer, v5)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def packet(self, timeout_s: float = 10.0) -> cc.Packet | None:
        """The next packet from the server; None at end of stream."""
        async with asyncio.timeout(timeout_s):
            while not self.pending:
                chunk = await self.reader.read(65536)
                if not chunk:
                    return None
                self.buffer += chunk
                self.pending += cc.split_packets(self.buffer)
        return self.pending.pop(0)

    async def connect(self, **kwargs: Any) -> cc.ConnAck:
        kwargs.setdefault("level", 5 if self.v5 else 4)
        kwargs.setdefault("client_id", "raw")
        kwargs.setdefault("username", "raw-device")
        client_id = kwargs.pop("client_id")
        await self.send(cc.connect(client_id, **kwargs))
        packet = await self.packet()
        assert packet is not None, "closed before CONNACK"
        assert packet.type == 2, packet
        return cc.decode_connack(packet.body, self.v5)

    async def until_closed(self, timeout_s: float = 10.0) -> list[cc.Packet]:
        """Every packet up to the end of the stream (the server closed it)."""
        packets = []
        while True:
            try:
                packet = await self.packet(timeout_s)
            except (ConnectionError, ssl.SSLError):
                return packets
            if packet is None:
                return packets
            packets.append(packet)

    async def publish_acked(
        self, topic: str, messages: list[bytes], *, qos: int = 1, first_id: int = 1
    ) -> list[int]:
        """Pipeline QoS 1/2 PUBLISHes (and PUBRELs) and return the acked packet ids."""
        await self.send(
            b"".join(
                cc.publish(topic, m, qos=qos, packet_id=first_id + i, v5=self.v5)
                for i, m in enumerate(messages)
            )
        )
        acked: list[int] = []
        while len(acked) < len(messages):
            packet = await self.packet()
            assert packet is not None, f"closed after {len(acked)} acks"
            pid, reason = cc.decode_ack(packet.body)
            if packet.type == 5:
                await self.send(cc.pubrel(pid))
                comp = await self.packet()
                assert comp is not None
                assert comp.type == 7
            else:
                assert packet.type == 4, packet
            assert reason == 0, hex(reason)
            acked.append(pid)
        return acked

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def raw_rows(out: Path, endpoint_id: str | None = None) -> list[tuple[str | None, str]]:
    """(topic, payload) of every row of the raw Parquet delivered under `out`."""
    files = sorted(str(f) for f in out.glob(f"lake/**/{endpoint_id or '*'}/parquet/**/*.parquet"))
    if not files:
        return []
    rows = duckdb.sql(f"SELECT topic, payload FROM read_parquet({files})").fetchall()
    return [(r[0], r[1]) for r in rows]


async def wait_rows(
    out: Path, expected: set[tuple[str, str]], *, endpoint_id: str | None = None
) -> list[tuple[str | None, str]]:
    """Wait until every (topic, payload) in `expected` is in the raw Parquet."""

    def check() -> list[tuple[str | None, str]] | None:
        rows = raw_rows(out, endpoint_id)
        return rows if expected <= set(rows) else None

    found: list[tuple[str | None, str]] = await wait_for(
        check, timeout_s=30, what=f"{len(expected)} rows in raw Parquet"
    )
    return found
