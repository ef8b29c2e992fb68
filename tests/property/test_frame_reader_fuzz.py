"""Fuzzing the frame reader (wal.reader) with Hypothesis.

Bytes from anywhere (arbitrary, or valid segments with flipped bits, cut short or with
bytes inserted) go through `iter_frames`, `detect_layout`, `StreamReader` (over
io.BytesIO, with tiny read chunks and short reads so frames straddle every boundary)
and `scan_stream` (and through a zstd decompressor, as `open_segment_stream` reads
`.zst` segments). Nothing but `wal.errors.FrameError` may come out, the streaming
reader must agree with the in-memory one frame for frame and error for error, and the
encoders must round-trip through the reader.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wal import reader
from wal.errors import CorruptFrame, FrameError, TruncatedFrame
from wal.frame import (
    FMT_RECORD,
    FMT_TOPIC,
    HEADER_BYTES,
    LEGACY_HEADER_BYTES,
    Frame,
    Layout,
    encode_frame,
    encode_legacy_frame,
    encode_topic_frame,
    join_topic_payload,
)
from wal.reader import StreamReader, detect_layout, iter_frames, scan_stream

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
PAYLOADS = st.binary(max_size=80)
TOPICS = st.text(max_size=24)
LAYOUTS = st.sampled_from([None, Layout.CURRENT, Layout.LEGACY])


# ------------------------------------------------------------------ helpers
class ShortReads(io.RawIOBase):
    """A stream that hands out at most `step` bytes per read(), like a pipe or a
    decompressor does."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._step if size < 0 else min(size, self._step)
        return self._data.read(want)


Outcome = tuple[list[tuple[int, Frame]], tuple[type[FrameError], int] | None]


def drain(frames: Iterator[tuple[int, Frame]]) -> Outcome:
    """Every (offset, frame) an iterator yields, then the error it stopped with."""
    out: list[tuple[int, Frame]] = []
    try:
        for item in frames:
            out.append(item)
    except FrameError as err:
        return out, (type(err), err.offset)
    return out, None


def stream_outcome(data: bytes, layout: Layout | None, chunk: int, step: int) -> Outcome:
    """`StreamReader` over `data` read `step` bytes at a time, `chunk` bytes wanted."""
    with mock.patch.object(reader, "READ_CHUNK_BYTES", chunk):
        stream = ShortReads(data, step) if step else io.BytesIO(data)
        return drain(iter(StreamReader(stream, layout=layout)))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Spec:
    """One frame a test meant to write."""

    fmt: int
    tenant: int | None
    ts_ms: int
    payload: bytes

    def encode(self) -> bytes:
        if self.tenant is None:
            return encode_legacy_frame(self.payload, ts_ms=self.ts_ms, fmt=self.fmt)
        return encode_frame(self.payload, tenant=self.tenant, ts_ms=self.ts_ms, fmt=self.fmt)

    @property
    def header_bytes(self) -> int:
        return LEGACY_HEADER_BYTES if self.tenant is None else HEADER_BYTES


@st.composite
def specs(draw: st.DrawFn, *, legacy: bool) -> Spec:
    ts = draw(U64)
    tenant = None if legacy else draw(U32)
    if draw(st.booleans()):
        topic, message = draw(TOPICS), draw(PAYLOADS)
        return Spec(FMT_TOPIC, tenant, ts, join_topic_payload(topic, message))
    return Spec(FMT_RECORD, tenant, ts, draw(PAYLOADS))


@st.composite
def segments(draw: st.DrawFn, *, legacy: bool | None = None) -> tuple[bytes, list[Spec], Layout]:
    """A valid segment (one layout throughout), its frames and its layout."""
    if legacy is None:
        legacy = draw(st.booleans())
    frames = draw(st.lists(specs(legacy=legacy), min_size=1, max_size=10))
    layout = Layout.LEGACY if legacy else Layout.CURRENT
    return b"".join(f.encode() for f in frames), frames, layout


def frame_offsets(frames: list[Spec]) -> list[int]:
    offsets, at = [], 0
    for f in frames:
        offsets.append(at)
        at += len(f.encode())
    return offsets


def as_frame(spec: Spec) -> Frame:
    return Frame(fmt=spec.fmt, tenant=spec.tenant, ts_ms=spec.ts_ms, payload=spec.payload)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid segment with a few bit flips, cuts and insertions."""
    data = bytearray(draw(segments())[0])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 24))]
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=300), mutated())
CHUNKS = st.sampled_from([1, 2, 7, 21, 64, 1024 * 1024])
STEPS = st.sampled_from([0, 1, 3, 16])  # 0: a plain BytesIO


def check_only_frame_errors(data: bytes, layout: Layout | None, chunk: int, step: int) -> None:
    """Run every reader over `data`; anything but FrameError fails the test by escaping."""
    detect_layout(data)
    for cut in {0, 1, len(data) // 2, len(data)}:
        detect_layout(data[:cut], at_eof=False)
    memory = drain(iter_frames(data, layout=layout))
    streamed = stream_outcome(data, layout, chunk, step)
    if layout is not None:  # an explicit layout: both readers must agree exactly
        assert streamed == memory
    for scan_layout in (Layout.CURRENT, Layout.LEGACY, None):
        scan_stream(io.BytesIO(data), layout=scan_layout)


# -------------------------------------------------------------- arbitrary bytes
@FUZZ
@given(data=ANY_BYTES, layout=LAYOUTS, chunk=CHUNKS, step=STEPS)
def test_arbitrary_or_damaged_bytes_raise_nothing_but_frame_errors(
    data: bytes, layout: Layout | None, chunk: int, step: int
) -> None:
    check_only_frame_errors(data, layout, chunk, step)


@FUZZ
@given(data=ANY_BYTES, chunk=CHUNKS, step=STEPS)
def test_the_stream_reader_reads_what_iter_frames_reads_in_the_layout_it_detected(
    data: bytes, chunk: int, step: int
) -> None:
    with mock.patch.object(reader, "READ_CHUNK_BYTES", chunk):
        stream = ShortReads(data, step) if step else io.BytesIO(data)
        frames_reader = StreamReader(stream)  # type: ignore[arg-type]
        streamed = drain(iter(frames_reader))
    assert frames_reader.layout is not None
    assert streamed == drain(iter_frames(data, layout=frames_reader.layout))


@FUZZ
@given(data=ANY_BYTES)
@example(data=b"\0" * 8)  # found in CI: a zero tail is the end, not a bad frame
@example(data=encode_frame(b"x", tenant=1, ts_ms=1) + b"\0" * 30)
def test_scan_stream_counts_exactly_the_valid_prefix(data: bytes) -> None:
    frames, error = drain(iter_frames(data, layout=Layout.CURRENT))
    scan = scan_stream(io.BytesIO(data))
    assert scan.frames == len(frames)
    end = frames[-1][0] + HEADER_BYTES + len(frames[-1][1].payload) if frames else 0
    assert scan.valid_bytes == end
    assert scan.first_ts_ms == (frames[0][1].ts_ms if frames else None)
    assert scan.last_ts_ms == (frames[-1][1].ts_ms if frames else None)
    if error is None:
        assert scan.error is None
        # Everything after the valid prefix is a zero tail (a preallocated segment's
        # unwritten end, docs/formats/wal.md), usually nothing at all.
        assert not data[scan.valid_bytes :].strip(b"\0")
    else:
        assert scan.error is not None
        assert (type(scan.error), scan.error.offset) == error
        assert scan.error.offset == scan.valid_bytes  # the bad frame starts where they stop


# ------------------------------------------------------------------ round trips
@FUZZ
@given(payload=PAYLOADS, tenant=U32, ts=U64)
def test_encode_frame_round_trips_through_iter_frames(payload: bytes, tenant: int, ts: int) -> None:
    data = encode_frame(payload, tenant=tenant, ts_ms=ts)
    assert len(data) == HEADER_BYTES + len(payload)
    assert detect_layout(data) is Layout.CURRENT
    [(offset, frame)] = list(iter_frames(data))
    assert (offset, frame) == (0, Frame(FMT_RECORD, tenant, ts, payload))
    assert (frame.topic, frame.message) == (None, payload)


@FUZZ
@given(topic=TOPICS, message=PAYLOADS, tenant=U32, ts=U64)
def test_encode_topic_frame_round_trips_through_iter_frames(
    topic: str, message: bytes, tenant: int, ts: int
) -> None:
    data = encode_topic_frame(topic, message, tenant=tenant, ts_ms=ts)
    assert detect_layout(data) is Layout.CURRENT
    [(offset, frame)] = list(iter_frames(data))
    assert (offset, frame.fmt, frame.tenant, frame.ts_ms) == (0, FMT_TOPIC, tenant, ts)
    assert (frame.topic, frame.message) == (topic, message)


@FUZZ
@given(payload=PAYLOADS, topic=TOPICS, topic_frame=st.booleans(), ts=U64)
def test_encode_legacy_frame_round_trips_through_iter_frames(
    payload: bytes, topic: str, topic_frame: bool, ts: int
) -> None:
    if topic_frame:
        data = encode_legacy_frame(join_topic_payload(topic, payload), ts_ms=ts, fmt=FMT_TOPIC)
    else:
        data = encode_legacy_frame(payload, ts_ms=ts)
    assert detect_layout(data) is Layout.LEGACY
    [(offset, frame)] = list(iter_frames(data))
    assert (offset, frame.tenant, frame.ts_ms, frame.message) == (0, None, ts, payload)
    assert frame.topic == (topic if topic_frame else None)


@FUZZ
@given(segment=segments(), chunk=CHUNKS, step=STEPS)
def test_valid_segments_are_read_back_whole_in_their_own_layout(
    segment: tuple[bytes, list[Spec], Layout], chunk: int, step: int
) -> None:
    data, frames, layout = segment
    expected = (list(zip(frame_offsets(frames), map(as_frame, frames), strict=True)), None)
    assert detect_layout(data) is layout
    assert drain(iter_frames(data)) == expected
    assert stream_outcome(data, None, chunk, step) == expected
    scan = scan_stream(io.BytesIO(data), layout=None)
    assert (scan.frames, scan.valid_bytes, scan.error) == (len(frames), len(data), None)
    # A .zst segment is read through the decompressor's stream (see open_segment_stream).
    compressed = io.BytesIO(zstandard.ZstdCompressor().compress(data))
    with mock.patch.object(reader, "READ_CHUNK_BYTES", chunk):
        unzipped = zstandard.ZstdDecompressor().stream_reader(compressed)
        assert drain(iter(StreamReader(unzipped))) == expected


@FUZZ
@given(segment=segments(), data=st.data())
def test_a_prefix_of_a_segment_is_never_taken_for_the_other_layout(
    segment: tuple[bytes, list[Spec], Layout], data: st.DataObject
) -> None:
    whole, _, layout = segment
    # From 1 byte on: detect_layout(b"", at_eof=False) answers CURRENT, not None. The
    # StreamReader never asks that (an empty first read means end of file).
    cut = data.draw(st.integers(1, len(whole)), label="cut")
    assert detect_layout(whole[:cut], at_eof=False) in (None, layout)


# ------------------------------------------------------------------ damage
@FUZZ
@given(segment=segments(), data=st.data())
def test_a_segment_cut_short_reads_its_whole_frames_then_reports_a_truncated_one(
    segment: tuple[bytes, list[Spec], Layout], data: st.DataObject
) -> None:
    whole, frames, layout = segment
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    offsets = frame_offsets(frames)
    complete = [
        (o, as_frame(f)) for o, f in zip(offsets, frames, strict=True) if o + len(f.encode()) <= cut
    ]
    torn_at = offsets[len(complete)]
    expected = (complete, None if torn_at == cut else (TruncatedFrame, torn_at))
    assert drain(iter_frames(whole[:cut], layout=layout)) == expected
    assert stream_outcome(whole[:cut], layout, 7, 3) == expected


@FUZZ
@given(segment=segments(), data=st.data())
def test_a_flipped_bit_in_a_length_crc_or_payload_is_caught_at_its_frame(
    segment: tuple[bytes, list[Spec], Layout], data: st.DataObject
) -> None:
    """CRC32C catches every single-bit error in what it covers (the payload); a length
    or CRC field that changes makes the frame fail too. (FMT, TENANT and TS are outside
    the CRC by design of the format, so flips there are not asserted on.)"""
    whole, frames, layout = segment
    index = data.draw(st.integers(0, len(frames) - 1), label="frame")
    spec, start = frames[index], frame_offsets(frames)[index]
    covered = [*range(8), *range(spec.header_bytes, len(spec.encode()))]
    position = start + data.draw(st.sampled_from(covered), label="byte")
    damaged = bytearray(whole)
    damaged[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    frames_read, error = drain(iter_frames(bytes(damaged), layout=layout))
    assert (
        frames_read == list(zip(frame_offsets(frames), map(as_frame, frames), strict=True))[:index]
    )
    assert error is not None
    assert error[1] == start
    assert error[0] in (CorruptFrame, TruncatedFrame)


@pytest.mark.parametrize("layout", [Layout.CURRENT, Layout.LEGACY])
def test_an_empty_buffer_has_no_frames_in_either_layout(layout: Layout) -> None:
    assert list(iter_frames(b"", layout=layout)) == []
    assert detect_layout(b"") is Layout.CURRENT
    scan = scan_stream(io.BytesIO(b""), layout=layout)
    assert (scan.frames, scan.valid_bytes, scan.error) == (0, 0, None)
