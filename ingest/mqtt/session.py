"""One MQTT connection: an asyncio `Protocol` fed by TCP, TLS or the WebSocket bridge.

Reading: `data_received` parses every whole packet in the bytes it has — no task per
packet, no awaits. A partial packet waits in `_chunks` until its declared length has
arrived (a slow sender costs linear time, never a re-parse per byte). PUBLISH goes to
the connection's `Publisher` (publisher.py: one WAL append per read, acks after fsync
in arrival order): runs of common QoS 0/1 PUBLISHes through the fused loop of
fastpath.py, every other one through `Publisher.publish`, which builds the same frames
and acks. Control packets are answered here.

Reading is paused (never dropped) while any of these holds:
- HELD: the publisher holds a batch the node could not take yet (it retries);
- INFLIGHT: `receive_maximum` PUBACK/PUBREC are owed; resumes at half that;
- WRITE: the transport's write buffer is full (the client does not read its acks);
- WAIT: the endpoint's WAL is being opened, or the session is closing.
While HELD or INFLIGHT the keep-alive is not enforced (the node is not reading the
client's PINGREQs); a client that stops reading its acks (WRITE) still times out.

States: NEW → (CONNECT) → OPENING (only while the endpoint's WAL is being opened) →
OPEN → CLOSING (graceful: reading stopped, owed acks flushed for up to
`drain_ack_wait_s`, then a v5 DISCONNECT with the reason) → CLOSED. Errors close at
once: v5 DISCONNECT with the reason code (CONNACK with it while connecting), 3.1.1
just closes. Wills are decoded and dropped, never published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from . import connect as connecting
from .codec import (
    KEEP_ALIVE_TIMEOUT,
    NOT_AUTHORIZED,
    PACKET_TOO_LARGE,
    SERVER_UNAVAILABLE,
    SUBSCRIPTION_IDS_NOT_SUPPORTED,
    UNSUPPORTED_PROTOCOL_VERSION,
    MalformedPacket,
    MqttError,
    ProtocolError,
    decode_varint,
)
from .fastpath import take_publishes
from .packets import (
    AUTH,
    CONNECT,
    DISCONNECT,
    PACKET_NAMES,
    PINGREQ,
    PINGRESP_BYTES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    UnsupportedVersion,
    check_pingreq,
    decode_connect,
    decode_disconnect,
    decode_pubrel,
    decode_subscribe,
    decode_unsubscribe,
    encode_disconnect,
    encode_suback,
    encode_unsuback,
    subscribe_reason,
)
from .publisher import Publisher

if TYPE_CHECKING:
    from ..runtime import EndpointRuntime
    from .listener import MqttListener
    from .routing import Directory

log = logging.getLogger(__name__)

NEW, OPENING, OPEN, CLOSING, CLOSED = range(5)
HELD, INFLIGHT, WRITE, WAIT = 1, 2, 4, 8
REASON_LABELS = {
    0x81: "malformed",
    0x82: "protocol_error",
    0x8D: "keepalive",
    0x93: "receive_maximum",
    0x94: "topic_alias",
    0x95: "packet_too_large",
    0x9A: "retain",
    0x9B: "qos_not_supported",
    0xA1: "subscription_id",
}


class Link(Protocol):
    """What a session needs from its transport (asyncio's, or the WebSocket bridge)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class MqttSession(asyncio.Protocol):
    fast_publish = True  # common PUBLISHes through fastpath.py (False: Publisher.publish)

    def __init__(self, listener: MqttListener, kind: str, label: str | None = None) -> None:
        self.listener = listener
        self.kind = kind  # tcp | tls | ws (metric label)
        self.label = label  # the WebSocket Host label; TLS SNI is looked up at CONNECT
        self.state = NEW
        self.created = self.last_rx = time.monotonic()
        self.claimed = False  # counted against its endpoint's max_connections
        self.pending_connect = False  # counted against the listener's connecting_max
        self.v5 = False
        self.client_id = ""
        self.grant: connecting.Grant | None = None
        self.directory: Directory | None = None
        self.publisher: Publisher | None = None
        self._transport: Link | None = None
        self._reading_paused = False
        self._pause = 0
        self._chunks: list[bytes] = []
        self._chunk_bytes = 0
        self._need = 0
        self._open_task: asyncio.Future[EndpointRuntime] | None = None
        self._idle_limit_s = 0.0
        self._close_reason: int | None = None
        self._close_deadline = 0.0
        self._connack = b""
        self._parsing = False

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    @property
    def is_closed(self) -> bool:
        return self.state == CLOSED

    @property
    def owed_acks(self) -> int:
        return self.publisher.owed if self.publisher is not None else 0

    # ------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.attach(cast(Link, transport))

    def attach(self, link: Link) -> None:
        self._transport = link
        if not self.listener.add(self):
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self._open_task is not None:
            self._open_task.cancel()
            self._open_task = None
        if self.publisher is not None:
            self.publisher.drop()
        self._chunks = []
        self.listener.remove(self)

    def pause_writing(self) -> None:
        self._set_pause(WRITE, True)

    def resume_writing(self) -> None:
        self._set_pause(WRITE, False)

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSING:
            return
        self.last_rx = time.monotonic()
        if self._chunks:
            self._chunks.append(data)
            self._chunk_bytes += len(data)
            if self._chunk_bytes < self._need or self._pause & (HELD | WAIT):
                return
            data = b"".join(self._chunks)
            self._chunks, self._chunk_bytes, self._need = [], 0, 0
        elif self._pause & (HELD | WAIT):
            self._chunks, self._chunk_bytes = [data], len(data)
            return
        grant = self.grant
        if grant is not None and grant.expires_at is not None and time.time() >= grant.expires_at:
            self.retire(NOT_AUTHORIZED, "token_expired")
            return
        self._process(data)

    def _process(self, data: bytes) -> None:
        self._parsing = True
        try:
            self._parse(data)
        finally:
            self._parsing = False

    def _parse(self, data: bytes) -> None:
        pos, n, need = 0, len(data), 0
        max_packet = self.listener.settings.max_packet_bytes
        publisher, publishes = self.publisher, 0
        fast = self.fast_publish
        try:
            while pos < n:
                if self.state != OPEN and self.state != NEW:
                    break
                if fast and publisher is not None:
                    pos, taken = take_publishes(publisher, data, pos, max_packet)
                    if taken:
                        publishes += taken
                        if pos >= n:
                            break
                if n - pos < 2:
                    need = 2
                    break
                first, length = data[pos], data[pos + 1]
                if length < 0x80:
                    start = pos + 2
                elif n - pos > 2 and 0 < data[pos + 2] < 0x80:  # two length bytes
                    length = (length & 0x7F) | data[pos + 2] << 7
                    start = pos + 3
                else:
                    found = decode_varint(data, pos + 1)
                    if found is None:
                        need = n - pos + 1  # the length field goes on: one byte more
                        break
                    length, start = found
                if length > max_packet:
                    raise MqttError(f"a packet of {length} bytes", PACKET_TOO_LARGE)
                end = start + length
                if end > n:
                    need = end - pos
                    break
                if first >> 4 == PUBLISH and publisher is not None:
                    publishes += 1
                    publisher.publish(first & 0x0F, data[start:end])
                else:
                    self._control(first >> 4, first & 0x0F, data[start:end])
                    publisher = self.publisher
                pos = end
        except MqttError as err:
            self.fail(err)
            return
        finally:
            if publishes:
                self.listener.count_publishes(publishes)
        if pos < n and self.state < CLOSING:
            self._chunks, self._chunk_bytes, self._need = [data[pos:]], n - pos, need
        if publisher is not None and self.state == OPEN:
            publisher.commit(self.last_rx)
            if publisher.owed >= publisher.receive_maximum:
                self._set_pause(INFLIGHT, True)

    def _parse_buffered(self) -> None:
        """Parse what arrived while parsing was held back."""
        if not self._chunks or self._parsing or self.state != OPEN:
            return
        if not self._pause & (HELD | WAIT) and self._chunk_bytes >= self._need:
            data = b"".join(self._chunks)
            self._chunks, self._chunk_bytes, self._need = [], 0, 0
            self._process(data)

    # -------------------------------------------------------------- packets
    def _control(self, kind: int, flags: int, body: bytes) -> None:
        self.listener.count_packet(kind)
        v5, publisher = self.v5, self.publisher
        if publisher is None:
            if kind != CONNECT:
                raise ProtocolError(f"{PACKET_NAMES.get(kind, kind)} before CONNECT")
            self._on_connect(flags, body)
        elif kind == PUBREL:
            publisher.pubrel(decode_pubrel(flags, body, v5))
        elif kind == PINGREQ:
            check_pingreq(flags, body)
            self.write(PINGRESP_BYTES)
        elif kind == SUBSCRIBE:
            sub = decode_subscribe(flags, body, v5)
            if v5 and sub.has_subscription_id:
                raise MqttError("subscription identifiers", SUBSCRIPTION_IDS_NOT_SUPPORTED)
            codes = [subscribe_reason(f) if v5 else 0x80 for f in sub.filters]
            self.write(encode_suback(sub.packet_id, codes, v5))
        elif kind == UNSUBSCRIBE:
            pid, count = decode_unsubscribe(flags, body, v5)
            self.write(encode_unsuback(pid, count, v5))
        elif kind == DISCONNECT:
            decode_disconnect(flags, body, v5)
            publisher.commit(self.last_rx)  # what came before it is kept (QoS 0 senders)
            self._close(None)
        elif kind == CONNECT:
            raise ProtocolError("a second CONNECT")
        elif kind == AUTH and v5:
            raise ProtocolError("AUTH without an authentication method")
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            raise ProtocolError(f"{PACKET_NAMES[kind]} for a PUBLISH the server never sent")
        else:
            raise MalformedPacket(f"a client does not send {PACKET_NAMES.get(kind, kind)}")

    def _on_connect(self, flags: int, body: bytes) -> None:
        listener = self.listener
        try:
            connect = decode_connect(flags, body)
        except UnsupportedVersion:
            self._refuse(False, UNSUPPORTED_PROTOCOL_VERSION, "protocol_version")
            return
        except MqttError as err:
            if body[:7] == b"\x00\x04MQTT\x05":
                self._refuse(True, err.reason_code, "malformed_connect")
            else:
                listener.refused("malformed_connect")
                self._close(None)
            return
        self.v5 = connect.v5
        label = self.label if self.label is not None else listener.tls_label(self._transport)
        try:
            grant = connecting.check(
                connect, label=label, directory=listener.directory(), auth=listener.auth
            )
            runtime = listener.endpoints.get(grant.endpoint.id)
            connecting.check_capacity(listener.admission, runtime.wal if runtime else None)
            listener.claim(self, grant)
        except connecting.Refused as err:
            self._refuse(connect.v5, err.code, err.reason)
            return
        self.grant, self.client_id = grant, grant.client_id
        self.directory = listener.directory()
        self._idle_limit_s = 1.5 * grant.keepalive_s
        self._connack = connecting.connack_ok(connect, grant, listener.settings)
        if runtime is not None:
            self._accept(runtime)
            return
        self.state = OPENING
        self._set_pause(WAIT, True)
        task = asyncio.ensure_future(listener.endpoints.open(grant.endpoint.id))
        task.add_done_callback(self._opened)
        self._open_task = task

    def _opened(self, task: asyncio.Future[EndpointRuntime]) -> None:
        self._open_task = None
        if self.state != OPENING or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("MQTT: opening the WAL for %s failed: %r", self.client_id, error)
            self._refuse(self.v5, SERVER_UNAVAILABLE, "wal_open")
            return
        self._accept(task.result())
        self._set_pause(WAIT, False)

    def _accept(self, runtime: EndpointRuntime) -> None:
        grant = self.grant
        assert grant is not None
        assert grant.endpoint.mqtt_config is not None
        publisher = Publisher(self, runtime, grant.endpoint.tenant)
        publisher.qos_max = grant.endpoint.mqtt_config.qos_max
        self.publisher, self.state = publisher, OPEN
        self.listener.accepted(self)
        self.write(self._connack)

    def _refuse(self, v5: bool, code: int, reason: str) -> None:
        self.listener.refused(reason)
        self.write(connecting.connack_refused(v5, code))
        self._close(None)

    # ------------------------------------------------- hooks of the publisher
    def hold_reading(self, held: bool) -> None:
        self._set_pause(HELD, held)

    def acks_written(self) -> None:
        publisher = self.publisher
        assert publisher is not None
        if self._pause & INFLIGHT and publisher.owed <= publisher.receive_maximum // 2:
            self._set_pause(INFLIGHT, False)
        if self.state == CLOSING and not publisher.fifo:
            self._close(self._close_reason)

    # ---------------------------------------------------------- lifecycle
    def tick(self, now: float, wall: float, directory: Directory) -> None:
        """Deadlines and config changes, called by the listener every `tick_s`."""
        state = self.state
        if state in (NEW, OPENING):
            if now - self.created > self.listener.settings.connect_timeout_s:
                self.listener.refused("connect_timeout")
                self.abort()
        elif state == CLOSING:
            if now >= self._close_deadline:
                self._close(self._close_reason)
        elif state == OPEN:
            grant, publisher = self.grant, self.publisher
            assert grant is not None
            assert publisher is not None
            # Not while the node itself holds reading back (its WAL, its acks to write);
            # a client that stops reading its acks (WRITE) is idle like any other.
            idle = self._idle_limit_s and not self._pause & (HELD | INFLIGHT)
            if idle and now - self.last_rx > self._idle_limit_s:
                self.fail(MqttError("keep alive timeout", KEEP_ALIVE_TIMEOUT))
            elif grant.expires_at is not None and wall >= grant.expires_at:
                self.retire(NOT_AUTHORIZED, "token_expired")
            elif directory is not self.directory:
                self.directory = directory
                found = directory.still_allowed(
                    grant.endpoint.id, grant.account_id, grant.key_digest
                )
                if found is None or found.mqtt_config is None:
                    self.retire(NOT_AUTHORIZED, "revoked")
                else:
                    publisher.qos_max = found.mqtt_config.qos_max

    def retire(self, code: int, reason: str) -> None:
        """Graceful close: stop reading, flush owed acks (bounded), then DISCONNECT."""
        if self.state >= CLOSING:
            return
        if self.state != OPEN or self.publisher is None:
            self._close(None)
            return
        self.listener.disconnected(reason)
        self.state = CLOSING
        self._set_pause(WAIT, True)
        self._chunks = []
        self.publisher.drop()
        self._close_reason = code
        self._close_deadline = time.monotonic() + self.listener.settings.drain_ack_wait_s
        if not self.publisher.fifo:
            self._close(code)

    def fail(self, err: MqttError) -> None:
        """Close at once (v5: DISCONNECT with the reason); nothing of this read is kept."""
        if self.state == CLOSED:
            return
        log.debug("MQTT %s: %s", self.client_id or "(connecting)", err)
        if self.publisher is not None:
            self.publisher.drop()
        label = REASON_LABELS.get(err.reason_code, f"0x{err.reason_code:02X}")
        if self.state == NEW:
            self.listener.refused(label)
            self._close(None)
        else:
            self.listener.disconnected(label)
            self._close(err.reason_code)

    def _close(self, v5_reason: int | None) -> None:
        if self.state == CLOSED:
            return
        if v5_reason is not None and self.v5 and self.state in (OPEN, CLOSING):
            self.write(encode_disconnect(v5_reason))
        self.state = CLOSED
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.state = CLOSED
        if self._transport is not None:
            self._transport.abort()

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _set_pause(self, flag: int, on: bool) -> None:
        self._pause = self._pause | flag if on else self._pause & ~flag
        want = bool(self._pause)
        transport = self._transport
        if want != self._reading_paused and transport is not None and not transport.is_closing():
            self._reading_paused = want
            if want:
                transport.pause_reading()
            else:
                self.last_rx = time.monotonic()
                transport.resume_reading()
        if not on:
            self._parse_buffered()
