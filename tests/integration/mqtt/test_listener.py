"""The listener: SNI and WebSocket Host routing, backpressure from a full WAL, flood
limits, drain with DISCONNECT 0x8B after the owed acks, and the MQTT metrics."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from ingest.mqtt import client_codec as cc
from ingest.settings import MqttSettings
from tests.support.stack import wait_for
from wal import AppendAck, WalFull

from .support import RawClient, mqtt_stack
from .tls import self_signed
from .walwatch import Gate, frames_of, recording


async def test_the_tls_sni_label_selects_the_endpoint(tmp_path: Path) -> None:
    cert = self_signed(tmp_path)
    settings = MqttSettings(
        tls_cert_path=str(cert.cert_path), tls_key_path=str(cert.key_path), tls_port=0
    )
    async with mqtt_stack(tmp_path, mqtt=settings, endpoints=2) as stack:
        second = stack.extra[0]["id"]
        for endpoint_id in (stack.endpoint_id, second):
            wal = await stack.wal(endpoint_id)
            client = await RawClient.open(
                "127.0.0.1",
                stack.node.mqtt.tls_port,
                v5=True,
                ssl_context=cert.client_context(),
                server_hostname=f"{endpoint_id}.mqtt.test",
            )
            with recording(wal) as chunks:
                ack = await client.connect(username="no-endpoint-here", password=stack.cp.api_key)
                assert ack.code == 0
                assert await client.publish_acked(f"sni/{endpoint_id}", [b"x"]) == [1]
            assert frames_of(chunks) == [(f"sni/{endpoint_id}", b"x")]
            await client.close()


async def test_the_websocket_host_label_selects_the_endpoint_and_text_frames_are_refused(
    tmp_path: Path,
) -> None:
    async with mqtt_stack(tmp_path, endpoints=2) as stack:
        second = stack.extra[0]["id"]
        wal = await stack.wal(second)
        url = f"http://127.0.0.1:{stack.node.bound_port}/mqtt"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                url, protocols=("mqtt",), headers={"Host": f"{second}.ingest.test"}
            ) as ws,
        ):
            assert ws.protocol == "mqtt"
            with recording(wal) as chunks:
                await ws.send_bytes(
                    cc.connect("ws-1", username="dev", password=stack.cp.api_key)
                    + cc.publish("ws/host", b"via host", qos=1, packet_id=3)
                )
                buffer = bytearray()
                packets: list[cc.Packet] = []
                while len(packets) < 2:
                    buffer += await ws.receive_bytes(timeout=10)
                    packets += cc.split_packets(buffer)
            assert [p.type for p in packets] == [2, 4]
            assert frames_of(chunks) == [("ws/host", b"via host")]
            await ws.send_str("not binary")
            closing = await ws.receive(timeout=10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_a_full_wal_holds_the_read_until_it_fits_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
) -> None:
    async with mqtt_stack(tmp_path) as stack:
        wal = await stack.wal()
        client = await stack.raw(username=f"dev@{stack.endpoint_id}")
        with recording(wal) as chunks:
            recorded, refusals = wal.append_encoded, [3]

            def full_at_first(data: bytes, frames: int) -> asyncio.Future[AppendAck]:
                if refusals[0]:
                    refusals[0] -= 1
                    raise WalFull(len(data), 0, 1)
                return recorded(data, frames)

            wal.append_encoded = full_at_first  # type: ignore[method-assign]
            assert await client.publish_acked("held", [b"a", b"b"]) == [1, 2]
            wal.append_encoded = recorded  # type: ignore[method-assign]
        assert frames_of(chunks) == [("held", b"a"), ("held", b"b")]
        assert (
            'edgemq_mqtt_held_total{reason="wal_full"} 3.0' in stack.node.metrics.render().decode()
        )
        await client.close()


async def test_sockets_beyond_the_flood_limits_are_closed_at_once(tmp_path: Path) -> None:
    settings = MqttSettings(connecting_max=2, connections_max=3)
    async with mqtt_stack(tmp_path, mqtt=settings) as stack:
        idle = [await RawClient.open("127.0.0.1", stack.port) for _ in range(2)]
        extra = await RawClient.open("127.0.0.1", stack.port)
        assert await extra.until_closed() == [], "a third socket without CONNECT"
        for i, client in enumerate(idle):
            user, key = f"d@{stack.endpoint_id}", stack.cp.api_key
            assert (await client.connect(client_id=f"c{i}", username=user, password=key)).code == 0
        third = await stack.raw(client_id="third", username=f"d@{stack.endpoint_id}")
        fourth = await RawClient.open("127.0.0.1", stack.port)
        assert await fourth.until_closed() == [], "a fourth socket beyond connections_max"
        metrics = stack.node.metrics.render().decode()
        assert 'edgemq_mqtt_refused_total{reason="connecting"} 1.0' in metrics
        assert 'edgemq_mqtt_refused_total{reason="node_connections"} 1.0' in metrics
        for client in [*idle, extra, third, fourth]:
            await client.close()


@pytest.mark.parametrize("v5", [False, True])
async def test_drain_flushes_owed_acks_then_disconnects_with_server_shutting_down(
    tmp_path: Path, v5: bool
) -> None:
    async with mqtt_stack(tmp_path, mqtt=MqttSettings(drain_ack_wait_s=10.0)) as stack:
        wal = await stack.wal()
        client = await stack.raw(v5=v5, username=f"dev@{stack.endpoint_id}")
        with Gate(wal) as gate:
            await client.send(cc.publish("drain", b"owed", qos=1, packet_id=1, v5=v5))
            await client.send(cc.PINGREQ)
            assert (await client.packet()) == cc.Packet(13, 0, b"")
            drain = asyncio.create_task(stack.node.drain())
            await wait_for(lambda: stack.node.mqtt.draining, what="the drain to start")
            gate.open()
            packets = await client.until_closed()
        expected = [4, 14] if v5 else [4]
        assert [p.type for p in packets] == expected
        if v5:
            assert cc.decode_disconnect_reason(packets[-1].body) == 0x8B
        assert await drain
        with pytest.raises(ConnectionRefusedError):
            await RawClient.open("127.0.0.1", stack.port)
        await client.close()


async def test_mqtt_metrics_are_exported(tmp_path: Path) -> None:
    async with mqtt_stack(tmp_path) as stack:
        client = await stack.raw(username=f"dev@{stack.endpoint_id}")
        assert await client.publish_acked("m", [b"1", b"2"]) == [1, 2]
        url = f"http://127.0.0.1:{stack.node.bound_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as r:
            text = await r.text()
        await client.close()
    assert 'edgemq_mqtt_connections{transport="tcp"} 1.0' in text
    assert 'edgemq_mqtt_packets_total{type="publish"} 2.0' in text
    assert 'edgemq_mqtt_packets_total{type="connect"} 1.0' in text
    assert re.search(r"^edgemq_mqtt_ack_seconds_count [1-9]", text, re.MULTILINE)
    assert (
        f'edgemq_ingest_records_total{{endpoint="{stack.endpoint_id}",transport="mqtt"}} 2.0'
        in text
    )
