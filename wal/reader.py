"""Frame reader: decode, detect the layout of a segment, stream from files.

Every error that bytes can cause comes out as a `FrameError` (CorruptFrame or
TruncatedFrame) carrying the offset of the bad frame; nothing else escapes
(tests/property/test_frame_reader_fuzz.py).

Telling the two layouts apart: a segment is written by one writer, so the layout is
decided once per segment. The first frames are decoded under both layouts; a layout
whose first frame fails (bad length, unknown FMT, CRC mismatch) is out. When both
survive (it takes a CRC32C coincidence), the layout that decodes more of the first
`DETECT_FRAMES` frames wins, and a tie goes to the current layout.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from .errors import CorruptFrame, FrameError, TruncatedFrame
from .frame import (
    FMT_TOPIC,
    HEADER,
    HEADER_BYTES,
    KNOWN_FMTS,
    LEGACY_HEADER,
    LEGACY_HEADER_BYTES,
    LEN_AFTER_CRC,
    PAYLOAD_BYTES_MAX,
    Frame,
    Layout,
    crc32c,
    split_topic_payload,
)

_LEN_CRC = struct.Struct(">II")
DETECT_FRAMES = 8
READ_CHUNK_BYTES = 1024 * 1024
FRAME_BYTES_MAX = LEGACY_HEADER_BYTES + PAYLOAD_BYTES_MAX + 8


def decode_at(
    buf: bytes | bytearray | memoryview, offset: int, layout: Layout
) -> tuple[Frame, int]:
    """Decode the frame starting at `offset`; return it and the offset after it."""
    available = len(buf) - offset
    if available < 8:
        raise TruncatedFrame(offset, f"{available} bytes left, a frame header needs more")
    # No memoryview is kept here: a live export would stop StreamReader from
    # compacting its bytearray after a TruncatedFrame.
    length, crc = _LEN_CRC.unpack_from(buf, offset)
    if layout is Layout.CURRENT:
        if length < LEN_AFTER_CRC:
            raise CorruptFrame(offset, f"LEN {length} is below the minimum {LEN_AFTER_CRC}")
        payload_start, end = offset + HEADER_BYTES, offset + 8 + length
    else:
        if length < LEGACY_HEADER_BYTES:
            raise CorruptFrame(offset, f"LEN {length} is below the minimum {LEGACY_HEADER_BYTES}")
        payload_start, end = offset + LEGACY_HEADER_BYTES, offset + length
    if end - payload_start > PAYLOAD_BYTES_MAX:
        raise CorruptFrame(offset, f"LEN {length} exceeds the maximum frame size")
    if end > len(buf):
        raise TruncatedFrame(offset, f"frame of {end - offset} bytes runs past the end")
    if layout is Layout.CURRENT:
        _, _, fmt, tenant, ts_ms = HEADER.unpack_from(buf, offset)
        tenant_or_none: int | None = tenant
    else:
        _, _, fmt, ts_ms = LEGACY_HEADER.unpack_from(buf, offset)
        tenant_or_none = None
    if fmt not in KNOWN_FMTS:
        raise CorruptFrame(offset, f"unknown FMT {fmt}")
    data = bytes(buf[payload_start:end])
    if crc32c(data) != crc:
        raise CorruptFrame(offset, "CRC32C mismatch")
    if fmt == FMT_TOPIC:
        try:
            split_topic_payload(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise CorruptFrame(offset, f"FMT 1 payload: {err}") from err
    return Frame(fmt=fmt, tenant=tenant_or_none, ts_ms=ts_ms, payload=data), end


def _frames_decodable(
    buf: bytes | bytearray | memoryview, layout: Layout
) -> tuple[int, FrameError | None]:
    offset, count = 0, 0
    while offset < len(buf) and count < DETECT_FRAMES:
        try:
            _, offset = decode_at(buf, offset, layout)
        except FrameError as err:
            return count, err
        count += 1
    return count, None


def detect_layout(buf: bytes | bytearray | memoryview, *, at_eof: bool = True) -> Layout | None:
    """The layout of the segment starting at `buf`; None if more bytes are needed."""
    if len(buf) == 0:
        return Layout.CURRENT
    current = _frames_decodable(buf, Layout.CURRENT)
    legacy = _frames_decodable(buf, Layout.LEGACY)
    if not at_eof and any(n == 0 and isinstance(e, TruncatedFrame) for n, e in (current, legacy)):
        return None
    current_ok, legacy_ok = current[0] > 0, legacy[0] > 0
    if legacy_ok and not current_ok:
        return Layout.LEGACY
    if (
        current_ok
        and legacy_ok
        and (legacy[0] > current[0] or (legacy[1] is None and current[1] is not None))
    ):
        return Layout.LEGACY
    return Layout.CURRENT


def iter_frames(
    buf: bytes | bytearray | memoryview, *, layout: Layout | None = None
) -> Iterator[tuple[int, Frame]]:
    """Yield (offset, frame) for a whole in-memory segment; raise at the first bad frame.
    Zeros from a frame boundary to the end are the end of the segment, not a bad frame."""
    chosen = layout or detect_layout(buf) or Layout.CURRENT
    offset = 0
    while offset < len(buf):
        try:
            frame, end = decode_at(buf, offset, chosen)
        except CorruptFrame:
            if not any(buf[offset : offset + 8]) and not bytes(buf[offset:]).strip(b"\0"):
                return  # a zero tail (preallocated segment) ends the segment
            raise
        yield offset, frame
        offset = end


@dataclass(frozen=True, slots=True)
class ScanResult:
    frames: int
    valid_bytes: int
    first_ts_ms: int | None
    last_ts_ms: int | None
    error: FrameError | None


class StreamReader:
    """Frames from a binary stream in bounded memory (at most one frame + one chunk)."""

    def __init__(self, stream: BinaryIO, *, layout: Layout | None = None) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._eof = False
        self.layout = layout

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._eof:
            chunk = self._stream.read(max(READ_CHUNK_BYTES, want - len(self._buf)))
            if not chunk:
                self._eof = True
            else:
                self._buf += chunk

    def __iter__(self) -> Iterator[tuple[int, Frame]]:
        self._fill(READ_CHUNK_BYTES)
        while self.layout is None:
            self.layout = detect_layout(self._buf, at_eof=self._eof)
            if self.layout is None:
                self._fill(min(len(self._buf) * 2, FRAME_BYTES_MAX))
                if len(self._buf) >= FRAME_BYTES_MAX:
                    self.layout = Layout.CURRENT
        pos = 0
        while True:
            if pos >= len(self._buf):
                self._fill(pos + 1)
                if pos >= len(self._buf):
                    return
            try:
                frame, end = decode_at(self._buf, pos, self.layout)
            except TruncatedFrame as err:
                if self._eof:
                    raise TruncatedFrame(self._base + pos, err.reason) from None
                # Drop consumed bytes, then read until the frame can be complete.
                del self._buf[:pos]
                self._base += pos
                pos = 0
                self._fill(len(self._buf) + READ_CHUNK_BYTES)
                continue
            except CorruptFrame as err:
                if self._zeros_to_eof(pos):
                    return  # a preallocated segment's unwritten tail: the end of the log
                raise CorruptFrame(self._base + pos, err.reason) from None
            yield self._base + pos, frame
            pos = end

    def _zeros_to_eof(self, pos: int) -> bool:
        """Whether every byte from `pos` to the end of the stream is zero (docs/formats/
        wal.md: a zero tail ends a segment). Reads the rest one chunk at a time."""
        if any(self._buf[pos : pos + 8]) or self._buf[pos:].strip(b"\0"):
            return False
        while not self._eof:
            chunk = self._stream.read(READ_CHUNK_BYTES)
            if not chunk:
                self._eof = True
            elif chunk.strip(b"\0"):
                return False
        return True


def open_segment_stream(path: str) -> BinaryIO:
    """A binary stream of a segment's frame bytes; `.zst` files are decompressed lazily."""
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if path.endswith(".zst"):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=READ_CHUNK_BYTES)
    return raw


def scan_stream(stream: BinaryIO, *, layout: Layout | None = Layout.CURRENT) -> ScanResult:
    """Count the valid prefix of a stream (recovery): stop at the first bad frame."""
    reader = StreamReader(stream, layout=layout)
    frames, valid = 0, 0
    first_ts: int | None = None
    last_ts: int | None = None
    error: FrameError | None = None
    header_bytes = HEADER_BYTES if reader.layout is not Layout.LEGACY else LEGACY_HEADER_BYTES
    try:
        for offset, frame in reader:
            frames += 1
            header_bytes = HEADER_BYTES if frame.tenant is not None else LEGACY_HEADER_BYTES
            valid = offset + header_bytes + len(frame.payload)
            first_ts = frame.ts_ms if first_ts is None else first_ts
            last_ts = frame.ts_ms
    except FrameError as err:
        error = err
    return ScanResult(frames, valid, first_ts, last_ts, error)
