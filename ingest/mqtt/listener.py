"""The node's MQTT listener: TCP and TLS servers, the table of live sessions, limits.

- TCP on `NodeSettings.mqtt_port`; TLS on `MqttSettings.tls_port` when a certificate
  and key are configured (the SNI name's first label selects the endpoint, recorded by
  the context's `sni_callback`). WebSocket sessions (websocket.py) register here too.
- Flood protection: at most `connections_max` sockets, of which at most
  `connecting_max` have not completed CONNECT; more are closed at once. A socket must
  CONNECT within `connect_timeout_s` (TLS: also its handshake).
- Per endpoint, `mqtt_config.max_connections` sessions on this node (0x97 beyond); a
  CONNECT with the client id of a live session of the same endpoint takes it over (the
  old one gets DISCONNECT 0x8E after its owed acks).
- One timer task (every `tick_s`) checks keep-alives, CONNECT deadlines, token expiry
  and config changes for all sessions; no timer per connection.
- Drain: stop accepting, every session stops reading, its owed acks are flushed (up to
  `drain_ack_wait_s`), then v5 clients get DISCONNECT 0x8B and all are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from .codec import QUOTA_EXCEEDED, SERVER_SHUTTING_DOWN, SESSION_TAKEN_OVER
from .connect import Grant, Refused
from .packets import PACKET_NAMES
from .routing import Directory, first_label
from .session import MqttSession

if TYPE_CHECKING:
    from ..node import Node
    from ..runtime import Endpoints

log = logging.getLogger(__name__)


class MqttListener:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.settings = node.settings.mqtt
        self.auth = node.auth
        self.admission = node.admission
        self.clock = node.clock
        self.metrics = node.metrics
        self.sessions: set[MqttSession] = set()
        self.connecting = 0
        self.draining = False
        self.tcp_port = 0
        self.tls_port = 0
        self._per_endpoint: dict[str, int] = {}
        self._by_client: dict[tuple[str, str], MqttSession] = {}
        self._servers: list[asyncio.Server] = []
        self._ticker: asyncio.Task[None] | None = None
        self._directory: Directory | None = None
        self._sni: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._empty = asyncio.Event()
        self._empty.set()
        m = self.metrics
        self._packets: dict[int, Counter] = {
            kind: m.mqtt_packets.labels(name) for kind, name in PACKET_NAMES.items()
        }
        self._records: dict[str, tuple[Counter, Counter]] = {}
        self._gauges: dict[str, Gauge] = {}

    @property
    def endpoints(self) -> Endpoints:
        return self.node.endpoints

    # -------------------------------------------------------------- servers
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.node.settings.host
        server = await loop.create_server(
            lambda: MqttSession(self, "tcp"), host, self.node.settings.mqtt_port, backlog=1024
        )
        self._servers.append(server)
        self.tcp_port = int(server.sockets[0].getsockname()[1])
        s = self.settings
        if s.tls_cert_path and s.tls_key_path:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            await asyncio.to_thread(context.load_cert_chain, s.tls_cert_path, s.tls_key_path)
            context.sni_callback = self._on_sni
            server = await loop.create_server(
                lambda: MqttSession(self, "tls"),
                host,
                s.tls_port,
                ssl=context,
                ssl_handshake_timeout=s.connect_timeout_s,
                backlog=1024,
            )
            self._servers.append(server)
            self.tls_port = int(server.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick_forever(), name="mqtt-ticker")
        log.info("MQTT on %s:%d (TLS port %s)", host, self.tcp_port, self.tls_port or "off")

    def _on_sni(self, ssl_object: Any, server_name: str | None, context: Any) -> None:
        if server_name:
            self._sni[ssl_object] = server_name
        return None

    def tls_label(self, transport: Any) -> str | None:
        """The first label of the TLS SNI name of a session's transport, if any."""
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        name = self._sni.get(ssl_object) if ssl_object is not None else None
        return first_label(name)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            now, wall, directory = time.monotonic(), time.time(), self.directory()
            for session in list(self.sessions):
                session.tick(now, wall, directory)

    def directory(self) -> Directory:
        """The routing index of the node's current snapshot (rebuilt when it changes)."""
        snapshot = self.node.endpoints.snapshot
        if self._directory is None or self._directory.snapshot is not snapshot:
            self._directory = Directory(snapshot)
        return self._directory

    async def drain(self) -> None:
        """Stop taking connections; flush owed acks; DISCONNECT 0x8B; close all."""
        self.draining = True
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.retire(SERVER_SHUTTING_DOWN, "draining")
        await self._wait_empty(self.settings.drain_ack_wait_s + 1.0)

    async def stop(self) -> None:
        self.draining = True
        for server in self._servers:
            server.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for session in list(self.sessions):
            session.abort()
        await self._wait_empty(2.0)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _wait_empty(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._empty.wait()

    def url(self, advertise_host: str) -> str:
        return f"mqtt://{advertise_host}:{self.tcp_port}"

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        from .websocket import serve_websocket

        return await serve_websocket(self, request)

    # ------------------------------------------------------ session table
    def add(self, session: MqttSession) -> bool:
        """A new socket; False when it must be closed at once (limits, draining)."""
        s = self.settings
        if self.draining:
            self.refused("draining")
            return False
        if len(self.sessions) >= s.connections_max:
            self.refused("node_connections")
            return False
        if self.connecting >= s.connecting_max:
            self.refused("connecting")
            return False
        self.sessions.add(session)
        self._empty.clear()
        self.connecting += 1
        session.pending_connect = True
        self._gauge(session.kind).inc()
        return True

    def claim(self, session: MqttSession, grant: Grant) -> None:
        """Count the session against its endpoint's max_connections (Refused beyond)."""
        endpoint = grant.endpoint
        config = endpoint.mqtt_config
        assert config is not None
        key = (endpoint.id, grant.client_id)
        old = self._by_client.get(key)
        count = self._per_endpoint.get(endpoint.id, 0)
        if old is None and count >= config.max_connections:
            raise Refused(QUOTA_EXCEEDED, "max_connections", "the endpoint's max_connections")
        self._by_client[key] = session
        self._per_endpoint[endpoint.id] = count + 1
        session.claimed = True
        if old is not None:
            old.retire(SESSION_TAKEN_OVER, "takeover")

    def accepted(self, session: MqttSession) -> None:
        if session.pending_connect:
            session.pending_connect = False
            self.connecting -= 1

    def remove(self, session: MqttSession) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.accepted(session)
        self._gauge(session.kind).dec()
        grant = session.grant
        if session.claimed and grant is not None:
            session.claimed = False
            endpoint_id = grant.endpoint.id
            self._per_endpoint[endpoint_id] -= 1
            key = (endpoint_id, grant.client_id)
            if self._by_client.get(key) is session:
                del self._by_client[key]
        if not self.sessions:
            self._empty.set()

    def connections(self, endpoint_id: str) -> int:
        return self._per_endpoint.get(endpoint_id, 0)

    # ------------------------------------------------------------ metrics
    def _gauge(self, kind: str) -> Gauge:
        gauge = self._gauges.get(kind)
        if gauge is None:
            gauge = self._gauges[kind] = self.metrics.mqtt_connections.labels(kind)
        return gauge

    def count_packet(self, kind: int) -> None:
        counter = self._packets.get(kind)
        if counter is not None:
            counter.inc()

    def count_publishes(self, n: int) -> None:
        self._packets[3].inc(n)

    def refused(self, reason: str) -> None:
        self.metrics.mqtt_refused.labels(reason).inc()

    def disconnected(self, reason: str) -> None:
        self.metrics.mqtt_disconnects.labels(reason).inc()

    def held(self, reason: str) -> None:
        self.metrics.mqtt_held.labels(reason).inc()

    def durable(self, session: MqttSession, frames: int, nbytes: int, ack_s: float | None) -> None:
        """A batch of `session` is fsynced (counted per batch, not per message)."""
        grant = session.grant
        assert grant is not None
        endpoint_id = grant.endpoint.id
        pair = self._records.get(endpoint_id)
        if pair is None:
            m = self.metrics
            pair = self._records[endpoint_id] = (
                m.records_in.labels(endpoint_id, "mqtt"),
                m.bytes_in.labels(endpoint_id, "mqtt"),
            )
        pair[0].inc(frames)
        pair[1].inc(nbytes)
        if ack_s is not None:
            self.metrics.mqtt_ack_seconds.observe(ack_s)
