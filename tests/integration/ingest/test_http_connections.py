"""The node's HTTP connection cap (`Limits.http_connections_max`, ADR 0014) with real
clients against an in-process node and an `edgemq node` process: connections over the cap get a 503 `connections`
(Retry-After, the JSON error shape) without their body being read and are closed; the
admitted ones keep working; the count drops as connections close, and a WebSocket
(MQTT at /mqtt) stops counting once upgraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from ingest import http_server
from ingest.http_server import REFUSAL_LINGER_S, REFUSALS_PER_CONNECTION
from ingest.node import Node
from ingest.settings import Limits
from tests.support.postgres import free_port
from tests.support.processes import NodeChild
from tests.support.stack import ControlPlane, control_plane, node_settings, running_node, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

CAP = 6
EXTRA = 4
LIMITS = Limits(
    http_connections_max=CAP,
    header_timeout_s=60.0,  # admitted keep-alive connections stay open through a test
    disk_reserve_bytes=16 * 1024 * 1024,
)
NDJSON = "application/x-ndjson"


@dataclass
class Stack:
    cp: ControlPlane
    node: Node
    endpoint_id: str

    @property
    def port(self) -> int:
        return self.node.bound_port

    def ingest_url(self) -> str:
        return f"{self.node.http_url}/ingest/{self.endpoint_id}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("http-connections")
    async with control_plane(str(tmp)) as cp:
        dest = await cp.local_destination(str(tmp / "objects"))
        endpoint = await cp.endpoint(dest["id"])
        settings = node_settings(cp, str(tmp / "node"), limits=LIMITS, long_poll_s=1)
        async with running_node(settings) as node:
            await wait_for(lambda: node.endpoints.lookup(endpoint["id"]), what="the endpoint")
            yield Stack(cp, node, endpoint["id"])


def open_count(stack: Stack) -> int:
    return stack.node.admission.http_connections


async def settled(stack: Stack, count: int) -> None:
    await wait_for(lambda: open_count(stack) == count, what=f"{count} open HTTP connections")


def refused_connections(metrics_text: str) -> float:
    """edgemq_ingest_rejected_total{reason="connections"} in a /metrics text (0 if absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == "edgemq_ingest_rejected_total" and s.labels == {"reason": "connections"}:
                return float(s.value)
    return 0.0


def refused_total(stack: Stack) -> float:
    return refused_connections(stack.node.metrics.render().decode())


async def post_to(
    session: aiohttp.ClientSession, url: str, api_key: str, n: int
) -> tuple[int, str, dict[str, Any]]:
    """POST one record; (status, Retry-After, JSON body)."""
    async with session.post(
        url,
        data=json.dumps({"n": n}).encode() + b"\n",
        headers={"X-API-Key": api_key, "Content-Type": NDJSON},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        return r.status, r.headers.get("Retry-After", ""), await r.json()


async def post(
    session: aiohttp.ClientSession, stack: Stack, n: int
) -> tuple[int, str, dict[str, Any]]:
    return await post_to(session, stack.ingest_url(), stack.cp.api_key, n)


async def new_clients_post(url: str, api_key: str, n: int) -> list[tuple[int, str, dict[str, Any]]]:
    """`n` new clients POST one record each, all at once; their answers."""
    clients = [aiohttp.ClientSession() for _ in range(n)]
    try:
        return await asyncio.gather(*(post_to(c, url, api_key, i) for i, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()


@contextlib.asynccontextmanager
async def keep_alive_clients(
    url: str, api_key: str, n: int
) -> AsyncIterator[list[aiohttp.ClientSession]]:
    """`n` clients, each holding one admitted keep-alive connection to the node (a
    connection another client just closed may take a moment to leave the count: a
    503 `connections` is retried meanwhile)."""
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(n)]
    try:
        for number, session in enumerate(sessions):
            async with asyncio.timeout(10):
                while True:
                    status, _, body = await post_to(session, url, api_key, number)
                    if status != 503 or body["error"]["reason"] != "connections":
                        break
                    await asyncio.sleep(0.02)  # pacing of the retry, not a settle-wait
            assert status == 200, body
        yield sessions
    finally:
        for session in sessions:
            await session.close()


@contextlib.asynccontextmanager
async def held_sessions(stack: Stack, n: int) -> AsyncIterator[list[aiohttp.ClientSession]]:
    """`n` clients, each with one keep-alive connection to the in-process node."""
    async with keep_alive_clients(stack.ingest_url(), stack.cp.api_key, n) as sessions:
        await settled(stack, n)
        yield sessions


async def raw_exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Connect, send `data` (maybe nothing), read to EOF; (all read, seconds it took)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if data:
            writer.write(data)
            await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer, loop.time() - started


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


async def test_connections_over_the_cap_get_503_connections_and_the_admitted_ones_work(
    stack: Stack,
) -> None:
    await settled(stack, 0)
    before = refused_total(stack)
    async with held_sessions(stack, CAP) as held:
        # Real clients over the cap: 503, Retry-After, the JSON shape of every 503.
        answers = await new_clients_post(stack.ingest_url(), stack.cp.api_key, EXTRA)
        for status, retry_after, body in answers:
            assert status == 503, body
            assert retry_after == str(LIMITS.retry_after_s)
            assert body == {
                "error": {
                    "status": 503,
                    "code": "overloaded",
                    "message": "the node is at its HTTP connection limit; retry later",
                    "reason": "connections",
                }
            }
        assert refused_total(stack) == before + EXTRA
        # Still the admitted ones only, and they keep working on their connections.
        assert open_count(stack) == CAP
        again = await asyncio.gather(*(post(s, stack, 2000 + i) for i, s in enumerate(held)))
        assert [status for status, _, _ in again] == [200] * CAP, again
        # A liveness probe is answered even over the cap (the process is up).
        raw, _ = await raw_exchange(stack.port, b"GET /healthz HTTP/1.1\r\nHost: n\r\n\r\n")
        assert parse(raw)[0] == 200, raw
        assert open_count(stack) == CAP
    # The held connections closed: the count drops and new clients are admitted.
    await settled(stack, 0)
    async with aiohttp.ClientSession() as fresh:
        status, _, body = await post(fresh, stack, 3000)
    assert status == 200, body
    await settled(stack, 0)


async def test_a_refused_request_is_answered_without_its_body_being_read(stack: Stack) -> None:
    await settled(stack, 0)
    head = (
        f"POST /ingest/{stack.endpoint_id} HTTP/1.1\r\nHost: node\r\n"
        f"X-API-Key: {stack.cp.api_key}\r\nContent-Type: {NDJSON}\r\n"
        f"Content-Length: {8 * 1024 * 1024}\r\n\r\n"
    ).encode()
    async with held_sessions(stack, CAP):
        # The head promises 8 MiB and nothing of the body is ever sent: the answer
        # comes anyway, well before the body deadline, and the connection is closed.
        # (Were the body waited for, its deadline would end it with a 408 instead.)
        raw, _ = await raw_exchange(stack.port, head)
        status, headers, body = parse(raw)
        assert (status, body["error"]["reason"]) == (503, "connections"), raw
        assert headers["retry-after"] == str(LIMITS.retry_after_s)
        assert headers["connection"] == "close"
        # Part of a body sent along: the same answer, the rest is discarded.
        raw, _ = await raw_exchange(stack.port, head + b'{"n": 1}\n' * 20_000)
        assert parse(raw)[0] == 503, raw
        assert stack.node.admission.inflight_bytes == 0


async def test_a_silent_connection_over_the_cap_is_answered_at_the_deadline(
    stack: Stack,
) -> None:
    """A refused connection that sends nothing gets its 503 once REFUSAL_LINGER_S has
    passed (not before), then is closed."""
    await settled(stack, 0)
    async with held_sessions(stack, CAP):
        before = refused_total(stack)
        results = await asyncio.gather(*(raw_exchange(stack.port, b"") for _ in range(3)))
    for raw, took in results:
        assert parse(raw)[0] == 503, raw
        assert took >= REFUSAL_LINGER_S * 0.9, took
    assert refused_total(stack) == before + 3


async def answer_to_request_line(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes:
    """Send a request line on an open connection and read to EOF: the answer, or b""
    when the node had closed the connection without one."""
    try:
        writer.write(b"POST /ingest/x HTTP/1.1\r\nHost: n\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(-1)
    except ConnectionError:
        return b""


async def test_refusals_cannot_pile_up(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once REFUSALS_PER_CONNECTION x the cap refusals are pending, a new connection
    is closed at once without an answer. The refusal deadline is pushed far out here,
    so the pending ones stay pending however slowly the connections arrive."""
    monkeypatch.setattr(http_server, "REFUSAL_LINGER_S", 300.0)
    await settled(stack, 0)
    pending_max = REFUSALS_PER_CONNECTION * CAP
    async with held_sessions(stack, CAP):
        before = refused_total(stack)
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", stack.port) for _ in range(pending_max + 3))
        )
        try:
            # Only the connections closed without an answer are counted yet.
            await wait_for(lambda: refused_total(stack) == before + 3, what="3 connections dropped")
            answers = await asyncio.gather(*(answer_to_request_line(r, w) for r, w in opened))
        finally:
            for _, writer in opened:
                writer.close()
    answered = [raw for raw in answers if raw]
    assert (len(answered), len(answers) - len(answered)) == (pending_max, 3), answers
    for raw in answered:
        status, _, body = parse(raw)
        assert (status, body["error"]["reason"]) == (503, "connections"), raw
    assert refused_total(stack) == before + pending_max + 3


async def test_a_websocket_stops_counting_once_upgraded(stack: Stack) -> None:
    await settled(stack, 0)
    async with aiohttp.ClientSession() as session:
        sockets = [
            await session.ws_connect(f"{stack.node.http_url}/mqtt", protocols=("mqtt",))
            for _ in range(CAP + EXTRA)
        ]
        try:
            assert all(ws.protocol == "mqtt" for ws in sockets)
            await settled(stack, 0)
            async with held_sessions(stack, CAP):  # HTTP still has its whole cap
                pass
        finally:
            for ws in sockets:
                await ws.close()
    await settled(stack, 0)


async def test_the_node_process_caps_its_connections_from_the_environment(
    stack: Stack, tmp_path: Path
) -> None:
    """`edgemq node` (uvloop, EDGEMQ_HTTP_CONNECTIONS_MAX) behaves the same."""
    node = NodeChild(
        data_dir=tmp_path / "node",
        control_url=stack.cp.url,
        node_key=stack.cp.node_key,
        http_port=free_port(),
        env={"EDGEMQ_HTTP_CONNECTIONS_MAX": str(CAP), "EDGEMQ_HEADER_TIMEOUT_S": "60"},
    )
    url, key = f"{node.url}/ingest/{stack.endpoint_id}", stack.cp.api_key
    try:
        node.start()
        async with aiohttp.ClientSession() as session:
            await node.wait_ready(session)
        # /metrics is scraped through a connection admitted first and kept alive: it
        # is one of the CAP, so the scrape is never refused (nor counted) itself.
        scraper = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=60)
        )
        async with scraper:

            async def scrape() -> str:
                async with scraper.get(f"{node.url}/metrics") as r:
                    text = await r.text()
                    assert r.status == 200, text
                    return text

            assert refused_connections(await scrape()) == 0
            async with keep_alive_clients(url, key, CAP - 1) as held:
                answers = await new_clients_post(url, key, EXTRA)
                assert [(a[0], a[1], a[2]["error"]["reason"]) for a in answers] == [
                    (503, str(LIMITS.retry_after_s), "connections")
                ] * EXTRA, answers
                again = await asyncio.gather(
                    *(post_to(s, url, key, 200 + i) for i, s in enumerate(held))
                )
                assert [a[0] for a in again] == [200] * (CAP - 1), again
                text = await scrape()
        assert refused_connections(text) == EXTRA, text
        assert await node.terminate() == 0, node.log_tail()
    finally:
        await node.close()
