import io

import pytest
import zstandard

from wal.errors import CorruptFrame, TruncatedFrame
from wal.frame import Layout, encode_frame, encode_legacy_frame, encode_records
from wal.reader import StreamReader, detect_layout, iter_frames, scan_stream


def _segment(n: int = 5) -> bytes:
    return encode_records([f'{{"i":{i}}}'.encode() for i in range(n)], tenant=1, ts_ms=10)


def test_a_current_segment_is_detected_as_current() -> None:
    assert detect_layout(_segment()) is Layout.CURRENT


def test_a_legacy_segment_is_detected_as_legacy_and_read_without_tenant() -> None:
    data = b"".join(encode_legacy_frame(f"r{i}".encode(), ts_ms=i) for i in range(4))
    assert detect_layout(data) is Layout.LEGACY
    frames = [f for _, f in iter_frames(data)]
    assert [f.payload for f in frames] == [b"r0", b"r1", b"r2", b"r3"]
    assert {f.tenant for f in frames} == {None}


def test_an_empty_legacy_payload_is_not_mistaken_for_a_current_frame() -> None:
    data = encode_legacy_frame(b"", ts_ms=1) + encode_legacy_frame(b"x", ts_ms=2)
    assert detect_layout(data) is Layout.LEGACY


def test_a_flipped_payload_bit_is_reported_at_its_frame_offset() -> None:
    data = bytearray(_segment(3))
    second = len(encode_frame(b'{"i":0}', tenant=1, ts_ms=10))
    data[second + 22] ^= 0x01
    with pytest.raises(CorruptFrame) as info:
        list(iter_frames(bytes(data), layout=Layout.CURRENT))
    assert info.value.offset == second
    assert "CRC32C" in info.value.reason


def test_a_cut_tail_is_a_truncated_frame() -> None:
    data = _segment(2)[:-3]
    with pytest.raises(TruncatedFrame):
        list(iter_frames(data, layout=Layout.CURRENT))


def test_the_stream_reader_reads_frames_larger_than_its_chunk() -> None:
    big = encode_records([b"x" * 3_000_000, b"y"], tenant=2, ts_ms=1)
    frames = [f.payload for _, f in StreamReader(io.BytesIO(big))]
    assert frames == [b"x" * 3_000_000, b"y"]


def test_the_stream_reader_reads_a_zstd_stream() -> None:
    data = _segment(1000)
    compressed = zstandard.ZstdCompressor().compress(data)
    stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed))
    payloads = [f.payload for _, f in StreamReader(stream)]  # type: ignore[arg-type]
    assert payloads == [f'{{"i":{i}}}'.encode() for i in range(1000)]


def test_scan_stops_at_the_first_bad_frame_and_counts_the_valid_prefix() -> None:
    good = _segment(4)
    scan = scan_stream(io.BytesIO(good + b"\x00" * 20 + b"\x07" + b"\x00" * 19))
    assert (scan.frames, scan.valid_bytes) == (4, len(good))
    assert scan.error is not None
    assert scan.error.offset == len(good)


def test_a_zero_tail_is_the_end_of_a_segment_not_a_bad_frame() -> None:
    good = _segment(4)
    scan = scan_stream(io.BytesIO(good + b"\x00" * 40))
    assert (scan.frames, scan.valid_bytes, scan.error) == (4, len(good), None)
    assert len(list(iter_frames(good + b"\x00" * 40))) == 4
    with pytest.raises(CorruptFrame):
        list(iter_frames(good + b"\x00" * 40 + b"\x01"))
