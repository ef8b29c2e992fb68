"""The fused PUBLISH fast path: a run of common PUBLISHes straight into FMT 1 frames.

`take_publishes` consumes consecutive whole packets of one read that are, all of them:
- PUBLISH with QoS 0 (first byte 0x30) or QoS 1 (0x32, when the endpoint's `qos_max`
  allows it): no DUP, no RETAIN;
- a remaining length of one or two bytes, at most `max_packet_bytes`;
- a non-empty topic that `check_topic_name` accepts, a packet id other than 0 (QoS 1);
- v5: an empty property block (one 0 byte), and the Receive Maximum not reached.

It stops, consuming nothing more, at the first packet that is anything else — partial,
another kind, QoS 2, DUP, RETAIN, an alias, properties, any error — and the session's
general loop hands that one to `Publisher.publish`, which decides it (and raises its
error) exactly as before. So the fast path never raises and never refuses.

What it builds is what `Publisher.publish` builds for the same packets, byte for byte:
the same frames (header, then the payload as one or two pieces: the join makes them
one), the same timestamp (read from the clock when the batch's first frame is added),
the same PUBACKs in the same list, the same owed/unacked counters and packet-id sets.
tests/unit/mqtt/test_fastpath.py checks this against the reference path.

The session's last valid topic field (u16 length + topic) is remembered on the
publisher with its CRC: a packet on the same topic is recognised with `startswith` and
its message CRC extends the topic's, so `check_topic_name` runs only on a new topic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import google_crc32c

from wal.frame import FMT_TOPIC, HEADER, LEN_AFTER_CRC

from .codec import MqttError
from .packets import check_topic_name, encode_puback

if TYPE_CHECKING:
    from .publisher import Publisher

_pack = HEADER.pack
_crc = google_crc32c.value
_extend = google_crc32c.extend
QOS0, QOS1 = 0x30, 0x32  # PUBLISH first bytes: no DUP, no RETAIN
PUBACKS: tuple[bytes, ...] = tuple(encode_puback(pid) for pid in range(0x10000))


def take_publishes(pub: Publisher, data: bytes, pos: int, max_packet: int) -> tuple[int, int]:
    """(position after the last packet taken, packets taken) from `pos` on."""
    n = len(data)
    frames, acks = pub._frames, pub._acks
    qos1_ok = pub.qos_max >= 1
    v5 = pub.v5
    limit = pub.receive_maximum - pub.unacked  # v5: new QoS 1 messages allowed
    tenant, ts = pub.tenant, pub._ts_ms
    known, kcrc = pub.fast_topic, pub.fast_topic_crc
    klen = len(known)
    qos1_ids, b_qos1 = pub.qos1, pub._b_qos1
    taken = q1 = 0
    while pos + 1 < n:
        first = data[pos]
        if first == QOS0:
            qos = 0
        elif first == QOS1 and qos1_ok:
            qos = 1
        else:
            break
        length = data[pos + 1]
        if length < 0x80:
            start = pos + 2
        elif pos + 2 < n and 0 < data[pos + 2] < 0x80:
            length = (length & 0x7F) | data[pos + 2] << 7
            start = pos + 3
        else:
            break
        end = start + length
        if end > n or length > max_packet:
            break
        if klen and data.startswith(known, start):
            te = start + klen
            if te > end:
                break
        else:
            if end - start < 2:
                break
            te = start + 2 + (data[start] << 8 | data[start + 1])
            if te == start + 2 or te > end:
                break
            try:
                check_topic_name(data[start + 2 : te])
            except MqttError:
                break
            known = data[start:te]
            kcrc, klen = _crc(known), te - start
        ms = te
        if qos:
            ms += 2
            if ms > end:
                break
            pid = data[te] << 8 | data[te + 1]
            if not pid:
                break
        if v5:
            if ms >= end or data[ms]:
                break
            if qos and q1 >= limit:
                break
            ms += 1
        if not frames:
            ts = pub.session.listener.clock.time_ms()
        if ms == te:  # 3.1.1 QoS 0: topic field and message are contiguous on the wire
            payload = data[start:end]
            frames.append(_pack(LEN_AFTER_CRC + length, _crc(payload), FMT_TOPIC, tenant, ts))
            frames.append(payload)
        else:
            message = data[ms:end]
            size = LEN_AFTER_CRC + klen + end - ms
            frames.append(_pack(size, _extend(kcrc, message), FMT_TOPIC, tenant, ts))
            frames.append(known + message)
            if qos:
                q1 += 1
                qos1_ids.add(pid)
                b_qos1.append(pid)
                acks.append(PUBACKS[pid])
        taken += 1
        pos = end
    if taken:
        pub._ts_ms = ts
        pub.fast_topic, pub.fast_topic_crc = known, kcrc
        if q1:
            pub.unacked += q1
            pub.owed += q1
            pub._b_acked += q1
            pub._b_released += q1
    return pos, taken
