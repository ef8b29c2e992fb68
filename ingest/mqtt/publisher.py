"""The publish pipeline of one connection: PUBLISH → FMT 1 frames → WAL → acks in order.

Every PUBLISH of one read becomes one FMT 1 frame (the wire's `u16 length | topic` is
the frame payload's prefix, the message follows) and all frames of the read go to the
endpoint's WAL in ONE `append_encoded`. (Common QoS 0/1 PUBLISHes are added to the
same batch by fastpath.py's fused loop instead of `publish`: the same bytes, ADR 0015.)
The acks of that read (PUBACK, PUBREC, PUBCOMP) wait in a FIFO entry beside the
append's future. When a future resolves — after the
fsync covering it — the FIFO is flushed from its head while heads are done, all their
acks in ONE write: PUBACK/PUBREC leave in arrival order and only after fsync. A failed
append (WAL failed or closed) ends the connection, since later acks may not overtake it.

State kept per connection, all bounded by `receive_maximum`: packet ids of QoS 1
messages whose PUBACK is owed (a DUP resend of one is acked again, not appended), QoS 2
ids from PUBLISH until PUBREL (a resend is answered with PUBREC, not appended), and up
to `topic_alias_max` v5 topic aliases.

Backpressure: when admission refuses the batch (node in-flight bytes, endpoint
backlog, low disk) or the WAL raises WalFull, the batch is HELD: the session stops
reading and the append is retried with backoff (5 ms doubling to 1 s). Nothing is
dropped and nothing is acknowledged before its fsync.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from typing import TYPE_CHECKING

import google_crc32c

from wal import AppendAck, WalClosed, WalFailed, WalFull
from wal.frame import FMT_TOPIC, HEADER, LEN_AFTER_CRC

from .codec import (
    PACKET_ID_NOT_FOUND,
    QOS_NOT_SUPPORTED,
    RECEIVE_MAXIMUM_EXCEEDED,
    RETAIN_NOT_SUPPORTED,
    SERVER_SHUTTING_DOWN,
    TOPIC_ALIAS_INVALID,
    UNSPECIFIED_ERROR,
    MqttError,
    ProtocolError,
)
from .packets import decode_publish, encode_puback, encode_pubcomp, encode_pubrec

if TYPE_CHECKING:
    from ..runtime import EndpointRuntime
    from .session import MqttSession

RETRY_FIRST_S, RETRY_MAX_S = 0.005, 1.0
_pack = HEADER.pack
_crc = google_crc32c.value  # wal.frame.crc32c without its wrapper: once per message


class _Entry:
    """Acks owed for one read: written once `future` (its append) is done."""

    __slots__ = (
        "acked",
        "acks",
        "data",
        "frames",
        "future",
        "nbytes",
        "qos1",
        "released",
        "started",
    )

    def __init__(self, acks: list[bytes], acked: int, released: int, qos1: list[int]) -> None:
        self.future: asyncio.Future[AppendAck] | None = None
        self.acks = acks
        self.acked = acked  # new PUBACKs/PUBRECs among `acks` (the owed-acks counter)
        self.released = released  # Receive Maximum quota given back once written
        self.qos1 = qos1
        self.data = b""
        self.frames = 0
        self.nbytes = 0
        self.started = 0.0  # monotonic time of the read that carried the messages


class Publisher:
    def __init__(self, session: MqttSession, runtime: EndpointRuntime, tenant: int) -> None:
        listener = session.listener
        self.session = session
        self.runtime = runtime
        self.tenant = tenant
        self.qos_max = 0
        self.v5 = session.v5
        self.receive_maximum = listener.settings.receive_maximum
        self.alias_max = listener.settings.topic_alias_max
        self.owed = 0  # PUBACK/PUBREC not written yet
        self.unacked = 0  # v5 Receive Maximum quota in use (QoS 2 until PUBCOMP)
        self.qos1: set[int] = set()
        self.qos2: set[int] = set()
        self.aliases: dict[int, bytes] = {}
        self.fifo: collections.deque[_Entry] = collections.deque()
        self.held: _Entry | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_s = RETRY_FIRST_S
        self.fast_topic = b""  # fastpath.py: the last valid topic field taken, its CRC
        self.fast_topic_crc = 0
        self.reset_batch()

    def reset_batch(self) -> None:
        self._frames: list[bytes] = []  # header, payload, header, payload, …
        self._acks: list[bytes] = []
        self._b_acked = 0
        self._b_released = 0
        self._b_qos1: list[int] = []
        self._ts_ms = 0

    # ------------------------------------------------------------- building
    def publish(self, flags: int, body: bytes) -> None:
        """Add one PUBLISH to the batch of the current read (MqttError: refused)."""
        p = decode_publish(flags, body, self.v5)
        qos = p.qos
        if qos > self.qos_max:
            raise MqttError(f"QoS {qos} is above the endpoint's maximum", QOS_NOT_SUPPORTED)
        if p.retain and self.v5:
            raise MqttError("retained messages are not supported", RETAIN_NOT_SUPPORTED)
        topic = p.topic_field
        if p.alias:
            if p.alias > self.alias_max:
                raise MqttError(f"topic alias {p.alias} is out of range", TOPIC_ALIAS_INVALID)
            if len(topic) == 2:
                known = self.aliases.get(p.alias)
                if known is None:
                    raise ProtocolError(f"topic alias {p.alias} was never set")
                topic = known
            else:
                self.aliases[p.alias] = topic
        if qos:
            pid = p.packet_id
            if qos == 1 and p.dup and pid in self.qos1:
                self._acks.append(encode_puback(pid))  # a resend of one still owed
                return
            if qos == 2 and pid in self.qos2:
                self._acks.append(encode_pubrec(pid))  # exactly once: not appended again
                return
            limit = self.receive_maximum
            if (self.v5 and self.unacked >= limit) or (qos == 2 and len(self.qos2) >= limit):
                raise MqttError("Receive Maximum exceeded", RECEIVE_MAXIMUM_EXCEEDED)
            self.unacked += 1
            self.owed += 1
            self._b_acked += 1
            if qos == 1:
                self.qos1.add(pid)
                self._b_qos1.append(pid)
                self._b_released += 1
                self._acks.append(encode_puback(pid))
            else:
                self.qos2.add(pid)
                self._acks.append(encode_pubrec(pid))
        frames = self._frames
        if not frames:
            self._ts_ms = self.session.listener.clock.time_ms()
        payload = topic + p.message
        frames.append(
            _pack(LEN_AFTER_CRC + len(payload), _crc(payload), FMT_TOPIC, self.tenant, self._ts_ms)
        )
        frames.append(payload)

    def pubrel(self, pid: int) -> None:
        if pid in self.qos2:
            self.qos2.discard(pid)
            self._b_released += 1
            self._acks.append(encode_pubcomp(pid))
        else:
            self._acks.append(encode_pubcomp(pid, PACKET_ID_NOT_FOUND if self.v5 else 0))

    # ---------------------------------------------------------- committing
    def commit(self, started: float) -> None:
        """The read is parsed: append its frames (one append) and queue its acks."""
        frames = self._frames
        if not frames and not self._acks:
            return
        entry = _Entry(self._acks, self._b_acked, self._b_released, self._b_qos1)
        entry.started = started
        entry.data = b"".join(frames)
        entry.frames, entry.nbytes = len(frames) // 2, len(entry.data)
        self.reset_batch()
        if entry.frames:
            self._append(entry)
        else:
            self.fifo.append(entry)
            self.flush()

    def _append(self, entry: _Entry) -> None:
        session = self.session
        admission = session.listener.admission
        wal = self.runtime.wal
        reason = admission.refuse_reason(wal, entry.nbytes)
        if reason == "draining":
            session.retire(SERVER_SHUTTING_DOWN, "draining")
            return
        if reason == "wal_failed":
            session.fail(MqttError("the endpoint's WAL failed", UNSPECIFIED_ERROR))
            return
        if reason is not None:
            self._hold(entry, reason)
            return
        try:
            future = wal.append_encoded(entry.data, entry.frames)
        except WalFull:
            self._hold(entry, "wal_full")
            return
        except WalFailed:
            session.fail(MqttError("the endpoint's WAL failed", UNSPECIFIED_ERROR))
            return
        except WalClosed:
            session.retire(SERVER_SHUTTING_DOWN, "draining")
            return
        admission.add_inflight(entry.nbytes)
        entry.future, entry.data = future, b""
        self.fifo.append(entry)
        future.add_done_callback(functools.partial(self._durable, entry))

    def _hold(self, entry: _Entry, reason: str) -> None:
        self.session.listener.held(reason)
        self.held = entry
        self.session.hold_reading(True)
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(self._retry_s, self._retry_held)
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def _retry_held(self) -> None:
        self._retry = None
        entry, self.held = self.held, None
        if entry is None or not self.session.is_open:
            return
        self._append(entry)
        if self.held is None:
            self._retry_s = RETRY_FIRST_S
            self.session.hold_reading(False)

    def drop(self) -> None:
        """The connection is going: forget the batch and what is held (never acked)."""
        self.reset_batch()
        self.held = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    # ------------------------------------------------------------ acking
    def _durable(self, entry: _Entry, future: asyncio.Future[AppendAck]) -> None:
        session = self.session
        session.listener.admission.done_inflight(entry.nbytes)
        if session.is_closed:
            return
        if future.cancelled():
            code = SERVER_SHUTTING_DOWN
        elif (error := future.exception()) is not None:
            code = SERVER_SHUTTING_DOWN if isinstance(error, WalClosed) else UNSPECIFIED_ERROR
        else:
            self.flush()
            return
        session.fail(MqttError("an append failed, so its acks cannot be sent", code))

    def flush(self) -> None:
        """Write the acks of every done entry at the FIFO's head, in one write."""
        fifo, out = self.fifo, []
        listener = self.session.listener
        now = time.monotonic()
        while fifo:
            entry = fifo[0]
            future = entry.future
            if future is not None and not (future.done() and future.exception() is None):
                break
            fifo.popleft()
            out += entry.acks
            self.owed -= entry.acked
            self.unacked -= entry.released
            for pid in entry.qos1:
                self.qos1.discard(pid)
            if future is not None:
                ack_s = now - entry.started if entry.acked else None
                listener.durable(self.session, entry.frames, entry.nbytes, ack_s)
        if out:
            self.session.write(b"".join(out))
        self.session.acks_written()
