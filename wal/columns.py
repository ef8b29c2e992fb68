"""Decode a whole segment into columns (for conversion to Arrow/Parquet).

The tight loop here avoids one `Frame` object per record; it checks exactly what
`reader.decode_at` checks (lengths, FMT, CRC32C, FMT 1 structure) and raises the same
`FrameError`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import google_crc32c

from .errors import CorruptFrame
from .frame import FMT_TOPIC, HEADER, HEADER_BYTES, Layout, split_topic_payload
from .reader import decode_at, detect_layout


@dataclass(slots=True)
class SegmentColumns:
    """Parallel lists, one entry per frame. `message` is the payload without the FMT 1
    topic prefix; `topic` is None for FMT 0 frames."""

    fmt: list[int] = field(default_factory=list)
    tenant: list[int | None] = field(default_factory=list)
    ts_ms: list[int] = field(default_factory=list)
    topic: list[str | None] = field(default_factory=list)
    message: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts_ms)


def decode_columns(buf: bytes) -> SegmentColumns:
    """All frames of an in-memory segment as columns; FrameError at the first bad one."""
    cols = SegmentColumns()
    if detect_layout(buf) is Layout.LEGACY:
        for _, frame in _iter_legacy(buf):
            cols.fmt.append(frame.fmt)
            cols.tenant.append(None)
            cols.ts_ms.append(frame.ts_ms)
            topic, message = (
                split_topic_payload(frame.payload)
                if frame.fmt == FMT_TOPIC
                else (None, frame.payload)
            )
            cols.topic.append(topic)
            cols.message.append(message)
        return cols
    unpack = HEADER.unpack_from
    crc = google_crc32c.value
    fmts, tenants, tss, topics, messages = (
        cols.fmt,
        cols.tenant,
        cols.ts_ms,
        cols.topic,
        cols.message,
    )
    offset, end_of_data = 0, len(buf)
    while offset < end_of_data:
        if end_of_data - offset < HEADER_BYTES and _bad_frame_or_zero_tail(
            buf, offset, Layout.CURRENT
        ):
            break
        length, checksum, fmt, tenant, ts_ms = unpack(buf, offset)
        end = offset + 8 + length
        if (length < 13 or end > end_of_data or fmt > FMT_TOPIC) and _bad_frame_or_zero_tail(
            buf, offset, Layout.CURRENT
        ):
            break
        payload = buf[offset + HEADER_BYTES : end]
        if crc(payload) != checksum:
            raise CorruptFrame(offset, "CRC32C mismatch")
        if fmt == FMT_TOPIC:
            try:
                topic, payload = split_topic_payload(payload)
            except (ValueError, UnicodeDecodeError) as err:
                raise CorruptFrame(offset, f"FMT 1 payload: {err}") from err
            topics.append(topic)
        else:
            topics.append(None)
        fmts.append(fmt)
        tenants.append(tenant)
        tss.append(ts_ms)
        messages.append(payload)
        offset = end
    return cols


def _bad_frame_or_zero_tail(buf: bytes, offset: int, layout: Layout) -> bool:
    """At a frame the fast loop cannot take: True when it is a zero tail (the end of
    the segment), else raise the precise error — exactly as `iter_frames` decides
    (a CorruptFrame over zeros to the end ends the segment; docs/formats/wal.md)."""
    try:
        decode_at(buf, offset, layout)
    except CorruptFrame:
        if not buf[offset:].strip(b"\0"):
            return True
        raise
    return False


def _iter_legacy(buf: bytes):  # type: ignore[no-untyped-def]
    offset = 0
    while offset < len(buf):
        try:
            frame, offset_next = decode_at(buf, offset, Layout.LEGACY)
        except CorruptFrame:
            if not buf[offset:].strip(b"\0"):
                return
            raise
        yield offset, frame
        offset = offset_next
