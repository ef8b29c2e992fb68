"""MQTT over WebSocket at `/mqtt` on the ingest HTTP port (subprotocol `mqtt`).

The bytes of binary WebSocket messages are one MQTT byte stream (a message may hold
part of a packet or several), fed to the same `MqttSession` as TCP through
`WebSocketLink`, a transport look-alike: `write` queues bytes for one writer task per
connection, `pause_reading` stops the receive loop, `close` flushes then closes. The
endpoint label is the first label of the `Host` header. A text message is a protocol
violation (MQTT over WebSocket is binary only) and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .codec import MalformedPacket
from .routing import first_label
from .session import MqttSession

if TYPE_CHECKING:
    from ..node import Node
    from .listener import MqttListener

SUBPROTOCOLS = ("mqtt",)
WRITE_HIGH_BYTES = 256 * 1024
"""Above this many queued bytes the session is told to pause reading (pause_writing)."""
CLOSE_TIMEOUT_S = 2.0


class WebSocketLink:
    def __init__(self, ws: web.WebSocketResponse, peer: Any) -> None:
        self._ws = ws
        self._peer = peer
        self._out = bytearray()
        self._wake = asyncio.Event()
        self._closing = False
        self._aborted = False
        self._write_paused = False
        self.protocol: MqttSession | None = None
        self.readable = asyncio.Event()
        self.readable.set()
        self.writer = asyncio.create_task(self._write_loop(), name="mqtt-ws-writer")

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._out += data
        self._wake.set()
        if len(self._out) > WRITE_HIGH_BYTES and not self._write_paused:
            self._write_paused = True
            if self.protocol is not None:
                self.protocol.pause_writing()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self.readable.set()

    def abort(self) -> None:
        self._aborted = True
        self._out.clear()
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    async def _write_loop(self) -> None:
        ws = self._ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._out and not self._aborted:
                    data = bytes(self._out)
                    self._out.clear()
                    await ws.send_bytes(data)
                    if self._write_paused and not self._out:
                        self._write_paused = False
                        if self.protocol is not None:
                            self.protocol.resume_writing()
                    self._wake.set()
                elif self._closing:
                    break
        except ConnectionError:
            pass  # the peer went away; the receive loop sees it too
        finally:
            self.readable.set()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close()


async def serve_websocket(listener: MqttListener, request: web.Request) -> web.StreamResponse:
    """Run one MQTT session over the WebSocket of `request` until either side closes."""
    if listener.draining:
        raise web.HTTPServiceUnavailable(reason="Draining")
    ws = web.WebSocketResponse(
        protocols=SUBPROTOCOLS,
        max_msg_size=4 * listener.settings.max_packet_bytes,
        compress=False,
        autoping=True,
    )
    await ws.prepare(request)
    transport = request.transport
    link = WebSocketLink(ws, transport.get_extra_info("peername") if transport else None)
    session = MqttSession(listener, "ws", label=first_label(request.host) or "")
    link.protocol = session
    session.attach(link)
    try:
        while not link.is_closing():
            await link.readable.wait()
            if link.is_closing():
                break
            message = await ws.receive()
            if message.type == WSMsgType.BINARY:
                session.data_received(message.data)
            elif message.type == WSMsgType.TEXT:
                session.fail(MalformedPacket("MQTT over WebSocket uses binary messages"))
            else:
                break  # CLOSE, CLOSING, CLOSED, ERROR
    finally:
        session.connection_lost(None)
        link.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1.0):
                await link.writer
    return ws


def websocket_handler(node: Node) -> Any:
    """The `/mqtt` route handler for `build_app` (the listener is the node's)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await node.mqtt.websocket(request)

    return handler
