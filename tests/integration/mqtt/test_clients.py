"""Real MQTT clients publish to the node over TCP, TLS and WebSocket — paho-mqtt
(3.1.1 and 5.0), aiomqtt, amqtt's client and Debian's `mosquitto_pub` — and every
message they had acknowledged lands in the raw Parquet of the local store with its
topic; a view filtering on the `topic` virtual column keeps only matching rows."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import duckdb
import paho.mqtt.client as paho
import pytest
import pytest_asyncio
from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_1, QOS_2

from ingest.settings import MqttSettings

from .support import Stack, mqtt_stack, wait_rows
from .tls import Certificate, self_signed

pytestmark = pytest.mark.asyncio(loop_scope="module")
TRANSPORTS = ["tcp", "tls", "ws"]
Messages = list[tuple[str, str, int]]  # (topic, payload, qos)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, cert: Certificate
) -> AsyncIterator[Stack]:
    """One node for the module (each test publishes under its own topics and payloads)."""
    tls = MqttSettings(
        tls_cert_path=str(cert.cert_path), tls_key_path=str(cert.key_path), tls_port=0
    )
    async with mqtt_stack(tmp_path_factory.mktemp("clients"), mqtt=tls) as s:
        yield s


def _messages(tag: str, n: int = 12, qos: tuple[int, ...] = (0, 1, 2)) -> Messages:
    """Half under sensors/, half elsewhere; JSON payloads; QoS cycling through `qos`."""
    return [
        (
            f"{'sensors' if i % 2 else 'other'}/{tag}/{i}",
            f'{{"n": {i}, "tag": "{tag}"}}',
            qos[i % len(qos)],
        )
        for i in range(n)
    ]


def _where(stack: Stack, transport: str) -> tuple[str, int]:
    node = stack.node
    if transport == "tls":
        return "localhost", node.mqtt.tls_port
    if transport == "ws":
        return "127.0.0.1", node.bound_port
    return "127.0.0.1", node.mqtt.tcp_port


async def _expect_delivered(stack: Stack, messages: Messages) -> None:
    await wait_rows(stack.out, {(t, p) for t, p, _ in messages}, endpoint_id=stack.endpoint_id)


# ----------------------------------------------------------------- paho
def _paho_publish(
    host: str,
    port: int,
    transport: str,
    version: paho.MQTTProtocolVersion,
    username: str,
    password: str,
    messages: Messages,
    cert: Certificate,
) -> list[int]:
    """Publish with paho's network thread; the reason codes of every QoS 1/2 ack."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"paho-{transport}-{int(version)}",
        protocol=version,
        transport="websockets" if transport == "ws" else "tcp",
    )
    if transport == "ws":
        client.ws_set_options(path="/mqtt")
    if transport == "tls":
        client.tls_set_context(cert.client_context())
    client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_publish = lambda _c, _u, _mid, reason, _p: codes.append(reason.value)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(t, p.encode(), qos=q) for t, p, q in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
        assert all(info.is_published() for info in infos)
    finally:
        client.disconnect()
        client.loop_stop()
    return codes


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("version", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5.0"])
async def test_paho_publishes_over_every_transport_and_every_message_lands_with_its_topic(
    stack: Stack, cert: Certificate, transport: str, version: paho.MQTTProtocolVersion
) -> None:
    messages = _messages(f"paho{int(version)}{transport}")
    host, port = _where(stack, transport)
    user = f"device-1@{stack.endpoint_id}"
    codes = await asyncio.to_thread(
        _paho_publish, host, port, transport, version, user, stack.cp.api_key, messages, cert
    )
    assert codes == [0] * len(messages), "QoS 0 publishes count as published too"
    await _expect_delivered(stack, messages)


# ---------------------------------------------------------------- aiomqtt
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_aiomqtt_publishes_over_every_transport(
    stack: Stack, cert: Certificate, transport: str
) -> None:
    messages = _messages(f"aio{transport}", qos=(1, 2))
    host, port = _where(stack, transport)
    async with aiomqtt.Client(
        host,
        port,
        username="aio-device",
        password=stack.cp.api_key,
        identifier=f"aio-{transport}",
        protocol=aiomqtt.ProtocolVersion.V5,
        transport="websockets" if transport == "ws" else "tcp",
        websocket_path="/mqtt" if transport == "ws" else None,
        tls_context=cert.client_context() if transport == "tls" else None,
    ) as client:
        for topic, payload, qos in messages:
            await client.publish(topic, payload, qos=qos, timeout=10)
    await _expect_delivered(stack, messages)


# ------------------------------------------------------------------ amqtt
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_amqtt_client_publishes_over_every_transport(
    stack: Stack, cert: Certificate, transport: str
) -> None:
    messages = _messages(f"amqtt{transport}", qos=(1, 2))
    host, port = _where(stack, transport)
    scheme = {"tcp": "mqtt", "tls": "mqtts", "ws": "ws"}[transport]
    path = "/mqtt" if transport == "ws" else "/"
    uri = f"{scheme}://amqtt-device:{stack.cp.api_key}@{host}:{port}{path}"
    client = MQTTClient(client_id=f"amqtt-{transport}", config={"auto_reconnect": False})
    await client.connect(uri, cafile=str(cert.cert_path) if transport == "tls" else None)
    try:
        for topic, payload, qos in messages:
            await client.publish(topic, payload.encode(), qos=QOS_1 if qos == 1 else QOS_2)
    finally:
        await client.disconnect()
    await _expect_delivered(stack, messages)


# ---------------------------------------------------------- mosquitto_pub
@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="needs mosquitto-clients")
@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_mosquitto_pub_publishes_lines_at_qos_1(
    stack: Stack, cert: Certificate, transport: str, version: str
) -> None:
    topic = f"sensors/mosquitto/{version}/{transport}"
    lines = [f'{{"line": {i}}}' for i in range(20)]
    host, port = _where(stack, transport)
    args = ["-h", host, "-p", str(port), "-V", version, "-q", "1", "-t", topic, "-l"]
    args += ["-u", "mosquitto-device", "-P", stack.cp.api_key, "-i", f"mosq-{version}"]
    if transport == "tls":
        args += ["--cafile", str(cert.cert_path)]
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(("\n".join(lines) + "\n").encode()), 30)
    assert proc.returncode == 0, output.decode()
    await _expect_delivered(stack, [(topic, line, 1) for line in lines])


# ------------------------------------------------------------------- views
TOPIC_VIEW = {
    "columns": [
        {"name": "device_topic", "type": "VARCHAR", "source": "topic"},
        {"name": "n", "type": "BIGINT", "path": "$.n"},
    ],
    "filters": [{"condition": "topic LIKE 'sensors/%'"}],
}


async def test_a_view_filtering_on_the_topic_gets_only_the_matching_mqtt_rows(
    tmp_path: Path, cert: Certificate
) -> None:
    messages = _messages("view", n=20, qos=(1,))
    async with mqtt_stack(tmp_path, view=TOPIC_VIEW) as stack:
        codes = await asyncio.to_thread(
            _paho_publish,
            "127.0.0.1",
            stack.port,
            "tcp",
            paho.MQTTv5,
            "dev",
            stack.cp.api_key,
            messages,
            cert,
        )
        assert codes == [0] * 20
        await _expect_delivered(stack, messages)
        views = stack.out / "lake" / "views" / "mqtt_view"

        def view_rows() -> list[tuple[str, int]]:
            files = sorted(views.rglob("*.parquet"))
            if not files:
                return []
            query = f"SELECT device_topic, n FROM read_parquet({[str(f) for f in files]})"
            return [(r[0], r[1]) for r in duckdb.sql(query).fetchall()]

        from tests.support.stack import wait_for

        rows = await wait_for(lambda: len(view_rows()) >= 10 and view_rows(), what="view rows")
    assert sorted(rows) == sorted((t, i) for i, (t, _, _) in enumerate(messages) if i % 2)
